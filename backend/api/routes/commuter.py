"""Commuter self-service: one's own phone only (balance, trips, top-up, report lost).

Both money-moving calls are built so that a commuter's token can move only the commuter's own money:
a top-up is a payment intent that the payment provider must confirm (routes/payments.py) before anything
is credited, and a lost phone's balance goes only to a phone nobody has ever used, exactly once.
"""

from __future__ import annotations

import contextlib
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from fastapi import APIRouter, HTTPException
from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ... import ledger
from ...distribution import Conflict, Distributor, held
from ...tables import (
    ActionRow,
    DenyListEntryRow,
    LedgerEntryRow,
    PaymentIntentRow,
    PhoneRow,
    TapRow,
    TripRow,
)
from ..deps import DistributorDep, PageDep, PhoneDep, SessionDep, SettingsDep, audit
from ..schemas import (
    LedgerEntryPublic,
    PaymentIntentPublic,
    PhonePublic,
    ReportLostRequest,
    TopUpRequest,
    TripPublic,
)
from .phones import NewestFirst, wallet_ledger

router = APIRouter(prefix="/me", tags=["commuter"])

LOST_REASON = "reported lost by its owner"


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


@router.get("/ledger", response_model=list[LedgerEntryPublic])
async def my_ledger(
    phone: PhoneDep, session: SessionDep, page: PageDep, newest_first: NewestFirst = False
) -> list[LedgerEntryPublic]:
    """One's own ledger entries in wallet-counter order: every fare, top-up, refund and transfer."""
    return await wallet_ledger(session, phone.card_id, page.limit, page.offset, newest_first)


@router.post(
    "/topup", response_model=PaymentIntentPublic, status_code=201, responses={409: {}, 422: {}, 429: {}}
)
async def top_up(
    body: TopUpRequest, phone: PhoneDep, session: SessionDep, settings: SettingsDep
) -> PaymentIntentRow:
    """Open a payment intent for one's own phone. Nothing is credited here: the money is added (as an
    over-the-air top-up applied at the next tap) only when the payment provider's signed confirmation
    for this intent's reference arrives. Bounded per call and per phone per rolling 24 hours."""
    if phone.status != "active":
        raise HTTPException(409, f"phone is {phone.status}")
    if body.amount > settings.topup_max_fen:
        raise HTTPException(422, f"at most {settings.topup_max_fen} fen per top-up")
    now = datetime.now(UTC)
    recent = await session.scalar(
        select(func.coalesce(func.sum(PaymentIntentRow.amount), 0)).where(
            PaymentIntentRow.card_id == phone.card_id,
            PaymentIntentRow.created_at >= now - timedelta(days=1),
        )
    )
    if int(recent or 0) + body.amount > settings.topup_max_fen_per_day:
        raise HTTPException(429, f"at most {settings.topup_max_fen_per_day} fen of top-ups in 24 hours")
    row = PaymentIntentRow(
        reference=f"pi_{secrets.token_hex(16)}",
        card_id=phone.card_id,
        amount=body.amount,
        state="pending",
        created_at=now,
    )
    session.add(row)
    actor = f"commuter:{phone.card_id}"
    await audit(session, actor, "payment.intent", phone.card_id, f"{row.reference}: {body.amount} fen")
    await session.commit()
    return row


async def unused(session: AsyncSession, card_id: str) -> bool:
    """True when the backend has never seen this card id as a phone: no phone row (so no wallet state,
    status or owner token), no phone replaced by it, and no tap, trip, ledger link, action, deny-list
    entry or payment intent naming it."""
    probes: list[Any] = [
        select(PhoneRow.card_id).where(PhoneRow.card_id == card_id),
        select(PhoneRow.card_id).where(PhoneRow.replaced_by == card_id),
        select(TapRow.tap_id).where(TapRow.card_id == card_id),
        select(TripRow.id).where(TripRow.card_id == card_id),
        select(LedgerEntryRow.id).where(LedgerEntryRow.card_id == card_id),
        select(ActionRow.id).where(ActionRow.card_id == card_id),
        select(DenyListEntryRow.id).where(DenyListEntryRow.card_id == card_id),
        select(PaymentIntentRow.id).where(PaymentIntentRow.card_id == card_id),
    ]
    for probe in probes:
        if (await session.execute(probe.limit(1))).first() is not None:
            return False
    return True


async def _deny_list_lost(distributor: Distributor, card_id: str) -> None:
    """Put the lost phone on the deny-list (a no-op when it is listed already)."""
    try:
        with contextlib.suppress(Conflict):
            await distributor.change_denylist([card_id], [], LOST_REASON, status="lost")
    except TimeoutError as error:
        raise HTTPException(503, f"saved, but the deny-list was not published: {error}") from error


@router.post("/report-lost", response_model=PhonePublic, responses={409: {}, 503: {}})
async def report_lost(
    body: ReportLostRequest, phone: PhoneDep, session: SessionDep, distributor: DistributorDep
) -> PhoneRow:
    """Block the lost phone (deny-list delta to every gate) and move its balance to a new, unused phone.

    The move is one conditional update of the old phone (still active, still held by this token,
    balance unchanged), so of any number of retried or concurrent reports exactly one moves the money;
    a retry after success (the token now follows the new phone) answers the new phone and changes
    nothing, except finishing a deny-listing that failed the first time."""
    new_card = body.new_card_id
    if new_card == phone.card_id:
        old = (await session.execute(select(PhoneRow).where(PhoneRow.replaced_by == new_card))).scalar()
        if old is None:
            raise HTTPException(409, "the new phone must be another phone")
        if old.status == "lost":  # an operator's unblock since (status active) is not undone
            await _deny_list_lost(distributor, old.card_id)
        return phone
    if phone.status != "active" or phone.replaced_by is not None:
        raise HTTPException(409, f"phone is {phone.status}")
    # money on its way to this phone whose write a gate may have made (an unsettled tap applied it) can
    # neither move nor stay: refused until the processor settles that write
    unsettled = (await session.execute(select(ActionRow.id).where(
        ActionRow.card_id == phone.card_id, ActionRow.state == "pending", held()).limit(1))).scalar()
    if unsettled is not None:
        raise HTTPException(409, f"a gate may have just written action {unsettled} to this phone; try again "
                                 "in a minute, once that write is settled")
    # a phone the balance of a lost one is still on its way to is itself reported lost only once that
    # has arrived: otherwise a late one of several concurrent reports (the token already follows the new
    # phone) would chain it, and report a phone its owner still holds
    arriving = (await session.execute(select(ActionRow.id).where(
        ActionRow.card_id == phone.card_id, ActionRow.state == "pending", ActionRow.kind == "transfer")
        .limit(1))).scalar()
    if arriving is not None:
        raise HTTPException(409, "the balance of the phone this one replaced is still on its way to it "
                                 f"(action {arriving}); report it lost once it has arrived, or ask the "
                                 "operator")
    if not await unused(session, new_card):
        raise HTTPException(409, "the new phone must be a phone never used before")
    old_card, balance, owner = phone.card_id, phone.balance, phone.commuter_token_hash
    now = datetime.now(UTC)
    moved = cast(
        CursorResult[Any],
        await session.execute(
            update(PhoneRow)
            .where(
                PhoneRow.card_id == old_card,
                PhoneRow.commuter_token_hash == owner,
                PhoneRow.replaced_by.is_(None),
                PhoneRow.status == "active",
                PhoneRow.balance == balance,
            )
            .values(
                commuter_token_hash=None,
                replaced_by=new_card,
                balance=0,
                status="lost",
                status_reason=LOST_REASON,
            )
            .execution_options(synchronize_session=False)
        ),
    )
    if moved.rowcount != 1:
        await session.rollback()
        raise HTTPException(409, "the phone changed meanwhile (reported already?); reload and retry")
    new = PhoneRow(
        card_id=new_card,
        status="active",
        status_reason="",
        balance=0,
        counter=0,
        commuter_token_hash=owner,
    )
    session.add(new)
    # money still on its way to the lost phone (a paid top-up, the balance of the phone it replaced)
    # follows the owner to the new one, or it would stay addressed to a blocked phone
    await session.flush()
    followed = cast(CursorResult[Any], await session.execute(
        update(ActionRow)
        .where(ActionRow.card_id == old_card, ActionRow.state == "pending", ~held())
        .values(card_id=new_card)
        .execution_options(synchronize_session=False)
    )).rowcount
    action: ActionRow | None = None
    if balance > 0:  # the new wallet gets it by an action; the ledger holds it as undelivered meanwhile
        action = ActionRow(
            card_id=new_card,
            kind="transfer",
            topup=balance,
            unblock=False,
            state="pending",
            created_at=now,
            created_by=f"commuter:{old_card}",
            reason=f"balance moved from lost phone {old_card}",
        )
        session.add(action)
    try:
        await session.flush()
        if action is not None:
            await ledger.transfer_out(session, old_card, balance, action.id, now, phone.counter,
                                      f"to {new_card}, reported lost")
        await audit(
            session,
            f"commuter:{old_card}",
            "phone.report_lost",
            old_card,
            f"from {old_card} to {new_card}: {balance} fen moved"
            + (f" by action {action.id}" if action is not None else "")
            + (f"; {followed} pending action(s) moved with it" if followed else ""),
        )
        await session.commit()
    except IntegrityError as error:  # the new card id was taken meanwhile
        await session.rollback()
        raise HTTPException(409, "the new phone must be a phone never used before") from error
    await _deny_list_lost(distributor, old_card)
    if action is not None or followed:
        try:
            await distributor.publish_actions()
        except TimeoutError as error:
            raise HTTPException(503, f"saved, but the action list was not published: {error}") from error
    await session.refresh(new)
    return new
