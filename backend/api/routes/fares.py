"""Fare tables: upload rules -> compile with fare_core -> validate -> publish; versions; roll back."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, HTTPException, Response
from sqlalchemy import func, select, update

import fare_core
from fare_core import artefact
from fare_core.compiler import compile_rules
from fare_core.rules import RulesError, parse_rules

from ...tables import FareTableRow
from ..deps import DistributorDep, OperatorDep, PageDep, SessionDep, ViewerDep, audit
from ..schemas import FareTableCreate, FareTablePublic, FareTableRollback, VersionPath

router = APIRouter(prefix="/fare-tables", tags=["fare tables"])


async def _publish_rules(
    rules_text: str,
    fmt: str,
    activate_at: datetime | None,
    actor: str,
    session: SessionDep,
    distributor: DistributorDep,
    rolled_back_from: int | None = None,
) -> FareTableRow:
    try:
        rules = parse_rules(rules_text, fmt)  # type: ignore[arg-type]
    except RulesError as error:
        raise HTTPException(422, f"fare rules invalid: {error}") from error
    version = int((await session.execute(select(func.max(FareTableRow.version)))).scalar() or 0) + 1
    now = datetime.now(UTC)
    try:
        data = compile_rules(rules, version, created_at=int(now.timestamp()))
        blob = artefact.pack(data)
        table = fare_core.FareTable.from_bytes(blob)  # what a gate will do with it: must load
    except (fare_core.FareCoreError, ValueError) as error:
        raise HTTPException(422, f"fare rules do not compile: {error}") from error
    await session.execute(
        update(FareTableRow).where(FareTableRow.state == "published").values(state="superseded")
    )
    row = FareTableRow(
        version=version,
        name=data.name[:200],
        rules=rules_text,
        artefact=blob,
        checksum=table.checksum,
        created_at=now,
        activate_at=(activate_at or now).astimezone(UTC),
        state="published",
        rolled_back_from=rolled_back_from,
        created_by=actor,
    )
    session.add(row)
    await audit(
        session,
        actor,
        "fare_table.rollback" if rolled_back_from else "fare_table.publish",
        str(version),
        f"checksum {table.checksum}",
    )
    await session.commit()
    try:
        await distributor.publish_fare_table(row)
    except TimeoutError as error:
        raise HTTPException(503, f"saved as version {version}, but not published: {error}") from error
    return row


@router.get("", response_model=list[FareTablePublic])
async def list_tables(_: ViewerDep, session: SessionDep, page: PageDep) -> list[FareTableRow]:
    rows = await session.execute(
        select(FareTableRow).order_by(FareTableRow.version.desc()).limit(page.limit).offset(page.offset)
    )
    return list(rows.scalars())


@router.post("", response_model=FareTablePublic, status_code=201, responses={422: {}, 503: {}})
async def publish(
    body: FareTableCreate, operator: OperatorDep, session: SessionDep, distributor: DistributorDep
) -> FareTableRow:
    return await _publish_rules(
        body.rules, body.format, body.activate_at, operator.username, session, distributor
    )


@router.get("/{version}", response_model=FareTablePublic, responses={404: {}})
async def get_table(version: VersionPath, _: ViewerDep, session: SessionDep) -> FareTableRow:
    row = await session.get(FareTableRow, version)
    if row is None:
        raise HTTPException(404, "no such fare table version")
    return row


@router.get(
    "/{version}/artefact",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}, 404: {}},
)
async def get_artefact(version: VersionPath, _: ViewerDep, session: SessionDep) -> Response:
    row = await session.get(FareTableRow, version)
    if row is None:
        raise HTTPException(404, "no such fare table version")
    return Response(row.artefact, media_type="application/octet-stream")


@router.post(
    "/{version}/rollback", response_model=FareTablePublic, status_code=201, responses={404: {}, 503: {}}
)
async def rollback(
    version: VersionPath,
    body: FareTableRollback,
    operator: OperatorDep,
    session: SessionDep,
    distributor: DistributorDep,
) -> FareTableRow:
    """Publish version `version`'s rules again as a new, higher version (gates never go backwards)."""
    old = await session.get(FareTableRow, version)
    if old is None:
        raise HTTPException(404, "no such fare table version")
    fmt = "json" if old.rules.lstrip().startswith("{") else "toml"
    return await _publish_rules(
        old.rules, fmt, body.activate_at, operator.username, session, distributor, rolled_back_from=version
    )
