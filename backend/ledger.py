"""Double-entry postings: one function per entry kind of docs/ledger.md, each checking that its legs
sum to zero before anything is written.

An entry is unique per (kind, tap_id) and (kind, action_id), so every function here first looks for the
entry it would post and posts nothing when it is there: the processor can run a tap again (a rebuild,
a retried batch) and the money moves once. Signs follow docs/ledger.md: a wallet's balance is what the
commuter holds, revenue / suspense / undelivered what the operator earned or owes, and the accounts
money comes from (payments, adjustments, issuance) go negative as it leaves them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from .tables import LedgerEntryRow, PostingRow, TapRow

ISSUANCE = "issuance"
SUSPENSE = "suspense"
UNDELIVERED = "undelivered"
ADJUSTMENTS = "adjustments"

#: Kinds of action and the entry each one's delivery to a wallet posts (ActionRow.kind).
ACTION_KINDS = ("topup", "refund", "adjustment", "transfer")
#: Actions an operator grants by hand, and the entry their creation posts (money from `adjustments`).
GRANTED = {"refund": "refund_granted", "adjustment": "adjustment_granted"}
#: Entries that put an action's money into `undelivered` when the action is created.
SOURCE_KINDS = ("payment", "refund_granted", "adjustment_granted", "transfer_out")
#: The part of a delivery that pays back an overdraft's debt (a wallet below zero): its own entry.
OVERDRAFT_RECOVERY = "overdraft_recovery"
#: Kinds whose entries carry a wallet write, in the order a phone's ledger lists them at one counter.
WALLET_KINDS = ("opening", "unconfirmed", "voided", "landed", OVERDRAFT_RECOVERY, *ACTION_KINDS,
                "missing_exit", "fare", "transfer_out")

Legs = Sequence[tuple[str, int]]


class Unbalanced(ValueError):
    """An entry whose legs do not sum to zero: a bug, never written."""


def wallet(card_id: str) -> str:
    return f"wallet:{card_id}"


@dataclass(frozen=True)
class ServiceDay:
    """The network's service day: local time (UTC + offset) shifted back by the day's start. The one
    definition: revenue accounts, the board's "today" and the TIDES export all date by it."""

    utc_offset_min: int
    day_start_min: int

    def of(self, moment: datetime) -> date:
        return (moment + timedelta(minutes=self.utc_offset_min - self.day_start_min)).date()


def revenue(network: str, service_day: str) -> str:
    return f"revenue:{network}:{service_day}"


def payments(provider: str) -> str:
    return f"payments:{provider}"


def account_kind(account: str) -> str:
    """`revenue:metro:2026-11-24` -> `revenue`: what account_totals groups by."""
    return account.split(":", 1)[0]


def handset(tap: TapRow) -> str:
    """The evidence of which handset a tap came from: its gate, seq and the wallet counters it moved
    (two forks of a cloned wallet write from the same counter at different gates)."""
    return f"gate {tap.gate_id} seq {tap.seq}, wallet counter {tap.counter_before}->{tap.counter_after}"


async def _exists(session: AsyncSession, kind: str, tap_id: str | None, action_id: int | None) -> bool:
    query = select(LedgerEntryRow.id).where(LedgerEntryRow.kind == kind)
    if tap_id is not None:
        query = query.where(LedgerEntryRow.tap_id == tap_id)
    else:
        query = query.where(LedgerEntryRow.action_id == action_id)
    return await session.scalar(query.limit(1)) is not None


async def post(
    session: AsyncSession,
    kind: str,
    legs: Legs,
    *,
    time: datetime,
    card_id: str | None = None,
    tap_id: str | None = None,
    action_id: int | None = None,
    counter_before: int | None = None,
    counter_after: int | None = None,
    detail: str = "",
    keep_zero: bool = False,
    looked: bool = False,
) -> LedgerEntryRow | None:
    """Write one entry and its legs, unless it is posted already or moves nothing (zero legs are left
    out; an entry of only zero legs is not written unless `keep_zero`). Raises Unbalanced. `looked`:
    the caller has looked for the entry itself (the processor, for a whole card's taps in one query);
    the unique constraints stay the last word."""
    if sum(amount for _, amount in legs) != 0:
        raise Unbalanced(f"{kind} entry for {tap_id or action_id}: legs {list(legs)} do not sum to zero")
    moving = [(account, amount) for account, amount in legs if amount != 0]
    if not moving and not keep_zero:
        return None
    if not looked and (tap_id is not None or action_id is not None) \
            and await _exists(session, kind, tap_id, action_id):
        return None
    entry = LedgerEntryRow(
        kind=kind, card_id=card_id, tap_id=tap_id, action_id=action_id, time=time,
        counter_before=counter_before, counter_after=counter_after, detail=detail[:200],
        recorded_at=datetime.now(UTC),
    )
    session.add(entry)
    await session.flush()
    for account, amount in moving or legs:
        session.add(PostingRow(entry_id=entry.id, account=account, amount=amount))
    return entry


async def remove(session: AsyncSession, entry: LedgerEntryRow) -> None:
    """Take an entry back out (only the `opening` that moves to an earlier link, and a `landed`
    resolution that a later-arriving link proves wrong, are ever removed)."""
    await session.execute(delete(PostingRow).where(PostingRow.entry_id == entry.id))
    await session.delete(entry)
    await session.flush()


async def on_tap(session: AsyncSession, tap: TapRow, kind: str, legs: Legs, detail: str = "",
                 action_id: int | None = None, *, looked: bool = False) -> LedgerEntryRow | None:
    """An entry for a wallet write: the tap's card, time and counters, and its handset in the detail."""
    return await post(
        session, kind, legs, time=tap.time, card_id=tap.card_id, tap_id=tap.tap_id, action_id=action_id,
        counter_before=tap.counter_before, counter_after=tap.counter_after,
        detail=f"{handset(tap)}{'; ' + detail if detail else ''}", looked=looked,
    )


async def opening(session: AsyncSession, tap: TapRow) -> LedgerEntryRow | None:
    """The balance the wallet held at the first link the back office knows: issuance -B, wallet +B."""
    balance = tap.balance_before
    return await post(
        session, "opening", [(ISSUANCE, -balance), (wallet(tap.card_id), balance)], time=tap.time,
        card_id=tap.card_id, tap_id=tap.tap_id, counter_before=tap.counter_before,
        counter_after=tap.counter_before, detail=f"opening balance at {handset(tap)}", keep_zero=True,
    )


async def fare(session: AsyncSession, tap: TapRow, amount: int, revenue_account: str,
               *, kind: str = "fare", detail: str = "", looked: bool = False) -> LedgerEntryRow | None:
    """A landed charge: wallet -F, revenue +F (kind `missing_exit` for an earlier trip's charge)."""
    legs = [(wallet(tap.card_id), -amount), (revenue_account, amount)]
    return await on_tap(session, tap, kind, legs, detail, looked=looked)


async def delivery(session: AsyncSession, tap: TapRow, kind: str, amount: int,
                   action_id: int | None, detail: str = "", *, looked: bool = False) -> LedgerEntryRow | None:
    """An action's money written into the wallet: undelivered -T, wallet +T (kind: the action's)."""
    legs = [(UNDELIVERED, -amount), (wallet(tap.card_id), amount)]
    if action_id is not None and await _exists(session, kind, None, action_id):
        if not looked and await _exists(session, kind, tap.tap_id, None):
            return None
        # a second wallet took the same action (a cloned wallet's other fork): the money moved twice
        detail = f"action {action_id} delivered again; {detail}".rstrip("; ")
        action_id = None
    return await on_tap(session, tap, kind, legs, detail, action_id, looked=looked)


async def payment(session: AsyncSession, card_id: str, amount: int, provider: str, action_id: int,
                  time: datetime, detail: str = "") -> LedgerEntryRow | None:
    """A payment confirmed for a top-up: payments:<provider> -T, undelivered +T."""
    return await post(session, "payment", [(payments(provider), -amount), (UNDELIVERED, amount)],
                      time=time, card_id=card_id, action_id=action_id, detail=detail)


async def granted(session: AsyncSession, action_kind: str, card_id: str, amount: int, action_id: int,
                  time: datetime, detail: str = "") -> LedgerEntryRow | None:
    """An operator's refund or adjustment: adjustments -T, undelivered +T."""
    return await post(session, GRANTED[action_kind], [(ADJUSTMENTS, -amount), (UNDELIVERED, amount)],
                      time=time, card_id=card_id, action_id=action_id, detail=detail)


async def transfer_out(session: AsyncSession, card_id: str, amount: int, action_id: int, time: datetime,
                       counter: int, detail: str = "") -> LedgerEntryRow | None:
    """A lost phone's balance, on its way to the new phone: wallet:<old> -B, undelivered +B."""
    return await post(session, "transfer_out", [(wallet(card_id), -amount), (UNDELIVERED, amount)],
                      time=time, card_id=card_id, action_id=action_id, counter_before=counter,
                      counter_after=counter, detail=detail)


def change(tap: TapRow) -> int:
    """D: what the tap's write did (or would have done) to the wallet's balance."""
    return tap.balance_after - tap.balance_before


def charged(tap: TapRow) -> int:
    """F: the fare the write took, from the wallet itself (balance before + top-up - balance after)."""
    return tap.balance_before + tap.topup_applied - tap.balance_after


async def unconfirmed(session: AsyncSession, tap: TapRow) -> LedgerEntryRow | None:
    """A write whose landing is unknown follows the wallet provisionally: wallet +D, suspense -D."""
    d = change(tap)
    return await on_tap(session, tap, "unconfirmed", [(wallet(tap.card_id), d), (SUSPENSE, -d)])


async def landed(session: AsyncSession, tap: TapRow, revenue_account: str,
                 evidence: str) -> LedgerEntryRow | None:
    """The unconfirmed write landed: suspense +D, revenue +F, undelivered -T (D = T - F)."""
    d, f, t = change(tap), charged(tap), tap.topup_applied
    legs = [(SUSPENSE, d), (revenue_account, f), (UNDELIVERED, -t)]
    return await on_tap(session, tap, "landed", legs, evidence)


async def voided(session: AsyncSession, tap: TapRow, evidence: str) -> LedgerEntryRow | None:
    """The unconfirmed write did not land: suspense +D, wallet -D (the wallet back where it was)."""
    d = change(tap)
    return await on_tap(session, tap, "voided", [(SUSPENSE, d), (wallet(tap.card_id), -d)], evidence)


async def cancelled(session: AsyncSession, action_id: int, time: datetime) -> LedgerEntryRow | None:
    """An action cancelled before any wallet took it: the entry that put its money in `undelivered`
    (payment, grant or transfer_out) is reversed, so the money is back where it came from."""
    source = await session.scalar(
        select(LedgerEntryRow).where(LedgerEntryRow.action_id == action_id,
                                     LedgerEntryRow.kind.in_(SOURCE_KINDS))
    )
    if source is None:
        return None
    legs = (await session.execute(select(PostingRow.account, PostingRow.amount)
                                  .where(PostingRow.entry_id == source.id))).all()
    return await post(session, "cancelled", [(account, -amount) for account, amount in legs], time=time,
                      card_id=source.card_id, action_id=action_id, detail=f"reverses {source.kind}")
