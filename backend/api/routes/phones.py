"""Phones: status, balance history, trips; block / unblock (deny-list delta published); commuter tokens."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ...distribution import Conflict
from ...ledger import wallet
from ...tables import LedgerEntryRow, PhoneRow, PostingRow, TripRow
from ..deps import DistributorDep, OperatorDep, PageDep, SessionDep, ViewerDep, audit
from ..schemas import (
    BlockRequest,
    CardIdStr,
    CommuterTokenPublic,
    DenyListVersionPublic,
    LedgerEntryPublic,
    PhonePublic,
    PostingPublic,
    TripPublic,
)
from ..security import new_token

router = APIRouter(prefix="/phones", tags=["phones"])


async def _phone(session: SessionDep, card_id: str) -> PhoneRow:
    row = await session.get(PhoneRow, card_id)
    if row is None:
        raise HTTPException(404, "no such phone")
    return row


@router.get("", response_model=list[PhonePublic])
async def list_phones(
    _: ViewerDep, session: SessionDep, page: PageDep, status: str | None = None
) -> list[PhoneRow]:
    query = select(PhoneRow).order_by(PhoneRow.card_id)
    if status is not None:
        query = query.where(PhoneRow.status == status)
    return list((await session.execute(query.limit(page.limit).offset(page.offset))).scalars())


@router.get("/{card_id}", response_model=PhonePublic, responses={404: {}})
async def get_phone(card_id: CardIdStr, _: ViewerDep, session: SessionDep) -> PhoneRow:
    return await _phone(session, card_id)


NewestFirst = Annotated[bool, Query(description="latest counter first (the dashboard's view)")]


async def wallet_ledger(
    session: AsyncSession, card_id: str, limit: int, offset: int, newest_first: bool = False
) -> list[LedgerEntryPublic]:
    """The phone's entries in counter order (those without a counter, a payment or grant not yet
    delivered, after them by time), each with all its legs, what it did to this wallet and the wallet
    account's balance after it (a running sum in that order, so the whole history is read)."""
    entries = list((await session.execute(
        select(LedgerEntryRow).where(LedgerEntryRow.card_id == card_id).order_by(
            LedgerEntryRow.counter_after.is_(None), LedgerEntryRow.counter_after,
            LedgerEntryRow.counter_before, LedgerEntryRow.time, LedgerEntryRow.id)
    )).scalars())
    legs: dict[int, list[PostingRow]] = {entry.id: [] for entry in entries}
    for start in range(0, len(entries), 1000):
        chunk = [entry.id for entry in entries[start:start + 1000]]
        for posting in (await session.execute(
            select(PostingRow).where(PostingRow.entry_id.in_(chunk)).order_by(PostingRow.id)
        )).scalars():
            legs[posting.entry_id].append(posting)
    account, running, shown = wallet(card_id), 0, []
    for entry in entries:
        amount = sum(leg.amount for leg in legs[entry.id] if leg.account == account)
        running += amount
        shown.append(LedgerEntryPublic(
            id=entry.id, kind=entry.kind, card_id=entry.card_id, tap_id=entry.tap_id,
            action_id=entry.action_id, time=entry.time, counter_before=entry.counter_before,
            counter_after=entry.counter_after, detail=entry.detail, amount=amount, balance_after=running,
            legs=[PostingPublic.model_validate(leg) for leg in legs[entry.id]],
        ))
    if newest_first:
        shown.reverse()
    return shown[offset:offset + limit]


@router.get("/{card_id}/ledger", response_model=list[LedgerEntryPublic], responses={404: {}})
async def phone_ledger(
    card_id: CardIdStr, _: ViewerDep, session: SessionDep, page: PageDep, newest_first: NewestFirst = False
) -> list[LedgerEntryPublic]:
    """The phone's ledger entries in wallet-counter order, with their kind and legs."""
    await _phone(session, card_id)
    return await wallet_ledger(session, card_id, page.limit, page.offset, newest_first)


@router.get("/{card_id}/trips", response_model=list[TripPublic], responses={404: {}})
async def phone_trips(card_id: CardIdStr, _: ViewerDep, session: SessionDep, page: PageDep) -> list[TripRow]:
    await _phone(session, card_id)
    rows = await session.execute(
        select(TripRow)
        .where(TripRow.card_id == card_id)
        .order_by(TripRow.id.desc())
        .limit(page.limit)
        .offset(page.offset)
    )
    return list(rows.scalars())


@router.post("/{card_id}/block", response_model=DenyListVersionPublic, responses={409: {}, 503: {}})
async def block_phone(
    card_id: CardIdStr,
    body: BlockRequest,
    operator: OperatorDep,
    session: SessionDep,
    distributor: DistributorDep,
) -> DenyListVersionPublic:
    """Add the phone to the deny-list: a new version, its delta published to every gate."""
    return await _change(
        card_id, body.reason, operator.username, "phone.block", session, distributor, add=[card_id]
    )


@router.post("/{card_id}/unblock", response_model=DenyListVersionPublic, responses={409: {}, 503: {}})
async def unblock_phone(
    card_id: CardIdStr,
    body: BlockRequest,
    operator: OperatorDep,
    session: SessionDep,
    distributor: DistributorDep,
) -> DenyListVersionPublic:
    """Remove the phone from the deny-list (its wallet, if marked blocked, needs an unblock action too)."""
    return await _change(
        card_id, body.reason, operator.username, "phone.unblock", session, distributor, remove=[card_id]
    )


async def _change(
    card_id: str,
    reason: str,
    actor: str,
    action: str,
    session: SessionDep,
    distributor: DistributorDep,
    add: list[str] | None = None,
    remove: list[str] | None = None,
) -> DenyListVersionPublic:
    try:
        row = await distributor.change_denylist(add or [], remove or [], reason, status="blocked")
    except Conflict as error:
        raise HTTPException(409, str(error)) from error
    except TimeoutError as error:
        raise HTTPException(503, f"saved, but not published: {error}") from error
    await audit(session, actor, action, card_id, f"deny-list version {row.version}: {reason}")
    await session.commit()
    return DenyListVersionPublic.model_validate(row)


@router.post("/{card_id}/commuter-token", response_model=CommuterTokenPublic, status_code=201)
async def issue_commuter_token(
    card_id: CardIdStr, operator: OperatorDep, session: SessionDep
) -> CommuterTokenPublic:
    """A self-service token for this phone (replaces any earlier one); shown once.

    A phone the backend has not seen yet is created here; the processor may create it at the same
    moment from the phone's first tap, so a lost race is retried once on the row the processor made."""
    token, hashed = new_token()
    for attempt in range(2):
        row = await session.get(PhoneRow, card_id)
        if row is None:
            row = PhoneRow(card_id=card_id, status="active", status_reason="", balance=0, counter=0)
            session.add(row)
        row.commuter_token_hash = hashed
        await audit(session, operator.username, "phone.commuter_token", card_id)
        try:
            await session.commit()
            break
        except IntegrityError:
            await session.rollback()
            if attempt:
                raise
    return CommuterTokenPublic(card_id=card_id, token=token)
