"""After ingest: each stored tap is posted to the ledger, joins its card's chain and a trip, and is
reconciled.

Runs behind the ingest (which only stores raw taps, as fast as it can) over taps whose `reconciled`
column is still NULL. A batch is grouped by card and each card's taps are taken in counter order
(backend/chain.py), never by the gates' clocks. A tap below the card's chain head (a late gate, a
backlog) rebuilds the card's trips from its whole chain; money entries are per tap and stay, only the
`opening` entry moves to the earliest link (docs/ledger.md). Findings become alarms:
- wrong_fare / decision_mismatch: fare_core, re-run on the reported wallet, decides otherwise;
- counter_reused: two taps wrote the wallet from the same counter (a cloned or replayed wallet);
- balance_jump: the wallet's balance is not what the link before it left at that counter;
- counter_gap: taps of this phone are missing between two known ones (late gate or lost tap);
- recovered_unproven: a RECOVERED re-tap whose wallet does not hold the write it claims landed.
With auto_denylist on (the default), a clone or replay also deny-lists the phone.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import fare_core
from fare_core.reasons import Flag

from . import ledger
from .chain import Landing, chain_key, is_link, is_recovered, is_unconfirmed, landing, stands, writes
from .config import Settings
from .reconcile import compare, expected_decision
from .tables import (
    ActionRow,
    AlarmRow,
    DenyListEntryRow,
    FareTableRow,
    LedgerEntryRow,
    PhoneRow,
    TapRow,
    TripRow,
)
from .trips import TripWalk

log = logging.getLogger("faregate.processor")
BATCH = 500
CLONE_FINDINGS = {"counter_reused", "balance_jump"}
CRITICAL_FINDINGS = CLONE_FINDINGS | {"recovered_unproven"}
#: Entries posted per tap from its own write (an unconfirmed write's are posted by the settling instead).
TAP_MONEY_KINDS = ("fare", "missing_exit", ledger.OVERDRAFT_RECOVERY, *ledger.ACTION_KINDS)
PENDING = Landing.PENDING.value  # TapRow.reconciled of a tap whose write is not yet known to have landed
OPEN_LANDINGS = (Landing.PENDING.value, Landing.LANDED.value)  # resolutions a later link may still change
VOIDED = Landing.VOIDED.value  # final, unless a proof that the write landed arrives (_voided_provable)

OnBlock = Callable[[list[str], str], Awaitable[None]]


@dataclass
class Outcome:
    """What processing one card's taps asks of the caller once the transaction is committed."""

    block: bool = False
    actions_applied: bool = False  # the action list changes: applied, held by an unconfirmed write, freed


@dataclass
class Findings:
    kinds: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    def add(self, kind: str, detail: str) -> None:
        self.kinds.append(kind)
        self.details.append(detail)


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
        self.service_day = settings.service_day

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
                        # a card's pending taps together, so one batch sees them all (fewer rebuilds)
                        .order_by(TapRow.card_id, TapRow.counter_before, TapRow.seq)
                        .limit(BATCH)
                        # several processors on PostgreSQL take disjoint batches (SQLite ignores it)
                        .with_for_update(skip_locked=True)
                    )
                )
                .scalars()
                .all()
            )
            by_card: dict[str, list[TapRow]] = defaultdict(list)
            for tap in taps:
                by_card[tap.card_id].append(tap)
            for card_id, new in by_card.items():
                outcome = await CardChain(self, session, card_id).process(new)
                actions_applied |= outcome.actions_applied
                if outcome.block and self.settings.auto_denylist:
                    to_block.append(card_id)
        if to_block and self.on_block is not None:
            await self.on_block(sorted(set(to_block)), "automatic: cloned or replayed wallet")
        if actions_applied and self.on_action_applied is not None:
            await self.on_action_applied()
        return len(taps)

    async def table(self, session: AsyncSession, version: int) -> fare_core.FareTable | None:
        if version not in self.tables:
            row = await session.get(FareTableRow, version)
            if row is None:
                return None
            self.tables[version] = fare_core.FareTable.from_bytes(bytes(row.artefact))
        return self.tables[version]

    def network(self, tap: TapRow) -> tuple[str, bool]:
        """The tap's network by name in its own fare table, and whether it is flat-fare (a bus);
        ("unknown", False) when the backend lacks that table (the table must be loaded first)."""
        table = self.tables.get(tap.fare_table_version)
        if table is None:
            return "unknown", False
        index = table.station_index(tap.station_id)
        if index < 0:
            return "unknown", False
        network = table.data.station_network[index]
        return str(table.data.network_names[network]), bool(table.data.network_flat[network])

    def revenue_account(self, tap: TapRow) -> str:
        day = self.service_day.of(tap.time).isoformat()
        return ledger.revenue(self.network(tap)[0], day)

    def passed(self, unconfirmed: TapRow) -> bool:
        """Was an unconfirmed write a passage? The gate's row says READ_FAILED whatever it decided.
        A write that blocked a deny-listed wallet (Flag.BLOCKED_NOW) is a refusal (DENYLISTED), unless
        the fare table let the rider out of the paid area (DENYLISTED_EXIT_CHARGED, or a free exit):
        fare_core, re-run on the wallet the tap read, tells. Without the tap's fare table (loaded by
        the caller), a charge tells: a refusal charges nothing."""
        if not unconfirmed.flags & Flag.BLOCKED_NOW:
            return True
        table = self.tables.get(unconfirmed.fare_table_version)
        if table is None:
            return ledger.charged(unconfirmed) > 0
        try:
            decision = expected_decision(unconfirmed, table, True, self.sam)
        except (fare_core.FareCoreError, ValueError):
            return False
        return bool(decision.allowed) and decision.counter == unconfirmed.counter_after

    def holds_write(self, later: TapRow, unconfirmed: TapRow) -> bool:
        """Does the wallet a later tap read (checked under the SAM key) hold the very record the
        unconfirmed tap wrote? Its counter and balance, and the station and second the write stamped
        (an entry stamps entry_station/entry_time, an exit or a boarding last_station/last_time): a retry
        from the same counter, or a clone's own write, stamps another moment or place. A write that only
        blocked a deny-listed wallet stamps nothing; counter and balance tell it."""
        try:
            record, _slot = fare_core.read_wallet(bytes(later.wallet_before), int(later.card_id, 16),
                                                  self.sam)
        except (fare_core.FareCoreError, ValueError):
            return False
        if record.counter != unconfirmed.counter_after or record.balance != unconfirmed.balance_after:
            return False
        stamp = (unconfirmed.station_id, int(unconfirmed.time.timestamp()))
        stamps = ((record.entry_station, record.entry_time), (record.last_station, record.last_time))
        stamped = stamp in stamps
        return stamped or (bool(unconfirmed.flags & Flag.BLOCKED_NOW) and not self.passed(unconfirmed))

    async def reconcile(self, session: AsyncSession, tap: TapRow, action: ActionRow | None,
                        findings: Findings, listed: Sequence[tuple[int, int | None]]) -> None:
        """`listed`: the card's deny-list memberships (added_version, removed_version)."""
        table = await self.table(session, tap.fare_table_version)
        if table is None:
            findings.add("unknown_fare_table",
                         f"fare table version {tap.fare_table_version} unknown to the backend")
            return
        version = tap.denylist_version
        denied = any(added <= version and (removed is None or removed > version) for added, removed in listed)
        topup = action.topup if action is not None else 0
        unblock = action.unblock if action is not None else False
        try:
            decision = expected_decision(tap, table, denied, self.sam, topup=topup, unblock=unblock,
                                         action_id=action.id if action is not None else 0)
        except (fare_core.FareCoreError, ValueError) as error:
            findings.add("decision_mismatch", f"fare_core refused the reported tap: {error}")
            return
        mismatches = compare(tap, decision)
        if mismatches:
            kind = "wrong_fare" if any(m.field == "fare" for m in mismatches) else "decision_mismatch"
            findings.add(kind, "; ".join(str(m) for m in mismatches))


class CardChain:
    """One card's pending taps, processed against everything the back office knows of the card."""

    def __init__(self, processor: Processor, session: AsyncSession, card_id: str) -> None:
        self.p = processor
        self.session = session
        self.card_id = card_id
        self.outcome = Outcome()
        self.posted: set[str] = set()  # new taps whose money entries an earlier run posted
        self.listed: list[tuple[int, int | None]] | None = None  # the card's deny-list memberships

    async def process(self, new: list[TapRow]) -> Outcome:
        new.sort(key=chain_key)
        session = self.session
        # the phone's row is the card's lock: two processors (PostgreSQL) never walk one chain at once
        phone = await session.scalar(
            select(PhoneRow).where(PhoneRow.card_id == self.card_id).with_for_update()
        )
        if phone is None:  # two processors creating it at once: one fails its batch and retries it
            phone = PhoneRow(card_id=self.card_id, status="active", status_reason="",
                             balance=new[0].balance_before, counter=new[0].counter_before)
            session.add(phone)
        head = await session.get(TapRow, phone.last_tap_id) if phone.last_tap_id is not None else None
        known_counter = phone.counter if head is not None else None
        for version in {tap.fare_table_version for tap in new}:
            await self.p.table(session, version)
        links = [tap for tap in new if is_link(tap)]
        if links:
            await self._opening(links[0])
        changed = await self._settle_unconfirmed(new)
        self.posted = {tap_id for tap_id in (await session.execute(
            select(LedgerEntryRow.tap_id).where(LedgerEntryRow.tap_id.in_([tap.tap_id for tap in new]),
                                                LedgerEntryRow.kind.in_(TAP_MONEY_KINDS))
        )).scalars() if tap_id is not None}
        findings: dict[str, Findings] = {}
        for tap in new:
            findings[tap.tap_id] = await self._tap(tap, known_counter)
            if known_counter is not None and is_link(tap):  # the batch's own links fill no gap
                known_counter = max(known_counter, tap.counter_after)
        if head is None or changed or chain_key(new[0]) < chain_key(head):
            await self._rebuild(phone, new)
        else:
            await self._append(phone, new)
        self._alarms(new, findings)
        return self.outcome

    # --- unconfirmed writes ---------------------------------------------------------------------------

    async def _settle_unconfirmed(self, new: Sequence[TapRow]) -> bool:
        """Settle every unconfirmed write of the card a link now tells about (docs/ledger.md); True when
        a trip changes with it (a write found landed, or a landing found wrong)."""
        session = self.session
        candidates = list(
            (await session.execute(
                select(TapRow).where(TapRow.card_id == self.card_id, TapRow.reconciled.in_(OPEN_LANDINGS))
            )).scalars()
        )
        candidates += [tap for tap in new if is_unconfirmed(tap) and tap not in candidates]
        candidates += await self._voided_provable(new)
        if not candidates:
            return False
        lowest = min(tap.counter_before for tap in candidates)
        evidence = list(
            (await session.execute(
                select(TapRow).where(TapRow.card_id == self.card_id, TapRow.counter_before >= lowest)
            )).scalars()
        )
        changed = False
        proofs = {u.tap_id: next((tap for tap in evidence if self._proves_landed(tap, u)), None)
                  for u in candidates}
        proven = [u for u in candidates if proofs[u.tap_id] is not None]
        landed_now: list[TapRow] = []
        for unconfirmed in sorted(candidates, key=chain_key):
            proof = proofs[unconfirmed.tap_id]
            outcome, why = landing(unconfirmed, evidence, proof, proven)
            before = unconfirmed.reconciled or PENDING
            if unconfirmed.reconciled is None:  # new: its provisional write goes to suspense
                await ledger.unconfirmed(session, unconfirmed)
                if unconfirmed.action_id is not None:  # its action is held off the list meanwhile
                    self.outcome.actions_applied = True
            if outcome.value == before:
                unconfirmed.reconciled = before
                continue
            if outcome == Landing.PENDING:  # a landing is never taken back to "unknown"
                continue
            if before == VOIDED and outcome != Landing.LANDED:
                continue  # a void is final unless a proof comes: reads at its counter do not reopen it
            changed = True
            unconfirmed.reconciled = outcome.value
            if outcome == Landing.LANDED:
                if before == VOIDED:
                    await self._unvoid(unconfirmed)
                await self.p.table(session, unconfirmed.fare_table_version)  # its revenue's network
                await ledger.landed(session, unconfirmed, self.p.revenue_account(unconfirmed), why)
                await self._apply_action(unconfirmed)
                landed_now.append(unconfirmed)
            else:
                await self._unland(unconfirmed)
                await ledger.voided(session, unconfirmed, why)
                if unconfirmed.action_id is not None:  # its action, still pending, is free again
                    self.outcome.actions_applied = True
        for unconfirmed in landed_now:  # once every write of the card is settled: a fork is two that stand
            await self._fork_of_landed(unconfirmed, evidence)
        return changed

    async def _voided_provable(self, new: Sequence[TapRow]) -> list[TapRow]:
        """Writes settled as not landed that a new tap may yet prove landed: a RECOVERED re-tap at
        their gate, or a link reading their counter_after. A void from "another write from that
        counter" is wrong when that write was a clone's (another handset): the proof, a wallet holding
        the very record stamped with station and second, outranks it (chain.landing)."""
        gates = {tap.gate_id for tap in new if is_recovered(tap)}
        counters = {tap.counter_before for tap in new if is_link(tap)}
        if not gates and not counters:
            return []
        voided = (await self.session.execute(
            select(TapRow).where(TapRow.card_id == self.card_id, TapRow.reconciled == VOIDED)
        )).scalars()
        return [tap for tap in voided if tap.gate_id in gates or tap.counter_after in counters]

    async def _unvoid(self, tap: TapRow) -> None:
        """A write settled as not landed proves to have landed after all: its `voided` entry comes out
        (the `landed` one goes in); an action it carried is delivered again by it (_apply_action)."""
        entry = await self.session.scalar(
            select(LedgerEntryRow).where(LedgerEntryRow.kind == "voided", LedgerEntryRow.tap_id == tap.tap_id)
        )
        if entry is not None:
            await ledger.remove(self.session, entry)

    async def _fork_of_landed(self, unconfirmed: TapRow, evidence: Sequence[TapRow]) -> None:
        """A write that landed while another write from the same counter stands (chain.landing lets a
        proof outrank it only when the records differ): two handsets wrote one counter, a clone. The
        alarm `_tap` raises for two confirmed writes, raised here for a fork whose write was
        unconfirmed (its gate lost power mid-write, say)."""
        twin = next((tap for tap in evidence if tap.tap_id != unconfirmed.tap_id
                     and tap.counter_before == unconfirmed.counter_before and stands(tap)), None)
        if twin is None:
            return
        await self._mark_fork(twin.tap_id)
        await self._mark_fork(unconfirmed.tap_id)
        self.outcome.block = True
        self.session.add(AlarmRow(
            created_at=datetime.now(UTC), kind="counter_reused", severity="critical",
            gate_id=unconfirmed.gate_id, card_id=unconfirmed.card_id, tap_id=unconfirmed.tap_id,
            detail=(f"counter {unconfirmed.counter_before} also written by tap {twin.tap_id}; this fork "
                    f"(found landed): {ledger.handset(unconfirmed)}")[:2000],
        ))

    def _proves_landed(self, tap: TapRow, unconfirmed: TapRow) -> bool:
        """A RECOVERED re-tap at the same gate, or the next tap of a handset (counter_after), whose
        wallet holds the record the unconfirmed write made."""
        if is_recovered(tap):
            if tap.gate_id != unconfirmed.gate_id or tap.seq <= unconfirmed.seq:
                return False
        elif not is_link(tap) or tap.counter_before != unconfirmed.counter_after:
            return False
        return self.p.holds_write(tap, unconfirmed)

    async def _unland(self, tap: TapRow) -> None:
        """A write taken as landed proves not to have (its retry's report arrived later): its `landed`
        entry comes out again, and an action it delivered is pending again unless delivered since."""
        entry = await self.session.scalar(
            select(LedgerEntryRow).where(LedgerEntryRow.kind == "landed", LedgerEntryRow.tap_id == tap.tap_id)
        )
        if entry is not None:
            await ledger.remove(self.session, entry)
        if tap.action_id is not None:
            action = await self.session.get(ActionRow, tap.action_id)
            if action is not None and action.applied_tap_id == tap.tap_id:
                action.state, action.applied_at, action.applied_tap_id = "pending", None, None
                self.outcome.actions_applied = True  # the action list changes: publish it again

    # --- one new tap: findings and money --------------------------------------------------------------

    async def _tap(self, tap: TapRow, known_counter: int | None) -> Findings:
        findings = Findings()
        if is_unconfirmed(tap):  # posted to suspense by _settle_unconfirmed; its reconciled says how far
            return findings
        if is_recovered(tap):
            await self._recovered(tap, findings)
            return findings
        # the card's taps that read this counter or the one before: a twin write, the previous link
        near = sorted((await self.session.execute(
            select(TapRow).where(TapRow.card_id == tap.card_id,
                                 TapRow.counter_before.in_([tap.counter_before - 1, tap.counter_before]),
                                 TapRow.tap_id != tap.tap_id)
        )).scalars(), key=chain_key)
        if writes(tap):
            twin = next((other.tap_id for other in near
                         if other.counter_before == tap.counter_before and stands(other)), None)
            if twin is not None:
                findings.add("counter_reused", f"counter {tap.counter_before} also written by tap {twin}; "
                                               f"this fork: {ledger.handset(tap)}")
                await self._mark_fork(twin)
        if "counter_reused" not in findings.kinds:
            self._balance_jump(tap, near, findings)
        if known_counter is not None and tap.counter_before > known_counter:
            findings.add("counter_gap", f"counter {known_counter} -> {tap.counter_before}: taps missing")
        action = await self._apply_action(tap) if writes(tap) else None
        await self._post_money(tap, action, fork="counter_reused" in findings.kinds)
        if self.p.settings.reconcile:
            if self.listed is None:
                self.listed = [(int(added), removed) for added, removed in (await self.session.execute(
                    select(DenyListEntryRow.added_version, DenyListEntryRow.removed_version)
                    .where(DenyListEntryRow.card_id == self.card_id))).all()]
            await self.p.reconcile(self.session, tap, action, findings, self.listed)
        return findings

    async def _recovered(self, tap: TapRow, findings: Findings) -> None:
        """A re-tap that found its own unconfirmed write landed moves no money and makes no trip; its
        claim is checked here so a forged one raises an alarm (the landing itself is settled above)."""
        unconfirmed = await self.session.scalar(
            select(TapRow)
            .where(TapRow.card_id == tap.card_id, TapRow.gate_id == tap.gate_id, TapRow.seq < tap.seq,
                   TapRow.flags.bitwise_and(int(Flag.UNCONFIRMED)) != 0)
            .order_by(TapRow.seq.desc())
            .limit(1)
        )
        if unconfirmed is not None and not self.p.holds_write(tap, unconfirmed):
            findings.add("recovered_unproven",
                         f"re-tap claims tap {unconfirmed.tap_id} landed (counter "
                         f"{unconfirmed.counter_after}, balance {unconfirmed.balance_after}) but its wallet "
                         "does not hold that record")

    async def _mark_fork(self, twin: str) -> None:
        """The earlier fork's entries say they are a fork too, so an operator sees both handsets."""
        entries = (await self.session.execute(
            select(LedgerEntryRow).where(LedgerEntryRow.tap_id == twin)
        )).scalars()
        for entry in entries:
            if not entry.detail.startswith("fork"):
                entry.detail = f"fork: {entry.detail}"[:200]

    @staticmethod
    def _balance_jump(tap: TapRow, near: Sequence[TapRow], findings: Findings) -> None:
        """The link that wrote the counter this tap read must have left the balance it read."""
        previous = [
            link for link in near
            if link.counter_before == tap.counter_before - 1 and link.counter_after == tap.counter_before
            and (not is_unconfirmed(link) or link.reconciled == Landing.LANDED.value)
        ]
        if previous and all(link.balance_after != tap.balance_before for link in previous):
            findings.add("balance_jump", f"balance {tap.balance_before} at counter {tap.counter_before}, "
                                         f"the previous tap left {previous[0].balance_after}")

    async def _apply_action(self, tap: TapRow) -> ActionRow | None:
        if tap.action_id is None:
            return None
        action = await self.session.get(ActionRow, tap.action_id)
        if action is None or action.card_id != tap.card_id:
            return None
        if action.state == "pending":
            action.state = "applied"
            action.applied_at = tap.time
            action.applied_tap_id = tap.tap_id
            self.outcome.actions_applied = True
        return action

    async def _post_money(self, tap: TapRow, action: ActionRow | None, *, fork: bool) -> None:
        """A top-up delivered and a fare charged at one tap are two entries, never one net amount; a
        delivery into a wallet below zero (an overdraft's debt) books the part that pays the debt as
        `overdraft_recovery` and the rest as the action's kind. A tap's money entries commit together,
        so one found posted means all are (`self.posted`)."""
        if tap.tap_id in self.posted:
            return
        note = "fork" if fork else ""
        if writes(tap) and tap.topup_applied > 0:
            kind = action.kind if action is not None and action.kind in ledger.ACTION_KINDS else "topup"
            action_id = action.id if action is not None else None
            recovery = min(tap.topup_applied, max(0, -tap.balance_before))
            if recovery:
                await ledger.delivery(self.session, tap, ledger.OVERDRAFT_RECOVERY, recovery, action_id,
                                      note, looked=True)
            if tap.topup_applied > recovery:
                await ledger.delivery(self.session, tap, kind, tap.topup_applied - recovery, action_id, note,
                                      looked=True)
        amount = ledger.charged(tap)
        if amount:
            kind = "missing_exit" if tap.flags & Flag.MISSING_EXIT else "fare"
            await ledger.fare(self.session, tap, amount, self.p.revenue_account(tap), kind=kind, detail=note,
                              looked=True)

    # --- the chain: trips, head, opening --------------------------------------------------------------

    def _counts(self, tap: TapRow) -> bool:
        """Does the tap take part in trips? An allowed tap, and an unconfirmed write once it landed
        (the barrier stayed shut but the wallet holds the write: the passage the gate decided, unless
        the write was a deny-listed wallet's refusal, Processor.passed)."""
        if is_recovered(tap):
            return False
        if is_unconfirmed(tap):
            return tap.reconciled == Landing.LANDED.value and self.p.passed(tap)
        return tap.allowed

    @staticmethod
    def _state(tap: TapRow) -> bool:
        """Does the tap stand for the wallet's state (the head candidates)? A link (chain.is_link) but
        not a write that did not land; an unconfirmed write still open counts provisionally, as in the
        ledger."""
        return is_link(tap) and tap.reconciled != Landing.VOIDED.value

    async def _rebuild(self, phone: PhoneRow, new: Sequence[TapRow]) -> None:
        """The card's trips again from its whole chain in counter order; head and opening with them."""
        session = self.session
        fresh = {tap.tap_id for tap in new}
        chain = sorted(
            (tap for tap in (await session.execute(select(TapRow).where(TapRow.card_id == self.card_id)))
             .scalars() if tap.reconciled is not None or tap.tap_id in fresh),
            key=chain_key,
        )
        for version in {tap.fare_table_version for tap in chain}:
            await self.p.table(session, version)
        for trip in (await session.execute(select(TripRow).where(TripRow.card_id == self.card_id))).scalars():
            await session.delete(trip)
        await session.flush()
        for tap in chain:
            tap.trip_id = None
        walk = TripWalk(self.card_id, lambda tap: self.p.network(tap)[1])
        walk.walk(tap for tap in chain if self._counts(tap))
        await self._store(phone, walk)
        states = [tap for tap in chain if self._state(tap)]
        if states:
            self._advance(phone, states[-1])

    async def _append(self, phone: PhoneRow, new: Sequence[TapRow]) -> None:
        """Every new tap sits above the chain head: the trips go on from the one left open."""
        open_trip = await self.session.get(TripRow, phone.open_trip_id) if phone.open_trip_id else None
        if open_trip is not None and open_trip.state != "open":
            open_trip = None
        walk = TripWalk(self.card_id, lambda tap: self.p.network(tap)[1], open=open_trip)
        walk.walk(tap for tap in new if self._counts(tap))
        await self._store(phone, walk)
        states = [tap for tap in new if self._state(tap)]
        if states:
            self._advance(phone, states[-1])

    async def _store(self, phone: PhoneRow, walk: TripWalk) -> None:
        for trip in walk.new:
            self.session.add(trip)
        await self.session.flush()
        for tap, trip in walk.joined:
            tap.trip_id = trip.id
        phone.open_trip_id = walk.open.id if walk.open is not None else None

    async def _opening(self, first: TapRow) -> None:
        """One opening per card, at its earliest link: moved there when an earlier link arrives late
        (`first` is the earliest of the new taps)."""
        current = (await self.session.execute(
            select(LedgerEntryRow).where(LedgerEntryRow.kind == "opening",
                                         LedgerEntryRow.card_id == self.card_id)
        )).scalars().all()
        if len(current) == 1 and current[0].tap_id is not None:
            opened_at = await self.session.get(TapRow, current[0].tap_id)
            if opened_at is not None and chain_key(opened_at) <= chain_key(first):
                return
        for entry in current:
            await ledger.remove(self.session, entry)
        await ledger.opening(self.session, first)

    @staticmethod
    def _advance(phone: PhoneRow, head: TapRow) -> None:
        phone.counter = head.counter_after
        phone.balance = head.balance_after
        phone.last_tap_id = head.tap_id
        phone.last_tap_time = head.time

    # --- verdicts -------------------------------------------------------------------------------------

    def _alarms(self, new: Sequence[TapRow], findings: dict[str, Findings]) -> None:
        now = datetime.now(UTC)
        for tap in new:
            found = findings[tap.tap_id]
            if is_unconfirmed(tap):
                continue  # _settle_unconfirmed set its reconciled
            if is_recovered(tap):
                tap.reconciled = ",".join(found.kinds) if found.kinds else "recovered"
            else:
                tap.reconciled = ",".join(found.kinds) if found.kinds else "ok"
            if CLONE_FINDINGS & set(found.kinds):
                self.outcome.block = True
            for kind in found.kinds:
                if kind == "counter_gap":
                    continue  # informational: a late gate fills it
                self.session.add(
                    AlarmRow(
                        created_at=now,
                        kind=kind,
                        severity="critical" if kind in CRITICAL_FINDINGS else "warning",
                        gate_id=tap.gate_id,
                        card_id=tap.card_id,
                        tap_id=tap.tap_id,
                        detail="; ".join(found.details)[:2000],
                    )
                )


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
