"""The ledger's invariants as queries (docs/ledger.md): what the soak checks at its end and what an
operator reads at GET /reports/audit. Each returns the mismatches, so "all good" is empty or zero.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from .ledger import account_kind
from .tables import LedgerEntryRow, PhoneRow, PostingRow, TapRow, TripRow

WALLET = "wallet:"


async def wallet_positions(session: AsyncSession) -> dict[str, tuple[int, int]]:
    """The back office's view of each wallet: (balance = the sum of its wallet account's postings,
    counter = the chain head's). Every phone with a wallet account or a chain head is in it."""
    sums = dict(
        (await session.execute(
            select(PostingRow.account, func.sum(PostingRow.amount))
            .where(PostingRow.account.like(f"{WALLET}%"))
            .group_by(PostingRow.account)
        )).all()
    )
    positions = {account[len(WALLET):]: (int(total), 0) for account, total in sums.items()}
    for card, counter in (await session.execute(select(PhoneRow.card_id, PhoneRow.counter))):
        if card in positions or counter:
            positions[card] = (positions.get(card, (0, 0))[0], int(counter))
    return positions


async def unbalanced_entries(session: AsyncSession) -> list[int]:
    """Entries whose postings do not sum to zero (ledger.post refuses them: this is the proof)."""
    rows = await session.execute(
        select(PostingRow.entry_id)
        .group_by(PostingRow.entry_id)
        .having(func.sum(PostingRow.amount) != 0)
        .order_by(PostingRow.entry_id)
    )
    return [int(entry) for entry in rows.scalars()]


async def account_totals(session: AsyncSession) -> dict[str, int]:
    """Fen per kind of account: revenue, suspense, undelivered, wallet, payments, adjustments, issuance
    (every kind the ledger has used; the totals sum to zero)."""
    rows = await session.execute(
        select(PostingRow.account, func.sum(PostingRow.amount)).group_by(PostingRow.account)
    )
    totals: dict[str, int] = {}
    for account, total in rows:
        kind = account_kind(account)
        totals[kind] = totals.get(kind, 0) + int(total)
    for kind in ("revenue", "suspense", "undelivered"):
        totals.setdefault(kind, 0)
    return totals


async def invalid_trips(session: AsyncSession) -> list[int]:
    """Trips in no valid state: two open trips for one card, an exit before its entry in counter order,
    a `complete` trip without an exit tap, an `open` one with an exit."""
    bad: set[int] = set()
    doubled = select(TripRow.card_id).where(TripRow.state == "open").group_by(TripRow.card_id) \
        .having(func.count() > 1)
    bad.update((await session.execute(
        select(TripRow.id).where(TripRow.state == "open", TripRow.card_id.in_(doubled))
    )).scalars())
    bad.update((await session.execute(
        select(TripRow.id).where(
            ((TripRow.state == "complete") & TripRow.exit_tap_id.is_(None))
            | ((TripRow.state == "open") & TripRow.exit_tap_id.is_not(None))
        )
    )).scalars())
    entry, exit_ = aliased(TapRow), aliased(TapRow)
    bad.update((await session.execute(
        select(TripRow.id)
        .join(entry, entry.tap_id == TripRow.entry_tap_id)
        .join(exit_, exit_.tap_id == TripRow.exit_tap_id)
        .where(exit_.counter_before < entry.counter_before)
    )).scalars())
    return sorted(bad)


async def head_mismatches(session: AsyncSession) -> list[str]:
    """Phones whose chain head (what the dashboard shows) differs from their wallet account. A phone
    reported lost is left out: its balance moved on (transfer_out) while its handset still shows it."""
    positions = await wallet_positions(session)
    rows = await session.execute(
        select(PhoneRow.card_id, PhoneRow.balance).where(PhoneRow.replaced_by.is_(None),
                                                          PhoneRow.last_tap_id.is_not(None))
    )
    return sorted(card for card, balance in rows if positions.get(card, (0, 0))[0] != balance)


async def entries_without_postings(session: AsyncSession) -> list[int]:
    """Entries with no leg at all (only an opening of 0 may have zero legs, and it has two)."""
    rows = await session.execute(
        select(LedgerEntryRow.id).where(~select(PostingRow.id).where(
            PostingRow.entry_id == LedgerEntryRow.id).exists())
    )
    return [int(entry) for entry in rows.scalars()]
