"""The soak's invariants, checked once the system is quiet: Jepsen's bank test for fare gates.

The ground truth is the simulator's WalletStore: each handset's record as a SAM reads it. Against
it, the back office (backend/audit.py, docs/ledger.md) and the gates' journals:

- card_balance / card_counter: for every card, the back office's balance and counter equal the
  wallet's (a card the back office never saw must still hold what it was issued with);
- revenue: revenue equals the charges that landed on the wallets: every handset's balance at the
  start minus its balance now, plus the top-ups delivered to them (paid, less what is undelivered);
- suspense: zero, once every gate has reported and every unconfirmed write was settled;
- unbalanced_entries: ledger entries whose postings do not sum to zero;
- taps_lost: a tap a gate journaled that the back office does not hold, or a counter step a wallet
  took that no stored tap accounts for;
- taps_doubled: a counter step two confirmed taps claim (the same write counted twice);
- topups_doubled: a top-up written into a wallet by more than one confirmed tap (money made out of
  nothing: the ledger's `undelivered` then goes below zero, more delivered than was paid);
- invalid_trips: trips in no valid state;
- clone_alarms: a cloned card whose two handsets both wrote, with no clone alarm;
- false_clone_alarms: a card never cloned that the back office took for a clone (an alarm an
  operator would act on by blocking a genuine commuter).

A cloned card's handsets cannot both equal the back office, so it is left out of the per-card and
counter-step checks (and named in the report); its money still counts in `revenue`.
"""

from __future__ import annotations

import importlib
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

import fare_core
from backend.tables import AlarmRow, TapRow, TripRow
from fare_core import Flag

CLONE_ALARMS = ("counter_reused", "clone", "cloned", "clone_detected", "balance_jump")
INVARIANTS = ("card_balance", "card_counter", "revenue", "suspense", "unbalanced_entries", "taps_lost",
              "taps_doubled", "topups_doubled", "invalid_trips", "clone_alarms", "false_clone_alarms")


@dataclass
class Handset:
    """One handset's ground truth: what it held when the soak began with it, and what it holds now."""

    card_id: int
    handset: int
    start_balance: int
    start_counter: int
    balance: int = 0
    counter: int = 0
    readable: bool = True


@dataclass
class Truth:
    handsets: list[Handset]
    journals: dict[str, tuple[int, int]]  # gate id -> (last seq journaled, committed through)

    @property
    def cloned(self) -> set[int]:
        return {h.card_id for h in self.handsets if h.handset > 0}


@dataclass
class Report:
    invariants: dict[str, int | None] = field(default_factory=dict)  # None: could not be checked
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(v == 0 for v in self.invariants.values())


def read_truth(wallets: Any, handsets: dict[tuple[int, int], tuple[int, int]]) -> list[Handset]:
    """Each handset's current record, read with fare_core.read_wallet and the SAM key."""
    out = []
    for (card, number), (balance, counter) in sorted(handsets.items()):
        h = Handset(card, number, balance, counter)
        try:
            record, _slot = fare_core.read_wallet(wallets.wallet(card, number), card, wallets.sam)
            h.balance, h.counter = int(record.balance), int(record.counter)
        except fare_core.WalletError:
            h.readable = False
        out.append(h)
    return out


def read_journal(path: Path) -> tuple[int, int]:
    """(last seq journaled, committed through) of a stopped gate's journal, read only."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        meta = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('last_seq', 'committed_through')"))
    return int(meta.get("last_seq", 0)), int(meta.get("committed_through", 0))


def _card_key(card: Any) -> int:
    return int(card, 16) if isinstance(card, str) else int(card)


async def check(session: AsyncSession, truth: Truth) -> Report:
    report = Report()
    try:
        audit: Any = importlib.import_module("backend.audit")
    except ImportError:
        audit = None
        report.details["audit"] = "backend.audit is missing: the ledger invariants could not be checked"
    cloned = truth.cloned
    if cloned:
        report.details["excluded_from_card_checks"] = {
            f"{c:016x}": "cloned: two handsets hold this card, neither can equal the back office"
            for c in sorted(cloned)}
    genuine = {h.card_id: h for h in truth.handsets if h.handset == 0 and h.card_id not in cloned}
    unreadable = [f"{h.card_id:016x}/{h.handset}" for h in truth.handsets if not h.readable]
    if unreadable:
        report.details["unreadable_wallets"] = unreadable

    # per card: the back office's balance and counter against the wallet's
    positions: dict[int, tuple[int, int]] = {}
    if audit is not None:
        positions = {_card_key(c): (int(b), int(n)) for c, (b, n) in
                     (await audit.wallet_positions(session)).items()}
    balance_off, counter_off = [], []
    for card, h in genuine.items():
        balance, counter = positions.get(card, (h.start_balance, h.start_counter))
        if balance != h.balance or not h.readable:
            balance_off.append({"card": f"{card:016x}", "back_office": balance, "wallet": h.balance})
        if counter != h.counter or not h.readable:
            counter_off.append({"card": f"{card:016x}", "back_office": counter, "wallet": h.counter})
    report.invariants["card_balance"] = len(balance_off) if audit is not None else None
    report.invariants["card_counter"] = len(counter_off) if audit is not None else None
    report.details["card_balance"], report.details["card_counter"] = balance_off[:20], counter_off[:20]

    # money: revenue against what landed on every handset; suspense; balanced entries
    landed = sum(h.start_balance - h.balance for h in truth.handsets)  # charges less top-ups delivered
    report.details["wallets_net_out_fen"] = landed
    if audit is not None:
        totals = {k: int(v) for k, v in (await audit.account_totals(session)).items()}
        report.details["account_totals_fen"] = totals
        revenue, suspense = totals.get("revenue", 0), totals.get("suspense", 0)
        # money that came in (payments, grants) less what still waits to reach a wallet: delivered
        delivered = -totals.get("payments", 0) - totals.get("adjustments", 0) - totals.get("undelivered", 0)
        report.details["delivered_fen"] = delivered
        report.invariants["revenue"] = int(revenue - delivered != landed)
        report.details["revenue_off_fen"] = revenue - delivered - landed
        report.invariants["suspense"] = int(suspense != 0)
        unbalanced = list(await audit.unbalanced_entries(session))
        report.invariants["unbalanced_entries"] = len(unbalanced)
        report.details["unbalanced_entries"] = unbalanced[:20]
        invalid = list(await audit.invalid_trips(session))
        report.invariants["invalid_trips"] = len(invalid)
        report.details["invalid_trips"] = [await _trip(session, trip) for trip in invalid[:20]]
    else:
        for name in ("revenue", "suspense", "unbalanced_entries", "invalid_trips"):
            report.invariants[name] = None

    # taps: every journaled seq stored once; every counter step accounted for, none twice
    lost, doubled = await _taps(session, truth, genuine, report)
    report.invariants["taps_lost"], report.invariants["taps_doubled"] = lost, doubled
    report.invariants["topups_doubled"] = await _topups_doubled(session, report)

    # clones: both handsets wrote -> an alarm
    report.invariants["clone_alarms"] = await _clone_alarms(session, truth, report)
    # what the faults made the system go through (not invariants: evidence the paths were taken)
    for name, flag in (("unconfirmed_taps", Flag.UNCONFIRMED), ("recovered_taps", Flag.RECOVERED)):
        report.details[name] = int((await session.execute(select(func.count()).select_from(TapRow).where(
            TapRow.flags.bitwise_and(int(flag)) != 0))).scalar_one())
    report.details["alarms"] = {str(kind): int(n) for kind, n in (await session.execute(
        select(AlarmRow.kind, func.count()).group_by(AlarmRow.kind))).all()}
    return report


async def _trip(session: AsyncSession, trip_id: int) -> dict[str, Any]:
    """An invalid trip as evidence: its state and the counters and gate clocks of its two taps."""
    trip = await session.get(TripRow, trip_id)
    if trip is None:
        return {"trip": trip_id}
    out: dict[str, Any] = {"trip": trip_id, "card": trip.card_id, "state": trip.state}
    for end, tap_id in (("entry", trip.entry_tap_id), ("exit", trip.exit_tap_id)):
        tap = await session.get(TapRow, tap_id) if tap_id else None
        if tap is not None:
            out[end] = {"tap": tap.tap_id, "counters": f"{tap.counter_before}->{tap.counter_after}",
                        "time": tap.time.isoformat(), "flags": tap.flags, "fare": tap.fare}
    return out


async def _taps(session: AsyncSession, truth: Truth, genuine: dict[int, Handset], report: Report
                ) -> tuple[int, int]:
    lost = doubled = 0
    stored = {g: (int(n), int(d), int(m or 0)) for g, n, d, m in (await session.execute(
        select(TapRow.gate_id, func.count(), func.count(func.distinct(TapRow.seq)), func.max(TapRow.seq))
        .group_by(TapRow.gate_id))).all()}
    missing_seqs: dict[str, int] = {}
    for gate, (last_seq, committed) in truth.journals.items():
        count, distinct, highest = stored.get(gate, (0, 0, 0))
        if distinct < last_seq:
            missing_seqs[gate] = last_seq - distinct
        lost += max(0, last_seq - distinct)
        doubled += count - distinct + max(0, highest - last_seq)
        if committed < last_seq:
            report.details.setdefault("unacknowledged", {})[gate] = last_seq - committed
    report.details["taps_missing_by_gate"] = missing_seqs
    report.details["taps_stored"] = sum(n for n, _, _ in stored.values())
    report.details["taps_journaled"] = sum(last for last, _ in truth.journals.values())

    rows = (await session.execute(
        select(TapRow.card_id, TapRow.counter_before, TapRow.flags)
        .where(TapRow.counter_after > TapRow.counter_before))).all()
    claims: dict[int, Counter[int]] = {}
    confirmed: dict[int, Counter[int]] = {}
    for card_hex, before, flags in rows:
        card = int(card_hex, 16)
        if card not in genuine:
            continue
        claims.setdefault(card, Counter())[int(before)] += 1
        if not flags & (Flag.UNCONFIRMED | Flag.RECOVERED):
            confirmed.setdefault(card, Counter())[int(before)] += 1
    steps_missing, steps_twice = [], []
    for card, h in genuine.items():
        have = claims.get(card, Counter())
        for step in range(h.start_counter, h.counter):
            if not have[step]:
                steps_missing.append({"card": f"{card:016x}", "counter": step})
        for step, n in confirmed.get(card, Counter()).items():
            if n > 1:
                steps_twice.append({"card": f"{card:016x}", "counter": step, "taps": n})
    report.details["counter_steps_missing"] = steps_missing[:20]
    report.details["counter_steps_twice"] = steps_twice[:20]
    return lost + len(steps_missing), doubled + len(steps_twice)


async def _topups_doubled(session: AsyncSession, report: Report) -> int:
    """Actions whose money reached a wallet through more than one confirmed tap."""
    applied: dict[int, list[str]] = {}
    for action, tap in (await session.execute(
            select(TapRow.action_id, TapRow.tap_id)
            .where(TapRow.action_id.is_not(None),
                   TapRow.flags.bitwise_and(int(Flag.TOPUP_APPLIED)) != 0,
                   TapRow.flags.bitwise_and(int(Flag.UNCONFIRMED | Flag.RECOVERED)) == 0))).all():
        if action is not None:
            applied.setdefault(int(action), []).append(str(tap))
    doubled = [{"action": a, "taps": taps} for a, taps in sorted(applied.items()) if len(taps) > 1]
    report.details["topups_doubled"] = doubled
    undelivered = report.details.get("account_totals_fen", {}).get("undelivered", 0)
    return max(len(doubled), int(undelivered < 0))


async def _clone_alarms(session: AsyncSession, truth: Truth, report: Report) -> int:
    by_card: dict[int, list[Handset]] = {}
    for h in truth.handsets:
        if h.card_id in truth.cloned:
            by_card.setdefault(h.card_id, []).append(h)
    silent = []
    for card, handsets in by_card.items():
        genuine = next(h for h in handsets if h.handset == 0)
        clones = [h for h in handsets if h.handset > 0]
        # both forks wrote after the clone was made: the back office saw one counter written twice
        both = any(c.counter > c.start_counter for c in clones) and genuine.counter > min(
            c.start_counter for c in clones)
        if not both:
            continue
        alarms = (await session.execute(select(func.count()).select_from(AlarmRow).where(
            AlarmRow.card_id == f"{card:016x}", AlarmRow.kind.in_(CLONE_ALARMS)))).scalar_one()
        if not alarms:
            silent.append(f"{card:016x}")
    report.details["clones_without_alarm"] = silent
    alarmed = {str(card) for card in (await session.execute(select(AlarmRow.card_id).where(
        AlarmRow.kind.in_(CLONE_ALARMS), AlarmRow.card_id.is_not(None)))).scalars()}
    wrongly = sorted(alarmed - {f"{card:016x}" for card in truth.cloned})
    report.details["false_clone_alarms"] = wrongly
    report.invariants["false_clone_alarms"] = len(wrongly)
    return len(silent)
