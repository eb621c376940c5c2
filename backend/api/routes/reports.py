"""Reports: ridership by station and hour, revenue by day / network / category, denials, gate latency."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from sqlalchemy import func, select

import fare_core

from ...tables import FareTableRow, TapRow
from ..deps import SessionDep, SettingsDep, ViewerDep
from ..schemas import CountRow, LatencyRow

router = APIRouter(prefix="/reports", tags=["reports"])
Since = Annotated[datetime | None, Query()]
Until = Annotated[datetime | None, Query()]
REPORT_MAX_TAPS = 2_000_000


def _window(query, since: datetime | None, until: datetime | None):  # type: ignore[no-untyped-def]
    if since is not None:
        query = query.where(TapRow.time >= since)
    if until is not None:
        query = query.where(TapRow.time < until)
    return query


@router.get("/ridership", response_model=list[CountRow])
async def ridership(
    _: ViewerDep, session: SessionDep, settings: SettingsDep, since: Since = None, until: Until = None
) -> list[CountRow]:
    """Allowed entries per station and local hour."""
    query = _window(
        select(TapRow.station_id, TapRow.time).where(TapRow.allowed, TapRow.direction == 0), since, until
    ).limit(REPORT_MAX_TAPS)
    offset = timedelta(minutes=settings.service_utc_offset_min)
    counts: dict[tuple[int, str], int] = defaultdict(int)
    for station, time in (await session.execute(query)).all():
        counts[(station, (time + offset).strftime("%Y-%m-%d %H:00"))] += 1
    return [CountRow(keys={"station_id": s, "hour": h}, taps=n) for (s, h), n in sorted(counts.items())]


@router.get("/revenue", response_model=list[CountRow])
async def revenue(
    _: ViewerDep,
    session: SessionDep,
    settings: SettingsDep,
    by: Literal["day", "network", "category"] = "day",
    since: Since = None,
    until: Until = None,
) -> list[CountRow]:
    """Fen charged, grouped by service day, network (line) or rider category."""
    query = _window(select(TapRow).where(TapRow.fare > 0), since, until).limit(REPORT_MAX_TAPS)
    taps = (await session.execute(query)).scalars().all()
    offset = timedelta(minutes=settings.service_utc_offset_min - settings.service_day_start_min)
    table = None
    if by != "day":
        row = (
            await session.execute(select(FareTableRow).order_by(FareTableRow.version.desc()).limit(1))
        ).scalar()
        table = fare_core.FareTable.from_bytes(bytes(row.artefact)) if row is not None else None
    sam = fare_core.Sam(bytes.fromhex(settings.sam_master_key))
    sums: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for tap in taps:
        if by == "day":
            key = (tap.time + offset).date().isoformat()
        elif by == "network":
            key = "unknown"
            if table is not None:
                index = table.station_index(tap.station_id)
                if index >= 0:
                    key = table.data.network_names[table.data.station_network[index]]
        else:
            key = "unknown"
            try:
                record, _slot = fare_core.read_wallet(bytes(tap.wallet_before), int(tap.card_id, 16), sam)
                names = table.data.category_names if table is not None else ()
                key = names[record.category] if record.category < len(names) else str(record.category)
            except fare_core.FareCoreError:
                pass
        sums[key][0] += 1
        sums[key][1] += tap.fare
    return [CountRow(keys={by: k}, taps=v[0], fen=v[1]) for k, v in sorted(sums.items())]


@router.get("/denials", response_model=list[CountRow])
async def denials(
    _: ViewerDep, session: SessionDep, since: Since = None, until: Until = None
) -> list[CountRow]:
    """Denied taps per reason code."""
    query = _window(select(TapRow.reason, func.count()).where(TapRow.allowed.is_(False)), since, until)
    rows = (await session.execute(query.group_by(TapRow.reason).order_by(TapRow.reason))).all()
    return [
        CountRow(
            keys={
                "reason": int(r),
                "name": fare_core.Reason(r).name if r in fare_core.Reason._value2member_map_ else str(r),
            },
            taps=int(n),
        )
        for r, n in rows
    ]


@router.get("/latency", response_model=list[LatencyRow])
async def latency(
    _: ViewerDep, session: SessionDep, since: Since = None, until: Until = None
) -> list[LatencyRow]:
    """Decision latency per gate as the gates reported it."""
    query = _window(
        select(TapRow.gate_id, func.count(), func.avg(TapRow.latency_us), func.max(TapRow.latency_us)),
        since,
        until,
    )
    rows = (await session.execute(query.group_by(TapRow.gate_id).order_by(TapRow.gate_id))).all()
    return [
        LatencyRow(gate_id=g, taps=int(n), mean_us=int(a or 0), max_us=int(m or 0)) for g, n, a, m in rows
    ]
