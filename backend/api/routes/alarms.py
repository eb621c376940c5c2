"""Alarms (reconciliation findings, gaps) and the audit log."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from sqlalchemy import select

from ...tables import AlarmRow, AuditRow
from ..deps import AdminDep, OperatorDep, PageDep, SessionDep, ViewerDep, audit
from ..schemas import AlarmPublic, AuditPublic, IdPath

router = APIRouter(tags=["alarms"])


@router.get("/alarms", response_model=list[AlarmPublic])
async def list_alarms(
    _: ViewerDep, session: SessionDep, page: PageDep, kind: str | None = None, open_only: bool = False
) -> list[AlarmRow]:
    query = select(AlarmRow).order_by(AlarmRow.id.desc())
    if kind is not None:
        query = query.where(AlarmRow.kind == kind)
    if open_only:
        query = query.where(AlarmRow.acknowledged_by.is_(None))
    return list((await session.execute(query.limit(page.limit).offset(page.offset))).scalars())


@router.post("/alarms/{alarm_id}/acknowledge", response_model=AlarmPublic, responses={404: {}})
async def acknowledge(alarm_id: IdPath, operator: OperatorDep, session: SessionDep) -> AlarmRow:
    row = await session.get(AlarmRow, alarm_id)
    if row is None:
        raise HTTPException(404, "no such alarm")
    row.acknowledged_by = operator.username
    await audit(session, operator.username, "alarm.acknowledge", str(alarm_id))
    await session.commit()
    return row


@router.get("/audit", response_model=list[AuditPublic])
async def audit_log(_: AdminDep, session: SessionDep, page: PageDep) -> list[AuditRow]:
    rows = await session.execute(
        select(AuditRow).order_by(AuditRow.id.desc()).limit(page.limit).offset(page.offset)
    )
    return list(rows.scalars())
