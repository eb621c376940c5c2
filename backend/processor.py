"""After ingest: each stored tap joins its phone's ledger chain and a trip, and is reconciled.

Runs behind the ingest (which only stores raw taps, as fast as it can) over taps whose `reconciled`
column is still NULL, oldest first. Findings become alarms:
- wrong_fare / decision_mismatch: fare_core, re-run on the reported wallet, decides otherwise;
- counter_reused: two taps wrote the wallet from the same counter (a cloned or replayed wallet);
- balance_jump: the wallet's balance is not what the previous tap left at that counter;
- counter_gap: taps of this phone are missing between two known ones (late gate or lost tap).
With auto_denylist on, a clone or replay also deny-lists the phone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import fare_core
from fare_core.reasons import Direction, Flag

from .config import Settings
from .reconcile import compare, expected_decision
from .tables import (
    ActionRow,
    AlarmRow,
    DenyListEntryRow,
    FareTableRow,
    LedgerRow,
    PhoneRow,
    TapRow,
    TripRow,
)

log = logging.getLogger("faregate.processor")
BATCH = 500
CLONE_FINDINGS = {"counter_reused", "balance_jump"}
PENDING = "unconfirmed"  # TapRow.reconciled of a tap whose wallet write is not yet known to have landed

OnBlock = Callable[[list[str], str], Awaitable[None]]


class Processor:
    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        on_block: OnBlock | None = None,
        on_action_applied: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.sam = fare_core.Sam(bytes.fromhex(settings.sam_master_key))
        self.tables: dict[int, fare_core.FareTable] = {}
        self.on_block = on_block
        self.on_action_applied = on_action_applied

    async def run_once(self) -> int:
        """Process one batch of pending taps; returns how many were processed."""
        to_block: list[str] = []
        actions_applied = False
        async with self.sessions.begin() as session:
            taps = (
                (
                    await session.execute(
                        select(TapRow)
                        .where(TapRow.reconciled.is_(None))
                        .order_by(TapRow.time, TapRow.tap_id)
                        .limit(BATCH)
                        # several processors on PostgreSQL take disjoint batches (SQLite ignores it)
                        .with_for_update(skip_locked=True)
                    )
                )
                .scalars()
                .all()
            )
            for tap in taps:
                findings, applied = await self._process(session, tap)
                actions_applied |= applied
                if self.settings.auto_denylist and CLONE_FINDINGS & set(findings):
                    to_block.append(tap.card_id)
        if to_block and self.on_block is not None:
            await self.on_block(sorted(set(to_block)), "automatic: cloned or replayed wallet")
        if actions_applied and self.on_action_applied is not None:
            await self.on_action_applied()
        return len(taps)

    async def _process(self, session: AsyncSession, tap: TapRow) -> tuple[list[str], bool]:
        phone = await session.get(PhoneRow, tap.card_id)
        if phone is None:
            phone = PhoneRow(
                card_id=tap.card_id,
                status="active",
                status_reason="",
                balance=tap.balance_before,
                counter=tap.counter_before,
            )
            session.add(phone)
            first = True
        else:
            first = phone.last_tap_id is None
        findings: list[str] = []
        details: list[str] = []
        if tap.flags & Flag.UNCONFIRMED:
            # The gate could not learn whether its write landed: neither post it nor check it now;
            # the phone's next tap settles it from its counter (_settle_unconfirmed).
            tap.reconciled = PENDING
            return [], False
        await self._settle_unconfirmed(session, phone, tap)
        wrote = tap.counter_after > tap.counter_before
        if wrote:
            twin = (
                await session.execute(
                    select(TapRow.tap_id)
                    .where(
                        TapRow.card_id == tap.card_id,
                        TapRow.counter_before == tap.counter_before,
                        TapRow.counter_after > TapRow.counter_before,
                        TapRow.flags.bitwise_and(int(Flag.UNCONFIRMED)) == 0,
                        TapRow.tap_id != tap.tap_id,
                    )
                    .limit(1)
                )
            ).scalar()
            if twin is not None:
                findings.append("counter_reused")
                details.append(f"counter {tap.counter_before} also written by tap {twin}")
        if not first and "counter_reused" not in findings:
            if tap.counter_before == phone.counter and tap.balance_before != phone.balance:
                findings.append("balance_jump")
                details.append(
                    f"balance {tap.balance_before} at counter {tap.counter_before}, "
                    f"the previous tap left {phone.balance}"
                )
            elif tap.counter_before > phone.counter:
                findings.append("counter_gap")
                details.append(f"counter {phone.counter} -> {tap.counter_before}: taps missing")
        if wrote or tap.balance_after != tap.balance_before:
            self._post(session, phone, tap)
        elif tap.counter_after >= phone.counter:
            self._advance(phone, tap)
        action = await self._apply_action(session, tap)
        await self._trip(session, phone, tap)
        if self.settings.reconcile:
            findings += await self._reconcile(session, tap, action, details)
        tap.reconciled = ",".join(findings) if findings else "ok"
        for finding in findings:
            if finding == "counter_gap":
                continue  # informational: a late gate fills it
            session.add(
                AlarmRow(
                    created_at=datetime.now(UTC),
                    kind=finding,
                    severity="critical" if finding in CLONE_FINDINGS else "warning",
                    gate_id=tap.gate_id,
                    card_id=tap.card_id,
                    tap_id=tap.tap_id,
                    detail="; ".join(details),
                )
            )
        return findings, action is not None

    def _post(self, session: AsyncSession, phone: PhoneRow, tap: TapRow) -> None:
        """The tap's change to the wallet, as a link of the phone's ledger chain."""
        session.add(
            LedgerRow(
                card_id=tap.card_id,
                kind="tap",
                tap_id=tap.tap_id,
                time=tap.time,
                amount=tap.balance_after - tap.balance_before,
                balance_before=tap.balance_before,
                balance_after=tap.balance_after,
                counter_before=tap.counter_before,
                counter_after=tap.counter_after,
            )
        )
        if tap.counter_after >= phone.counter:
            self._advance(phone, tap)

    @staticmethod
    def _advance(phone: PhoneRow, tap: TapRow) -> None:
        phone.counter = tap.counter_after
        phone.balance = tap.balance_after
        phone.last_tap_id = tap.tap_id
        phone.last_tap_time = tap.time

    async def _settle_unconfirmed(self, session: AsyncSession, phone: PhoneRow, tap: TapRow) -> None:
        """The wallet this tap read tells whether an earlier unconfirmed write landed: its counter
        is the unconfirmed tap's counter_after if it did, its counter_before if it did not."""
        pending = (
            await session.execute(
                select(TapRow).where(TapRow.card_id == tap.card_id, TapRow.reconciled == PENDING)
            )
        ).scalars().all()
        for earlier in pending:
            if tap.counter_before >= earlier.counter_after:
                earlier.reconciled = "unconfirmed_landed"
                self._post(session, phone, earlier)
            elif tap.counter_before <= earlier.counter_before:
                earlier.reconciled = "unconfirmed_not_landed"

    async def _apply_action(self, session: AsyncSession, tap: TapRow) -> ActionRow | None:
        if tap.action_id is None:
            return None
        action = await session.get(ActionRow, tap.action_id)
        if action is None or action.card_id != tap.card_id:
            return None
        if action.state == "pending":
            action.state = "applied"
            action.applied_at = tap.time
            action.applied_tap_id = tap.tap_id
        return action

    async def _trip(self, session: AsyncSession, phone: PhoneRow, tap: TapRow) -> None:
        if not tap.allowed:
            return
        if await self._flat_fare(session, tap):  # a bus boarding: one tap is the whole ride
            await self._close_open_trip(session, phone)
            trip = TripRow(card_id=tap.card_id, entry_tap_id=tap.tap_id, entry_station=tap.station_id,
                           entry_time=tap.time, exit_tap_id=tap.tap_id, exit_station=tap.station_id,
                           exit_time=tap.time, fare=tap.fare, state="complete")
            session.add(trip)
            await session.flush()
        elif tap.direction == Direction.ENTRY:
            await self._close_open_trip(session, phone)
            trip = TripRow(
                card_id=tap.card_id,
                entry_tap_id=tap.tap_id,
                entry_station=tap.station_id,
                entry_time=tap.time,
                fare=tap.fare,
                state="open",
            )
            session.add(trip)
            await session.flush()
            phone.open_trip_id = trip.id
        else:
            open_trip = (
                await session.get(TripRow, phone.open_trip_id) if phone.open_trip_id is not None else None
            )
            if open_trip is None or open_trip.state != "open":
                trip = TripRow(card_id=tap.card_id, fare=0, state="no_entry")
                session.add(trip)
            else:
                trip = open_trip
            trip.exit_tap_id = tap.tap_id
            trip.exit_station = tap.station_id
            trip.exit_time = tap.time
            trip.fare += tap.fare
            if trip.state == "open":
                trip.state = "complete"
            await session.flush()
            phone.open_trip_id = None
        tap.trip_id = trip.id

    async def _close_open_trip(self, session: AsyncSession, phone: PhoneRow) -> None:
        """A new ride starts while one is open: the open one never exited (decide() charged it)."""
        if phone.open_trip_id is not None:
            await session.execute(
                update(TripRow)
                .where(TripRow.id == phone.open_trip_id, TripRow.state == "open")
                .values(state="missing_exit")
            )
            phone.open_trip_id = None

    async def _flat_fare(self, session: AsyncSession, tap: TapRow) -> bool:
        """Is the tap's station on a flat-fare network (a bus: tap on only), per the gate's table?"""
        table = await self._table(session, tap.fare_table_version)
        if table is None:
            return False
        index = table.station_index(tap.station_id)
        return index >= 0 and bool(table.data.network_flat[table.data.station_network[index]])

    async def _table(self, session: AsyncSession, version: int) -> fare_core.FareTable | None:
        if version not in self.tables:
            row = await session.get(FareTableRow, version)
            if row is None:
                return None
            self.tables[version] = fare_core.FareTable.from_bytes(bytes(row.artefact))
        return self.tables[version]

    async def _reconcile(
        self, session: AsyncSession, tap: TapRow, action: ActionRow | None, details: list[str]
    ) -> list[str]:
        table = await self._table(session, tap.fare_table_version)
        if table is None:
            details.append(f"fare table version {tap.fare_table_version} unknown to the backend")
            return ["unknown_fare_table"]
        denied = (
            await session.execute(
                select(DenyListEntryRow.id)
                .where(
                    DenyListEntryRow.card_id == tap.card_id,
                    DenyListEntryRow.added_version <= tap.denylist_version,
                    (DenyListEntryRow.removed_version.is_(None))
                    | (DenyListEntryRow.removed_version > tap.denylist_version),
                )
                .limit(1)
            )
        ).scalar() is not None
        topup = action.topup if action is not None else 0
        unblock = action.unblock if action is not None else False
        try:
            decision = expected_decision(tap, table, denied, self.sam, topup=topup, unblock=unblock)
        except (fare_core.FareCoreError, ValueError) as error:
            details.append(f"fare_core refused the reported tap: {error}")
            return ["decision_mismatch"]
        mismatches = compare(tap, decision)
        if not mismatches:
            return []
        details.extend(str(m) for m in mismatches)
        return ["wrong_fare" if any(m.field == "fare" for m in mismatches) else "decision_mismatch"]


async def run_processor(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    stop: asyncio.Event,
    wake: asyncio.Event,
    processor: Processor | None = None,
) -> None:
    """Process pending taps whenever the ingest stores some (and once a second anyway)."""
    processor = processor or Processor(settings, sessions)
    while not stop.is_set():
        try:
            while await processor.run_once() and not stop.is_set():
                pass
        except Exception:
            log.exception("processing taps failed; retrying")
        wake.clear()
        waiter = asyncio.create_task(wake.wait())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, stopper}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        stopper.cancel()
