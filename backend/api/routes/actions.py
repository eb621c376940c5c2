"""The action list: over-the-air top-ups, refunds, adjustments and unblocks, pending until a gate
applies them. Creating one with money posts where that money comes from (docs/ledger.md): a top-up
taken at a service counter from payments:counter, a refund or adjustment from adjustments; either way
into `undelivered`, until a gate writes it into the wallet."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, HTTPException
from sqlalchemy import select

from ... import distribution, ledger
from ...tables import ActionRow
from ..deps import DistributorDep, OperatorDep, PageDep, SessionDep, ViewerDep, audit
from ..schemas import ActionCreate, ActionPublic, CardIdStr, IdPath

router = APIRouter(prefix="/actions", tags=["actions"])
COUNTER = "counter"  # the payment "provider" of a top-up an operator takes at a service counter


@router.get("", response_model=list[ActionPublic])
async def list_actions(
    _: ViewerDep,
    session: SessionDep,
    page: PageDep,
    state: str | None = None,
    card_id: CardIdStr | None = None,
) -> list[ActionRow]:
    query = select(ActionRow).order_by(ActionRow.id.desc())
    if state is not None:
        query = query.where(ActionRow.state == state)
    if card_id is not None:
        query = query.where(ActionRow.card_id == card_id)
    return list((await session.execute(query.limit(page.limit).offset(page.offset))).scalars())


async def create_action(
    session: SessionDep,
    distributor: DistributorDep,
    card_id: str,
    topup: int,
    unblock: bool,
    reason: str,
    actor: str,
    kind: str = "topup",
) -> ActionRow:
    row = ActionRow(
        card_id=card_id,
        kind=kind,
        topup=topup,
        unblock=unblock,
        state="pending",
        created_at=datetime.now(UTC),
        created_by=actor,
        reason=reason,
    )
    session.add(row)
    await session.flush()
    if topup and kind in ledger.GRANTED:
        await ledger.granted(session, kind, card_id, topup, row.id, row.created_at, f"{actor}: {reason}")
    elif topup:
        await ledger.payment(session, card_id, topup, COUNTER, row.id, row.created_at, f"{actor}: {reason}")
    await audit(session, actor, "action.create", card_id,
                f"action {row.id}: {kind} topup={topup} unblock={unblock}")
    await session.commit()
    try:
        await distributor.publish_actions()
    except TimeoutError as error:
        raise HTTPException(503, f"saved as action {row.id}, but not published: {error}") from error
    return row


@router.post("", response_model=ActionPublic, status_code=201, responses={422: {}, 503: {}})
async def create(
    body: ActionCreate, operator: OperatorDep, session: SessionDep, distributor: DistributorDep
) -> ActionRow:
    if not body.topup and not body.unblock:
        raise HTTPException(422, "an action tops up, unblocks, or both")
    if body.kind != "topup" and not body.topup:
        raise HTTPException(422, f"a {body.kind} moves money: give its amount as topup")
    return await create_action(
        session, distributor, body.card_id, body.topup, body.unblock, body.reason, operator.username,
        body.kind,
    )


@router.post("/{action_id}/cancel", response_model=ActionPublic, responses={404: {}, 409: {}})
async def cancel(
    action_id: IdPath, operator: OperatorDep, session: SessionDep, distributor: DistributorDep
) -> ActionRow:
    row = await session.get(ActionRow, action_id)
    if row is None:
        raise HTTPException(404, "no such action")
    if row.state != "pending":
        raise HTTPException(409, f"action is {row.state}, not pending")
    if await distribution.is_held(session, action_id):  # the wallet may hold its money already
        raise HTTPException(409, "a gate wrote this action in a write not yet known to have landed; "
                                 "cancel it once the phone has tapped again and the write is settled")
    row.state = "cancelled"
    await ledger.cancelled(session, row.id, datetime.now(UTC))
    await audit(session, operator.username, "action.cancel", row.card_id, str(action_id))
    await session.commit()
    try:
        await distributor.publish_actions()
    except TimeoutError as error:
        raise HTTPException(503, f"cancelled, but the list was not published: {error}") from error
    return row
