"""The TIDES fare_transactions export: passages from the taps, other wallet money from the ledger.

TIDES (Transit ITS Data Exchange Specification) describes each fare transaction as one row of its
`fare_transactions` table schema. Every column of that schema is written, in the schema's order, empty
where we know nothing (GTFS trip and vehicle references). docs/tides.md gives the mapping and why.

One SQL statement streams the taps in time order, each with what the ledger (docs/ledger.md) posted for
it; a tap yields up to two rows: the money an action wrote into the wallet (Add / Adjust / Combine),
then the passage itself (Enter / Exit / Transfer entrance / Transfer exit), as decide() applies them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import BigInteger, Select, case, cast, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from fare_core.reasons import Direction, Flag, yuan

from .chain import Landing
from .ledger import ServiceDay
from .tables import ActionRow, LedgerEntryRow, PostingRow, TapRow

# The fare_transactions schema's fields, in its order (tests/fixtures/tides holds the schema).
FIELDS = (
    "transaction_id",
    "service_date",
    "event_timestamp",
    "location_ping_id",
    "amount",
    "currency_type",
    "fare_action",
    "trip_id_performed",
    "trip_id_scheduled",
    "pattern_id",
    "trip_stop_sequence",
    "scheduled_stop_sequence",
    "vehicle_id",
    "device_id",
    "fare_id",
    "stop_id",
    "num_riders",
    "fare_media_id",
    "rider_category",
    "fare_product",
    "fare_period",
    "fare_capped",
    "token_id",
    "balance",
)
CURRENCY = "CNY"
FARE_MEDIA = "Mobile NFC"  # an RF-SIM phone tapped on the reader
FARE_PRODUCT = "Stored value"  # every ride is paid from the wallet's purse

# Ledger entry kinds that deliver an action's money into a wallet, and their TIDES fare_action.
DELIVERY_ACTIONS = {
    "topup": "Add",  # stored value bought by the commuter (a payment) or granted as a top-up
    "refund": "Adjust",  # a credit to balance an earlier transaction
    "adjustment": "Adjust",
    "transfer": "Combine",  # a lost phone's balance moved onto its replacement
}
LANDED = "landed"  # the entry of an UNCONFIRMED tap found landed; its legs include the delivery
UNDELIVERED = "undelivered"  # the account a delivery takes its money from (docs/ledger.md)
CHUNK_BYTES = 64 * 1024  # the response is written in pieces of about this size
FETCH_ROWS = 500  # rows fetched from the database cursor at a time


class ExportRow(Protocol):
    """One row of export_query: the tap's columns it needs and the ledger's facts about it."""

    tap_id: str
    gate_id: str
    station_id: int
    card_id: str
    time: datetime
    direction: int
    allowed: bool
    flags: int
    fare: int
    balance_before: int
    balance_after: int
    reconciled: str | None  # the processor's verdict; for an UNCONFIRMED tap, whether it landed
    trip_id: int | None  # the trip the processor counted the tap in
    delivered: int | None  # fen the ledger delivered into the wallet at this tap (None: nothing)
    delivery_kind: str | None  # the delivery entry's kind (topup / refund / adjustment / transfer)
    action_kind: str | None  # the kind of the action the tap applied (names a landed delivery)


TAP_COLUMNS = (
    "tap_id",
    "gate_id",
    "station_id",
    "card_id",
    "time",
    "direction",
    "allowed",
    "flags",
    "fare",
    "balance_before",
    "balance_after",
    "reconciled",
    "trip_id",
)


def export_query() -> Select[Any]:
    """Taps that may yield a row, each with the ledger's facts about it, without order or filter.

    Columns (ExportRow): the tap's, with the processor's verdict on it; the fen the ledger delivered
    to the wallet at it; the delivery entry's kind; the kind of the action the tap applied. Plain
    columns, not ORM objects, so nothing piles up in the session. Each correlated subquery reads the
    ledger by its unique (kind, tap_id) index: a few index probes a tap."""
    # The account is picked in the sum, not the WHERE, so the planner goes from the entry (by its
    # index) to its two or three postings, not through every posting on `undelivered`.
    undelivered = case((PostingRow.account == UNDELIVERED, -PostingRow.amount), else_=0)
    delivered = (
        select(cast(func.sum(undelivered), BigInteger))  # PostgreSQL sums bigint as numeric
        .select_from(LedgerEntryRow)
        .join(PostingRow, PostingRow.entry_id == LedgerEntryRow.id)
        .where(LedgerEntryRow.kind.in_([*DELIVERY_ACTIONS, LANDED]), LedgerEntryRow.tap_id == TapRow.tap_id)
        .scalar_subquery()
    )
    delivery_kind = (
        select(LedgerEntryRow.kind)
        .where(LedgerEntryRow.kind.in_(list(DELIVERY_ACTIONS)), LedgerEntryRow.tap_id == TapRow.tap_id)
        .limit(1)
        .scalar_subquery()
    )
    action_kind = select(ActionRow.kind).where(ActionRow.id == TapRow.action_id).scalar_subquery()
    wrote_or_pending = int(Flag.TOPUP_APPLIED | Flag.UNCONFIRMED)
    return select(
        *(getattr(TapRow, name) for name in TAP_COLUMNS),
        delivered.label("delivered"),
        delivery_kind.label("delivery_kind"),
        action_kind.label("action_kind"),
    ).where(or_(TapRow.allowed.is_(True), TapRow.flags.bitwise_and(wrote_or_pending) != 0))


def ordered(query: Select[Any], limit: int) -> Select[Any]:
    """The export's order: by tap time, ties by tap id, so two exports of one day list rows alike;
    fetched FETCH_ROWS at a time from a server-side cursor."""
    return (
        query.order_by(TapRow.time, TapRow.tap_id)
        .limit(limit)
        .execution_options(stream_results=True, yield_per=FETCH_ROWS)
    )


def is_passage(tap: ExportRow) -> bool:
    """Did the commuter pass (or board) on this tap, as far as the back office knows?

    A RECOVERED re-tap rides on the UNCONFIRMED tap it found landed, which is the passage (exported
    once, as itself). An UNCONFIRMED tap counts once the processor has found its write landed and
    counted it in a trip, as /trips does: the gate's rewritten row no longer says whether the write
    was a passage or a refusal that only delivered an action."""
    if tap.flags & Flag.RECOVERED:
        return False
    if tap.flags & Flag.UNCONFIRMED:
        return tap.reconciled == Landing.LANDED.value and tap.trip_id is not None
    return tap.allowed


def passage_action(tap: ExportRow) -> str:
    """Enter or Exit; Transfer entrance/exit only when the transfer rule made the leg free.

    A daily-capped leg is not a transfer even when it also carries Flag.TRANSFER: the cap, not the
    transfer rule, made it cheaper, and the row says so with fare_capped."""
    entry = tap.direction == Direction.ENTRY
    free_transfer = tap.flags & Flag.TRANSFER and not tap.flags & Flag.CAPPED and tap.fare == 0
    if free_transfer:
        return "Transfer entrance" if entry else "Transfer exit"
    return "Enter" if entry else "Exit"


def tides_rows(tap: ExportRow, day: ServiceDay) -> list[list[str]]:
    """The fare_transactions rows one tap yields, in FIELDS order: a delivery, then a passage."""
    rows: list[list[str]] = []
    service_date = day.of(tap.time).isoformat()
    timestamp = tap.time.strftime("%Y-%m-%dT%H:%M:%SZ")
    delivered = tap.delivered
    if delivered:
        kind = tap.delivery_kind or tap.action_kind or "topup"
        rows.append(
            _row(
                transaction_id=f"{tap.tap_id}:{kind}",
                service_date=service_date,
                event_timestamp=timestamp,
                amount=yuan(delivered),
                fare_action=DELIVERY_ACTIONS.get(kind, "Other"),
                num_riders="0",
                fare_capped="false",
                balance=yuan(tap.balance_before + delivered),
                tap=tap,
            )
        )
    if is_passage(tap):
        rows.append(
            _row(
                transaction_id=tap.tap_id,
                service_date=service_date,
                event_timestamp=timestamp,
                amount=yuan(tap.fare),
                fare_action=passage_action(tap),
                num_riders="1",
                fare_capped="true" if tap.flags & Flag.CAPPED else "false",
                balance=yuan(tap.balance_after),
                tap=tap,
            )
        )
    return rows


def _row(*, tap: ExportRow, **values: str) -> list[str]:
    values.update(
        currency_type=CURRENCY,
        device_id=tap.gate_id,
        stop_id=str(tap.station_id),
        fare_media_id=FARE_MEDIA,
        fare_product=FARE_PRODUCT,
        token_id=tap.card_id,
    )
    return [values.get(field, "") for field in FIELDS]


async def fare_transactions_csv(
    session: AsyncSession, query: Select[Any], day: ServiceDay, limit: int
) -> AsyncIterator[str]:
    """The header, then every row of the (filtered) export_query, streamed in chunks of about 64 KiB:
    the database cursor is read as the client takes the response, never held whole in memory."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FIELDS)
    result = await session.stream(ordered(query, limit))
    async for tap in result:
        writer.writerows(tides_rows(tap, day))
        if buffer.tell() > CHUNK_BYTES:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


__all__ = [
    "DELIVERY_ACTIONS",
    "FIELDS",
    "ExportRow",
    "ServiceDay",
    "export_query",
    "fare_transactions_csv",
    "is_passage",
    "passage_action",
    "tides_rows",
]
