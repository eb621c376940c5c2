"""Commuter self-service: one's own phone only (balance, trips, top-up, report lost)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, HTTPException
from sqlalchemy import select

from ...distribution import Conflict
from ...tables import LedgerRow, PhoneRow, TripRow
from ..deps import DistributorDep, PageDep, PhoneDep, SessionDep, audit
from ..schemas import ActionPublic, PhonePublic, ReportLostRequest, TopUpRequest, TripPublic
from .actions import create_action

router = APIRouter(prefix="/me", tags=["commuter"])


@router.get("", response_model=PhonePublic)
async def my_phone(phone: PhoneDep) -> PhoneRow:
    return phone


@router.get("/trips", response_model=list[TripPublic])
async def my_trips(phone: PhoneDep, session: SessionDep, page: PageDep) -> list[TripRow]:
    rows = await session.execute(
        select(TripRow)
        .where(TripRow.card_id == phone.card_id)
        .order_by(TripRow.id.desc())
        .limit(page.limit)
        .offset(page.offset)
    )
    return list(rows.scalars())


@router.post("/topup", response_model=ActionPublic, status_code=201, responses={409: {}, 503: {}})
async def top_up(body: TopUpRequest, phone: PhoneDep, session: SessionDep, distributor: DistributorDep):  # type: ignore[no-untyped-def]
    """Add money at the phone's next tap (payment itself is out of scope here)."""
    if phone.status != "active":
        raise HTTPException(409, f"phone is {phone.status}")
    return await create_action(
        session,
        distributor,
        phone.card_id,
        body.amount,
        False,
        "self-service top-up",
        f"commuter:{phone.card_id}",
    )


@router.post("/report-lost", response_model=PhonePublic, responses={409: {}, 503: {}})
async def report_lost(
    body: ReportLostRequest, phone: PhoneDep, session: SessionDep, distributor: DistributorDep
) -> PhoneRow:
    """Block the lost phone (deny-list delta to every gate) and move its balance to the new phone."""
    if body.new_card_id == phone.card_id:
        raise HTTPException(409, "the new phone must be another phone")
    new = await session.get(PhoneRow, body.new_card_id)
    if new is not None and new.status != "active":
        raise HTTPException(409, f"the new phone is {new.status}")
    old_card, balance, token_hash_value = phone.card_id, phone.balance, phone.commuter_token_hash
    try:
        await distributor.change_denylist([old_card], [], "reported lost by its owner", status="lost")
    except Conflict as error:
        raise HTTPException(409, str(error)) from error
    await session.refresh(phone)
    phone.commuter_token_hash = None
    phone.replaced_by = body.new_card_id
    balance_moved = phone.balance if phone.balance is not None else balance
    phone.balance = 0
    if new is None:
        new = PhoneRow(card_id=body.new_card_id, status="active", status_reason="", balance=0, counter=0)
        session.add(new)
    await session.flush()
    new.commuter_token_hash = token_hash_value
    now = datetime.now(UTC)
    if balance_moved > 0:  # the ledger shows where the money went; the new wallet gets it by an action
        session.add(
            LedgerRow(
                card_id=old_card,
                kind="transfer_out",
                tap_id=None,
                time=now,
                amount=-balance_moved,
                balance_before=balance_moved,
                balance_after=0,
            )
        )
        session.add(
            LedgerRow(
                card_id=body.new_card_id,
                kind="transfer_in",
                tap_id=None,
                time=now,
                amount=balance_moved,
                balance_before=0,
                balance_after=balance_moved,
            )
        )
    await audit(
        session,
        f"commuter:{old_card}",
        "phone.report_lost",
        old_card,
        f"balance {balance_moved} fen moved to {body.new_card_id}",
    )
    await session.commit()
    if balance_moved > 0:
        await create_action(
            session,
            distributor,
            body.new_card_id,
            balance_moved,
            False,
            f"balance moved from lost phone {old_card}",
            f"commuter:{old_card}",
        )
    await session.refresh(new)
    return new
