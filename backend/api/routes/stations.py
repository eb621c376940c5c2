"""GET /dashboard/api/stations: station ids in words, for the board and the commuter page.

Names come from the fare rules (`name = "Gongyuanqian 公园前"`), compiled into each fare table's labels.
The newest table names a station; older ones fill in the stations it no longer has, so a trip through a
closed station still reads by name. Open to anyone, like the station map: the commuter page has no
operator token, and the names say nothing a network map does not.
"""

from __future__ import annotations

import json
from collections import OrderedDict

from fastapi import APIRouter, Response
from pydantic import BaseModel
from sqlalchemy import select

from fare_core import FareCoreError, artefact

from ...tables import FareTableRow
from ..deps import SessionDep

router = APIRouter(tags=["dashboard"])

#: How many of the newest fare tables are read for names (each parsed once: the cache below).
TABLES_READ = 8
#: Parsed names by artefact checksum: a version's bytes never change, so neither do its names.
_NAMES: OrderedDict[str, dict[int, str]] = OrderedDict()
_CACHE_SIZE = 64


class Stations(BaseModel):
    fare_table_version: int | None  # the newest table the names come from; None: no table yet
    names: dict[int, str]  # station id -> name as the rules give it (e.g. "Gongyuanqian 公园前")


def names_in(blob: bytes) -> dict[int, str]:
    """The station names a compiled fare table carries (labels.extra.station_names); {} when none."""
    try:
        table = artefact.unpack(blob)
        raw = json.loads(table.extra.get("station_names", "{}"))
        return {int(k): str(v) for k, v in raw.items()}
    except (FareCoreError, ValueError, AttributeError):
        return {}


async def station_names(session: SessionDep) -> Stations:
    rows = (
        await session.execute(
            select(FareTableRow.version, FareTableRow.checksum)
            .order_by(FareTableRow.version.desc())
            .limit(TABLES_READ)
        )
    ).all()
    names: dict[int, str] = {}
    for version, checksum in rows:
        known = _NAMES.get(checksum)
        if known is None:
            blob = await session.scalar(select(FareTableRow.artefact).where(FareTableRow.version == version))
            known = names_in(blob or b"")
            _NAMES[checksum] = known
            while len(_NAMES) > _CACHE_SIZE:
                _NAMES.popitem(last=False)
        for station, name in known.items():
            names.setdefault(station, name)  # newest first: a renamed station reads as it is now
    return Stations(fare_table_version=rows[0][0] if rows else None, names=dict(sorted(names.items())))


@router.get("/stations", response_model=Stations)
async def stations(session: SessionDep, response: Response) -> Stations:
    response.headers["Cache-Control"] = "no-cache"
    return await station_names(session)
