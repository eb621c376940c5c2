"""Gates: list, status, last seen, versions in use; mode commands."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from sqlalchemy import select

from ...tables import GateRow
from ..deps import DistributorDep, OperatorDep, PageDep, SessionDep, ViewerDep, audit
from ..schemas import GateModeCommand, GatePublic, StationQuery

router = APIRouter(prefix="/gates", tags=["gates"])


@router.get("", response_model=list[GatePublic])
async def list_gates(
    _: ViewerDep,
    session: SessionDep,
    page: PageDep,
    station_id: StationQuery = None,
    state: str | None = None,
) -> list[GateRow]:
    query = select(GateRow).order_by(GateRow.station_id, GateRow.gate_no)
    if station_id is not None:
        query = query.where(GateRow.station_id == station_id)
    if state is not None:
        query = query.where(GateRow.state == state)
    return list((await session.execute(query.limit(page.limit).offset(page.offset))).scalars())


@router.get("/{gate_id}", response_model=GatePublic, responses={404: {}})
async def get_gate(gate_id: str, _: ViewerDep, session: SessionDep) -> GateRow:
    row = await session.get(GateRow, gate_id)
    if row is None:
        raise HTTPException(404, "no such gate")
    return row


@router.post("/{gate_id}/mode", response_model=GatePublic, responses={404: {}, 503: {}})
async def command_mode(
    gate_id: str,
    body: GateModeCommand,
    operator: OperatorDep,
    session: SessionDep,
    distributor: DistributorDep,
) -> GateRow:
    row = await session.get(GateRow, gate_id)
    if row is None:
        raise HTTPException(404, "no such gate")
    row.command_id += 1
    row.commanded_mode = body.mode
    await audit(session, operator.username, "gate.mode", gate_id, f"mode={body.mode} {body.reason}")
    await session.commit()
    try:
        await distributor.command_gate(row, body.mode, body.reason)
    except TimeoutError as error:
        raise HTTPException(503, f"saved, but not published: {error}") from error
    return row
