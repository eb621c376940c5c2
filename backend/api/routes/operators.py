"""Operator accounts (admin only)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from sqlalchemy import delete, select

from ...tables import OperatorRow, TokenRow
from ..deps import AdminDep, PageDep, SessionDep, audit
from ..schemas import IdPath, OperatorCreate, OperatorPublic, OperatorUpdate
from ..security import hash_password

router = APIRouter(prefix="/operators", tags=["operators"])


@router.get("", response_model=list[OperatorPublic])
async def list_operators(_: AdminDep, session: SessionDep, page: PageDep) -> list[OperatorRow]:
    rows = await session.execute(
        select(OperatorRow).order_by(OperatorRow.id).limit(page.limit).offset(page.offset)
    )
    return list(rows.scalars())


@router.post("", response_model=OperatorPublic, status_code=201, responses={409: {}})
async def create_operator(body: OperatorCreate, admin: AdminDep, session: SessionDep) -> OperatorRow:
    if (await session.execute(select(OperatorRow.id).where(OperatorRow.username == body.username))).scalar():
        raise HTTPException(409, "username taken")
    row = OperatorRow(
        username=body.username, password_hash=hash_password(body.password), role=body.role.value, active=True
    )
    session.add(row)
    await audit(session, admin.username, "operator.create", body.username, body.role.value)
    await session.commit()
    return row


@router.patch("/{operator_id}", response_model=OperatorPublic, responses={404: {}})
async def update_operator(
    operator_id: IdPath, body: OperatorUpdate, admin: AdminDep, session: SessionDep
) -> OperatorRow:
    row = await session.get(OperatorRow, operator_id)
    if row is None:
        raise HTTPException(404, "no such operator")
    if body.role is not None:
        row.role = body.role.value
    if body.active is not None:
        row.active = body.active
    if body.password is not None:
        row.password_hash = hash_password(body.password)
    if body.active is False or body.password is not None:
        await session.execute(delete(TokenRow).where(TokenRow.operator_id == row.id))
    await audit(
        session,
        admin.username,
        "operator.update",
        row.username,
        body.model_dump_json(exclude={"password"}, exclude_none=True),
    )
    await session.commit()
    return row
