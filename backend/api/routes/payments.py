"""The payment provider's webhook: a signed confirmation credits a commuter's payment intent, once.

No bearer token: the provider authenticates by an HMAC-SHA256 signature over the raw body
(backend/payments.py). The credit is an over-the-air top-up action, the same mechanism an operator's
top-up uses, so the money reaches the wallet at the phone's next tap.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Any, cast

from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import CursorResult, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ... import ledger
from ...payments import SIGNATURE_HEADER, TIMESTAMP_HEADER, BadSignature, verify
from ...tables import ActionRow, PaymentIntentRow, PhoneRow
from ..deps import DistributorDep, SessionDep, SettingsDep, audit
from ..schemas import PaymentConfirmation, PaymentConfirmationResult

log = logging.getLogger(__name__)
router = APIRouter(prefix="/payments", tags=["payments"])

ACTOR = "payment-provider"


async def _current_card(session: AsyncSession, card_id: str) -> str:
    """The phone that holds the money now: a phone reported lost after paying passes it on."""
    for _ in range(32):
        replaced_by = await session.scalar(select(PhoneRow.replaced_by).where(PhoneRow.card_id == card_id))
        if replaced_by is None:
            return card_id
        card_id = replaced_by
    return card_id


def _result(intent: PaymentIntentRow, credited: bool) -> PaymentConfirmationResult:
    return PaymentConfirmationResult(
        reference=intent.reference, state=intent.state, credited=credited, action_id=intent.action_id
    )


async def _already(session: AsyncSession, reference: str, key: str) -> PaymentConfirmationResult:
    """Answer a confirmation that lost the race or repeats one: 200 without credit if it is the same."""
    intent = (
        await session.execute(
            select(PaymentIntentRow)
            .where(PaymentIntentRow.reference == reference)
            .execution_options(populate_existing=True)
        )
    ).scalar_one()
    if intent.state == "confirmed" and intent.idempotency_key == key:
        return _result(intent, credited=False)
    raise HTTPException(409, "this payment was confirmed by another confirmation, or the key was used before")


@router.post(
    "/confirmations",
    response_model=PaymentConfirmationResult,
    responses={401: {}, 404: {}, 409: {}, 413: {}, 422: {}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": PaymentConfirmation.model_json_schema()}},
        }
    },
)
async def confirm_payment(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    distributor: DistributorDep,
    x_payment_timestamp: Annotated[str | None, Header(alias=TIMESTAMP_HEADER)] = None,
    x_payment_signature: Annotated[str | None, Header(alias=SIGNATURE_HEADER)] = None,
) -> PaymentConfirmationResult:
    """Credit a payment intent on the provider's signed confirmation. The signature is checked over the
    raw bytes before anything is parsed; the intent moves pending -> confirmed in one conditional update
    together with the confirmation's idempotency key, so the same confirmation sent again (or twice at
    once) credits once and then answers 200 with `credited: false`."""
    raw = await request.body()
    try:
        verify(
            settings.payment_webhook_secret,
            x_payment_timestamp,
            x_payment_signature,
            raw,
            tolerance_s=settings.payment_webhook_tolerance_s,
        )
    except BadSignature as error:
        raise HTTPException(401, f"payment confirmation refused: {error}") from error
    try:
        confirmation = PaymentConfirmation.model_validate_json(raw)
    except ValidationError as error:
        raise RequestValidationError(error.errors(include_url=False, include_context=False)) from error
    intent = (
        await session.execute(
            select(PaymentIntentRow).where(PaymentIntentRow.reference == confirmation.reference)
        )
    ).scalar()
    if intent is None:
        raise HTTPException(404, "no such payment intent")
    if confirmation.amount != intent.amount:
        raise HTTPException(409, f"amount {confirmation.amount} differs from the intent's {intent.amount}")
    if intent.state != "pending":
        return await _already(session, confirmation.reference, confirmation.idempotency_key)
    now = datetime.now(UTC)
    try:
        claimed = cast(
            CursorResult[Any],
            await session.execute(
                update(PaymentIntentRow)
                .where(PaymentIntentRow.id == intent.id, PaymentIntentRow.state == "pending")
                .values(state="confirmed", confirmed_at=now, idempotency_key=confirmation.idempotency_key)
                .execution_options(synchronize_session=False)
            ),
        )
    except IntegrityError:  # the idempotency key confirmed another payment already
        claimed = None
    if claimed is None or claimed.rowcount != 1:
        await session.rollback()
        return await _already(session, confirmation.reference, confirmation.idempotency_key)
    card = await _current_card(session, intent.card_id)
    action = ActionRow(
        card_id=card,
        kind="topup",
        topup=intent.amount,
        unblock=False,
        state="pending",
        created_at=now,
        created_by=ACTOR,
        reason=f"payment {intent.reference}",
    )
    session.add(action)
    try:
        await session.flush()
        await session.execute(
            update(PaymentIntentRow)
            .where(PaymentIntentRow.id == intent.id)
            .values(action_id=action.id)
            .execution_options(synchronize_session=False)
        )
        # the money is the operator's to deliver from now: payments:<provider> -> undelivered
        await ledger.payment(session, card, intent.amount, settings.payment_provider, action.id, now,
                             f"payment {intent.reference}")
        await audit(
            session,
            ACTOR,
            "payment.confirmed",
            card,
            f"{intent.reference}: {intent.amount} fen as action {action.id}; {confirmation.idempotency_key}",
        )
        await session.commit()
    except IntegrityError:  # the same key raced in for another payment
        await session.rollback()
        return await _already(session, confirmation.reference, confirmation.idempotency_key)
    try:
        await distributor.publish_actions()
    except TimeoutError as error:  # credited in the database; the next action-list publication carries it
        log.warning("payment %s is action %d, not yet published: %s", intent.reference, action.id, error)
    return PaymentConfirmationResult(
        reference=intent.reference, state="confirmed", credited=True, action_id=action.id
    )
