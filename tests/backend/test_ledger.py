"""The double-entry ledger (docs/ledger.md) on taps made by the real fare_core: every entry balanced, a
wallet's postings equal to its last link, unconfirmed writes in suspense until a link settles them, a
RECOVERED re-tap checked against its wallet, and the same trips and ledger whatever order the taps
arrive in and whatever the gates' clocks say."""

from __future__ import annotations

import random
import tomllib
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import delete, func, select, update

import fare_core
from backend import audit, ledger
from backend.api.routes.reports import ledger_totals
from backend.api.schemas import LedgerReport
from backend.ingest.store import RawMessage
from backend.tables import (
    ActionRow,
    AlarmRow,
    FareTableRow,
    GateRow,
    LedgerEntryRow,
    PhoneRow,
    PostingRow,
    TapRow,
    TripRow,
)
from fare_core import Flag, Reason, artefact, compiler, rules
from fare_core.reasons import Direction
from faregate.simgate import TINY, FareState, SimGate, new_phone
from protocol.mqtt import TapMessage, Topics, encode, tap_id, with_mac
from tests.backend.test_processor import CARD, at, ingest, setup

ENTRY, EXIT = Direction.ENTRY, Direction.EXIT
SAM = fare_core.Sam(fare_core.DEVELOPMENT_SAM_KEY)


def card(n: int) -> str:
    return f"{CARD + n:016x}"


def unconfirmed(gate: SimGate, tap: TapMessage) -> TapMessage:
    """The gate's rewrite of a tap whose write it could not confirm (gate/controller.py), under its MAC."""
    return with_mac(tap.model_copy(update={
        "allowed": False, "reason": Reason.READ_FAILED, "flags": tap.flags | Flag.UNCONFIRMED}), gate.mac_key)


def recovered(gate: SimGate, after: TapMessage, wallet: bytes) -> TapMessage:
    """The gate's re-tap that read `wallet` and found its own unconfirmed write there: allowed, fare 0,
    nothing written, the wallet it read as wallet_before (docs/ledger.md)."""
    record, _ = fare_core.read_wallet(wallet, after.card_id, SAM)
    seq = gate.seq + 1
    message = with_mac(after.model_copy(update={
        "seq": seq, "tap_id": tap_id(gate.station_id, gate.gate_no, seq), "allowed": True,
        "reason": Reason.OK, "flags": int(Flag.RECOVERED), "fare": 0, "balance_before": record.balance,
        "balance_after": record.balance, "counter_before": record.counter, "counter_after": record.counter,
        "wallet_before": wallet.hex(), "action_id": None, "topup_applied": 0,
        "time": after.time + timedelta(seconds=20)}), gate.mac_key)
    gate.journal_tap(encode(message), seq=seq)
    return message


async def entries(sessions: Any, card_id: str | None = None) -> list[tuple[str, str | None]]:
    async with sessions() as session:
        query = select(LedgerEntryRow).order_by(LedgerEntryRow.id)
        if card_id is not None:
            query = query.where(LedgerEntryRow.card_id == card_id)
        return [(e.kind, e.tap_id) for e in (await session.execute(query)).scalars()]


async def checks(sessions: Any) -> dict[str, Any]:
    async with sessions() as session:
        return {
            "unbalanced": await audit.unbalanced_entries(session),
            "trips": await audit.invalid_trips(session),
            "heads": await audit.head_mismatches(session),
            "totals": await audit.account_totals(session),
            "positions": await audit.wallet_positions(session),
        }


def held(wallet: bytes, card_id: int) -> tuple[int, int]:
    """What the wallet itself holds: (balance, counter), the ground truth the ledger must equal."""
    record, _ = fare_core.read_wallet(wallet, card_id, SAM)
    return record.balance, record.counter


# --- posting ----------------------------------------------------------------------------------------------


async def test_an_unbalanced_entry_is_never_written(migrated: Any) -> None:
    sessions, _store, _processor = await setup(migrated)
    async with sessions.begin() as session:
        with pytest.raises(ledger.Unbalanced):
            await ledger.post(session, "fare", [("wallet:x", -400), ("revenue:metro:2026-11-24", 300)],
                              time=at(2), tap_id="1-1:1")
    assert await entries(sessions) == []


async def test_topup_and_fare_at_one_tap_are_two_entries_and_each_kind_balances(migrated: Any) -> None:
    """A top-up of 1,000 applied at an exit that charged 400 is a `topup` and a `fare`, not +600; the
    missing-exit charge is its own kind; every entry's legs sum to zero and the wallet's postings come
    to what the wallet holds."""
    sessions, store, processor = await setup(migrated)
    async with sessions.begin() as session:
        action = ActionRow(card_id=card(0), kind="topup", topup=1000, state="pending", created_at=at(1))
        session.add(action)
        await session.flush()
        await ledger.payment(session, card(0), 1000, "provider", action.id, at(1))
    alpha, delta, bravo = SimGate(1), SimGate(4), SimGate(2)
    wallet = new_phone(CARD, balance=500)
    entry, wallet = alpha.tap(wallet, CARD, ENTRY, at(2, 0))
    exit_, wallet = delta.tap(wallet, CARD, EXIT, at(2, 30), topup=1000, action_id=action.id)
    assert (exit_.fare, exit_.topup_applied, exit_.balance_after) == (400, 1000, 1100)
    again, wallet = alpha.tap(wallet, CARD, ENTRY, at(3, 0))  # enters, never exits
    late, wallet = bravo.tap(wallet, CARD, ENTRY, at(9, 0))  # the next entry charges the missing exit
    assert late.flags & Flag.MISSING_EXIT and late.fare > 0
    await ingest(store, processor, entry, exit_, again, late)
    assert await entries(sessions) == [
        ("payment", None), ("opening", entry.tap_id), ("topup", exit_.tap_id), ("fare", exit_.tap_id),
        ("missing_exit", late.tap_id)]
    found = await checks(sessions)
    assert found["unbalanced"] == [] and found["trips"] == [] and found["heads"] == []
    assert found["positions"][card(0)] == held(wallet, CARD)
    assert found["totals"] == {"payments": -1000, "undelivered": 0, "issuance": -500,
                               "wallet": wallet_balance(wallet), "revenue": 400 + late.fare, "suspense": 0}
    async with sessions() as session:
        legs = (await session.execute(
            select(PostingRow.account, PostingRow.amount).join(LedgerEntryRow)
            .where(LedgerEntryRow.tap_id == exit_.tap_id).order_by(PostingRow.id))).all()
        trips = (await session.execute(select(TripRow).order_by(TripRow.id))).scalars().all()
    assert [tuple(leg) for leg in legs] == [
        ("undelivered", -1000), (f"wallet:{card(0)}", 1000),
        (f"wallet:{card(0)}", -400), ("revenue:metro:2026-11-24", 400)]
    # the missing-exit charge belongs to the trip that never exited, not to the new one
    assert [(t.state, t.fare) for t in trips] == [("complete", 400), ("missing_exit", late.fare), ("open", 0)]


def wallet_balance(wallet: bytes) -> int:
    record, _ = fare_core.read_wallet(wallet, CARD, SAM)
    return record.balance


# --- unconfirmed writes -----------------------------------------------------------------------------------


async def test_unconfirmed_fare_sits_in_suspense_until_a_link_settles_it(migrated: Any) -> None:
    """Issue 15: revenue counted a write that never landed. Now the landed one becomes revenue and its
    trip gets its exit and fare; the other is voided; revenue is only what the wallets lost."""
    sessions, store, processor = await setup(migrated)
    alpha, delta, bravo = SimGate(1), SimGate(4), SimGate(2)
    start = {n: new_phone(CARD + n, balance=1000) for n in (0, 1)}
    taps, exits = {}, {}
    for n, wallet in start.items():
        entry, wallet = alpha.tap(wallet, CARD + n, ENTRY, at(2, n))
        exit_, written = delta.tap(wallet, CARD + n, EXIT, at(2, 30 + n))
        exits[n] = unconfirmed(delta, exit_)
        taps[n] = (entry, written if n == 0 else wallet)  # the write landed on phone 0 only
    await ingest(store, processor, *(taps[n][0] for n in (0, 1)), *exits.values())
    async with sessions() as session:
        assert (await audit.account_totals(session))["suspense"] == 800  # two exits of 400, unknown
        assert (await audit.account_totals(session))["revenue"] == 0
    revenue = await revenue_report(sessions)
    assert revenue == 0
    # each phone taps again somewhere: phone 0 reads the counter the exit wrote, phone 1 the old one
    nxt0, w0 = bravo.tap(taps[0][1], CARD, ENTRY, at(4, 0))
    nxt1, w1 = delta.tap(taps[1][1], CARD + 1, EXIT, at(4, 1))  # the rider exits again: it charges now
    await ingest(store, processor, nxt0, nxt1)
    async with sessions() as session:
        states = {t.tap_id: t.reconciled for t in (await session.execute(select(TapRow))).scalars()}
        trips = {t.card_id: t for t in (await session.execute(select(TripRow).where(
            TripRow.exit_tap_id.is_not(None)))).scalars()}
    assert states[exits[0].tap_id] == "unconfirmed_landed"
    assert states[exits[1].tap_id] == "unconfirmed_not_landed"
    assert (trips[card(0)].state, trips[card(0)].exit_tap_id, trips[card(0)].fare) == (
        "complete", exits[0].tap_id, 400)  # the landed exit closes its trip with its fare
    assert trips[card(1)].exit_tap_id == nxt1.tap_id
    assert await entries(sessions, card(0)) == [
        ("opening", taps[0][0].tap_id), ("unconfirmed", exits[0].tap_id), ("landed", exits[0].tap_id)]
    assert await entries(sessions, card(1)) == [
        ("opening", taps[1][0].tap_id), ("unconfirmed", exits[1].tap_id), ("voided", exits[1].tap_id),
        ("fare", nxt1.tap_id)]
    found = await checks(sessions)
    assert found["totals"]["suspense"] == 0 and found["unbalanced"] == [] and found["trips"] == []
    assert found["totals"]["revenue"] == 800 == await revenue_report(sessions)  # 400 landed + 400 charged
    assert found["positions"][card(0)] == held(w0, CARD) and found["positions"][card(1)] == held(w1, CARD + 1)
    assert found["heads"] == []


async def revenue_report(sessions: Any) -> int:
    """What /reports/revenue sums: the revenue postings."""
    async with sessions() as session:
        total = await session.scalar(select(func.coalesce(func.sum(PostingRow.amount), 0))
                                     .where(PostingRow.account.like("revenue:%")))
    return int(total or 0)


async def test_a_recovered_retap_settles_the_write_as_landed(migrated: Any) -> None:
    """Issue 15's power cut: the exit write landed but the gate never learnt it; the re-tap at the same
    gate finds its record on the wallet (RECOVERED). The exit then counts with its fare, the re-tap
    moves no money and makes no trip, and nothing waits in suspense."""
    sessions, store, processor = await setup(migrated)
    alpha, delta = SimGate(1), SimGate(4)
    entry, wallet = alpha.tap(new_phone(CARD, balance=1000), CARD, ENTRY, at(2, 0))
    exit_, written = delta.tap(wallet, CARD, EXIT, at(2, 30))
    lost = unconfirmed(delta, exit_)
    retap = recovered(delta, lost, written)
    await ingest(store, processor, entry, lost, retap)
    async with sessions() as session:
        states = {t.tap_id: t.reconciled for t in (await session.execute(select(TapRow))).scalars()}
        trip = (await session.execute(select(TripRow))).scalar_one()
        assert (await session.execute(select(AlarmRow))).scalars().all() == []
    assert (states[lost.tap_id], states[retap.tap_id]) == ("unconfirmed_landed", "recovered")
    assert (trip.state, trip.exit_tap_id, trip.fare) == ("complete", lost.tap_id, 400)
    assert await entries(sessions) == [("opening", entry.tap_id), ("unconfirmed", lost.tap_id),
                                       ("landed", lost.tap_id)]
    found = await checks(sessions)
    assert found["totals"]["suspense"] == 0 and found["totals"]["revenue"] == 400
    assert found["positions"][card(0)] == held(written, CARD) == (600, exit_.counter_after)


@pytest.mark.security
async def test_a_forged_recovered_retap_settles_nothing_and_raises_an_alarm(migrated: Any) -> None:
    """A gate (or someone with its key) reports a RECOVERED re-tap for a write that never landed, to turn
    a voidable charge into revenue: the wallet it shows does not hold the record, so nothing settles,
    the money stays in suspense and a critical alarm names the tap."""
    sessions, store, processor = await setup(migrated)
    alpha, delta = SimGate(1), SimGate(4)
    entry, wallet = alpha.tap(new_phone(CARD, balance=1000), CARD, ENTRY, at(2, 0))
    exit_, _written = delta.tap(wallet, CARD, EXIT, at(2, 30))
    lost = unconfirmed(delta, exit_)
    forged = recovered(delta, lost, wallet)  # the wallet as it was: counter and balance before the exit
    forged = with_mac(forged.model_copy(update={  # claims the write's counter and balance all the same
        "counter_before": exit_.counter_after, "counter_after": exit_.counter_after,
        "balance_before": exit_.balance_after, "balance_after": exit_.balance_after}), delta.mac_key)
    await ingest(store, processor, entry, lost, forged)
    async with sessions() as session:
        states = {t.tap_id: t.reconciled for t in (await session.execute(select(TapRow))).scalars()}
        alarm = (await session.execute(select(AlarmRow))).scalar_one()
        trip = (await session.execute(select(TripRow))).scalar_one()
    assert (states[lost.tap_id], states[forged.tap_id]) == ("unconfirmed", "recovered_unproven")
    assert (alarm.kind, alarm.severity, alarm.tap_id) == ("recovered_unproven", "critical", forged.tap_id)
    assert trip.state == "open"
    found = await checks(sessions)
    assert (found["totals"]["suspense"], found["totals"]["revenue"]) == (400, 0)


# --- counter order ----------------------------------------------------------------------------------------


def day_of_taps(delta_clock: timedelta) -> tuple[list[TapMessage], dict[str, tuple[int, int]]]:
    """Four phones' rides through four gates (gate Delta's clock off by `delta_clock`), every decision
    by fare_core; returns the taps in the order they happened and what each wallet holds at the end."""
    alpha, bravo, charlie, bus = SimGate(1), SimGate(2), SimGate(3), SimGate(50)
    delta = SimGate(4)
    clock = {4: delta_clock}
    wallets = {n: new_phone(CARD + n, balance=3000) for n in range(4)}
    plan = [  # (phone, gate, direction, minute)
        (0, alpha, ENTRY, 0), (1, bus, ENTRY, 1), (2, alpha, ENTRY, 2), (0, delta, EXIT, 30),
        (1, alpha, ENTRY, 31), (3, bravo, ENTRY, 32), (2, bravo, ENTRY, 40), (3, delta, EXIT, 50),
        (1, delta, EXIT, 55), (0, bravo, ENTRY, 70), (2, charlie, EXIT, 75), (0, charlie, EXIT, 90),
        (3, delta, ENTRY, 95), (1, bus, ENTRY, 100), (3, alpha, EXIT, 130), (2, alpha, ENTRY, 140),
    ]
    taps = []
    for phone, gate, direction, minute in plan:
        when = at(2, 0) + timedelta(minutes=minute) + clock.get(gate.station_id, timedelta())
        tap, wallets[phone] = gate.tap(wallets[phone], CARD + phone, direction, when)
        taps.append(tap)
    return taps, {card(n): held(wallet, CARD + n) for n, wallet in wallets.items()}


async def outcome(sessions: Any) -> dict[str, Any]:
    """Everything derived, without ids or arrival-dependent stamps."""
    async with sessions() as session:
        trips = Counter(
            (t.card_id, t.state, t.entry_tap_id, t.exit_tap_id, t.fare)
            for t in (await session.execute(select(TripRow))).scalars())
        phones = {p.card_id: (p.balance, p.counter, p.last_tap_id, p.open_trip_id is not None)
                  for p in (await session.execute(select(PhoneRow))).scalars()}
        kinds = Counter((e.kind, e.tap_id) for e in (await session.execute(select(LedgerEntryRow))).scalars())
        accounts = dict((await session.execute(
            select(PostingRow.account, func.sum(PostingRow.amount)).group_by(PostingRow.account))).all())
        alarms = Counter((a.kind, a.tap_id) for a in (await session.execute(select(AlarmRow))).scalars())
    return {"trips": trips, "phones": phones, "entries": kinds, "accounts": accounts, "alarms": alarms}


async def forget(sessions: Any) -> None:
    """Back to an empty back office (the fare table stays), for the next arrival order."""
    async with sessions.begin() as session:
        for table in (PostingRow, LedgerEntryRow, TripRow, AlarmRow, TapRow, PhoneRow, GateRow):
            await session.execute(delete(table))


@pytest.mark.parametrize("delta_clock", [timedelta(), timedelta(hours=-1)], ids=["clocks-right", "delta-1h"])
async def test_arrival_order_and_gate_clocks_change_nothing(migrated: Any, delta_clock: timedelta) -> None:
    """Issue 15: with the backend down and the backlog uploaded later, and a gate clock stepped back an
    hour, the processor ordered by tap time and got wrong trips. The same taps live (one at a time, as
    they happened), in the order of their reported times, and shuffled in batches give the same trips,
    heads, entries and account balances, and the wallets' own balances."""
    sessions, store, processor = await setup(migrated, reconcile=False)
    taps, wallets = day_of_taps(delta_clock)
    topics = Topics("t")

    async def arrive(batches: list[list[TapMessage]]) -> dict[str, Any]:
        await forget(sessions)
        for batch in batches:
            await store.store([RawMessage(topics.taps(t.gate_id), encode(t)) for t in batch])
            while await processor.run_once():
                pass
        return await outcome(sessions)

    live = await arrive([[tap] for tap in taps])
    by_clock = sorted(taps, key=lambda t: t.time)
    if delta_clock:
        assert by_clock != taps  # the stepped-back clock puts Delta's taps before what preceded them
    orders = {"by reported time": [[tap] for tap in by_clock]}
    rng = random.Random(15)
    for attempt in range(3):
        shuffled = taps[:]
        rng.shuffle(shuffled)
        cuts = sorted(rng.sample(range(1, len(taps)), 4))
        bounds = zip([0, *cuts], [*cuts, len(taps)], strict=True)
        orders[f"shuffled {attempt}"] = [shuffled[a:b] for a, b in bounds]
    orders["one backlog"] = [taps[::-1]]
    for name, batches in orders.items():
        assert await arrive(batches) == live, name
    found = await checks(sessions)
    assert found["unbalanced"] == [] and found["trips"] == [] and found["heads"] == []
    assert found["positions"] == wallets  # the ledger equals every wallet
    assert all(state != "no_entry" for _card, state, *_ in live["trips"])
    assert live["alarms"] == Counter()


async def test_a_late_link_moves_the_opening_to_the_earliest_counter(migrated: Any) -> None:
    sessions, store, processor = await setup(migrated, reconcile=False)
    alpha, delta = SimGate(1), SimGate(4)
    entry, wallet = alpha.tap(new_phone(CARD, balance=2000), CARD, ENTRY, at(2, 0))
    exit_, wallet = delta.tap(wallet, CARD, EXIT, at(2, 30))
    await ingest(store, processor, exit_)
    assert await entries(sessions) == [("opening", exit_.tap_id), ("fare", exit_.tap_id)]
    async with sessions() as session:
        assert [t.state for t in (await session.execute(select(TripRow))).scalars()] == ["no_entry"]
    await ingest(store, processor, entry)  # Alpha's backlog, an hour late
    assert await entries(sessions) == [("fare", exit_.tap_id), ("opening", entry.tap_id)]
    async with sessions() as session:
        trip = (await session.execute(select(TripRow))).scalar_one()
    assert (trip.state, trip.entry_tap_id, trip.exit_tap_id, trip.fare) == ("complete", entry.tap_id,
                                                                             exit_.tap_id, 400)
    assert (await checks(sessions))["positions"][card(0)] == held(wallet, CARD) == (1600, exit_.counter_after)


async def test_reprocessing_posts_nothing_twice(migrated: Any) -> None:
    sessions, store, processor = await setup(migrated, reconcile=False)
    taps, wallets = day_of_taps(timedelta())
    await ingest(store, processor, *taps)
    before = await outcome(sessions)
    async with sessions.begin() as session:  # every tap pending again, as after a crash mid-way
        await session.execute(update(TapRow).values(reconciled=None))
    while await processor.run_once():
        pass
    after = await outcome(sessions)
    assert after["entries"] == before["entries"] and after["accounts"] == before["accounts"]
    assert after["trips"] == before["trips"]
    assert (await checks(sessions))["positions"] == wallets


# --- clones -----------------------------------------------------------------------------------------------


@pytest.mark.security
async def test_a_cloned_wallet_is_flagged_at_the_first_reuse_and_both_forks_are_kept(migrated: Any) -> None:
    """The copy rides on the same record as the original: the first tap that writes a counter already
    written is a critical counter_reused (deny-listed by default), and the ledger keeps each fork's
    money with its handset's evidence."""
    blocked: list[list[str]] = []

    async def on_block(cards: list[str], reason: str) -> None:
        blocked.append(cards)

    sessions, store, processor = await setup(migrated)  # the default settings: auto_denylist on
    assert processor.settings.auto_denylist
    processor.on_block = on_block
    alpha, bravo, delta = SimGate(1), SimGate(2), SimGate(4)
    original = new_phone(CARD, balance=3000)
    entry, original = alpha.tap(original, CARD, ENTRY, at(2, 0))
    clone = original  # copied after the entry
    exit_, original = delta.tap(original, CARD, EXIT, at(2, 30))
    await ingest(store, processor, entry, exit_)
    assert blocked == []
    copy_exit, clone = bravo.tap(clone, CARD, EXIT, at(2, 31))  # the copy's first write: a reuse
    await ingest(store, processor, copy_exit)
    async with sessions() as session:
        alarms = (await session.execute(select(AlarmRow))).scalars().all()
        fares = (await session.execute(select(LedgerEntryRow).where(LedgerEntryRow.kind == "fare")
                                       .order_by(LedgerEntryRow.id))).scalars().all()
    assert [(a.kind, a.severity, a.tap_id) for a in alarms] == [
        ("counter_reused", "critical", copy_exit.tap_id)]
    assert blocked == [[card(0)]]
    counters = f"wallet counter {exit_.counter_before}->{exit_.counter_after}"
    assert copy_exit.counter_before == exit_.counter_before
    assert [(e.tap_id, e.detail.split(";")[0]) for e in fares] == [
        (exit_.tap_id, f"fork: gate 4-1 seq 1, {counters}"),
        (copy_exit.tap_id, f"gate 2-1 seq 1, {counters}")]
    assert all("fork" in e.detail for e in fares)


async def test_a_wallet_without_a_valid_record_is_no_link(migrated: Any) -> None:
    """A tap that read no valid record (BAD_MAC) reports counter 0 and balance 0: it would sort first
    and pose as the card's opening. It is no link: the opening and the head come from real reads."""
    sessions, store, processor = await setup(migrated, reconcile=False)
    alpha, delta = SimGate(1), SimGate(4)
    garbage, _ = alpha.tap(bytes(128), CARD, ENTRY, at(1, 50))
    assert (garbage.reason, garbage.counter_before, garbage.balance_before) == (Reason.BAD_MAC, 0, 0)
    entry, wallet = alpha.tap(new_phone(CARD, balance=2000), CARD, ENTRY, at(2, 0))
    exit_, wallet = delta.tap(wallet, CARD, EXIT, at(2, 30))
    await ingest(store, processor, exit_, garbage)
    await ingest(store, processor, entry)
    assert await entries(sessions) == [("fare", exit_.tap_id), ("opening", entry.tap_id)]
    found = await checks(sessions)
    assert found["positions"][card(0)] == held(wallet, CARD) and found["heads"] == []


async def test_a_landing_proved_wrong_by_a_late_retry_is_taken_back(migrated: Any) -> None:
    """The exit's write did not land and the rider's retry at the same gate wrote the same counter; a
    later tap elsewhere read that counter. If the later tap's report arrives before the gate's backlog
    holding the retry, the unconfirmed exit first looks landed; the retry's report then voids it, its
    `landed` entry comes out, and trips, heads and accounts end as if the reports had come in order."""
    sessions, store, processor = await setup(migrated, reconcile=False)
    alpha, delta, bravo = SimGate(1), SimGate(4), SimGate(2)
    entry, wallet = alpha.tap(new_phone(CARD, balance=2000), CARD, ENTRY, at(2, 0))
    exit_, _lost_write = delta.tap(wallet, CARD, EXIT, at(2, 30))
    unknown = unconfirmed(delta, exit_)
    retry, wallet = delta.tap(wallet, CARD, EXIT, at(2, 31))  # the old wallet: it charges again
    later, wallet = bravo.tap(wallet, CARD, ENTRY, at(4, 0))
    await ingest(store, processor, entry, unknown, later)
    async with sessions() as session:
        assert (await session.get(TapRow, unknown.tap_id)).reconciled == "unconfirmed_landed"  # type: ignore[union-attr]
    await ingest(store, processor, retry)
    assert await entries(sessions) == [
        ("opening", entry.tap_id), ("unconfirmed", unknown.tap_id), ("voided", unknown.tap_id),
        ("fare", retry.tap_id)]
    async with sessions() as session:
        assert (await session.get(TapRow, unknown.tap_id)).reconciled == "unconfirmed_not_landed"  # type: ignore[union-attr]
        trips = [(t.state, t.exit_tap_id, t.fare) for t in
                 (await session.execute(select(TripRow).order_by(TripRow.entry_time))).scalars()]
    assert trips == [("complete", retry.tap_id, 400), ("open", None, 0)]
    found = await checks(sessions)
    assert found["positions"][card(0)] == held(wallet, CARD) and found["heads"] == []
    assert (found["totals"]["suspense"], found["totals"]["revenue"]) == (0, 400)


async def test_a_clones_write_from_the_same_counter_does_not_void_a_write_that_landed(migrated: Any) -> None:
    """A cloned card: the genuine handset's exit write landed but its answer was lost (UNCONFIRMED); the
    clone, still at the old counter, then exits elsewhere with a confirmed write from that counter. The
    genuine handset's next tap reads the very record its exit wrote (station and second stamped), so the
    exit landed: its fare is revenue, not voided, whatever the clone did (soak seed 51, revenue off by
    the voided fare). The clone's own write counts too: both handsets paid."""
    sessions, store, processor = await setup(migrated, reconcile=False)
    alpha, delta, bravo, echo = SimGate(1), SimGate(4), SimGate(2), SimGate(3)
    entry, wallet = alpha.tap(new_phone(CARD, balance=2000), CARD, ENTRY, at(2, 0))
    clone = wallet  # copied off the genuine handset inside the paid area
    exit_, wallet = delta.tap(wallet, CARD, EXIT, at(2, 30))  # landed on the genuine handset
    lost = unconfirmed(delta, exit_)
    cloned_exit, clone = echo.tap(clone, CARD, EXIT, at(2, 40))  # the clone writes from the same counter
    assert cloned_exit.counter_before == exit_.counter_before and cloned_exit.allowed
    genuine_next, wallet = bravo.tap(wallet, CARD, ENTRY, at(4, 0))  # reads what the exit wrote
    await ingest(store, processor, entry, lost, cloned_exit, genuine_next)
    async with sessions() as session:
        assert (await session.get(TapRow, lost.tap_id)).reconciled == "unconfirmed_landed"  # type: ignore[union-attr]
    kinds = await entries(sessions)
    assert ("landed", lost.tap_id) in kinds and ("voided", lost.tap_id) not in kinds
    assert ("fare", cloned_exit.tap_id) in kinds
    found = await checks(sessions)
    assert found["totals"]["suspense"] == 0
    assert found["totals"]["revenue"] == exit_.fare + cloned_exit.fare > 0


def clone_fork() -> tuple[TapMessage, TapMessage, TapMessage, TapMessage, TapMessage]:
    """A cloned card's fork: the entry; the genuine handset's exit (landed) and its UNCONFIRMED report;
    the clone's confirmed exit from the same counter; the genuine handset's next tap, reading what its
    exit wrote."""
    alpha, delta, bravo, echo = SimGate(1), SimGate(4), SimGate(2), SimGate(3)
    entry, wallet = alpha.tap(new_phone(CARD, balance=2000), CARD, ENTRY, at(2, 0))
    clone = wallet
    exit_, wallet = delta.tap(wallet, CARD, EXIT, at(2, 30))
    cloned_exit, clone = echo.tap(clone, CARD, EXIT, at(2, 40))
    genuine_next, wallet = bravo.tap(wallet, CARD, ENTRY, at(4, 0))
    return entry, exit_, unconfirmed(delta, exit_), cloned_exit, genuine_next


async def test_a_write_voided_by_a_clones_write_lands_when_its_proof_comes_later(migrated: Any) -> None:
    """As above, but the genuine handset's next tap reaches the back office after the clone's confirmed
    write had voided the unconfirmed exit (soak seed 7: the proof, a RECOVERED re-tap, came seconds
    later). The proof still outranks the void: the `voided` entry comes out, `landed` goes in, and the
    fork (two records written from one counter) raises the clone alarm the confirmed forks would."""
    sessions, store, processor = await setup(migrated, reconcile=False)
    entry, exit_, lost, cloned_exit, genuine_next = clone_fork()
    await ingest(store, processor, entry, lost, cloned_exit)
    async with sessions() as session:
        assert (await session.get(TapRow, lost.tap_id)).reconciled == "unconfirmed_not_landed"  # type: ignore[union-attr]
        assert (await session.execute(select(AlarmRow))).scalars().all() == []
    await ingest(store, processor, genuine_next)
    async with sessions() as session:
        assert (await session.get(TapRow, lost.tap_id)).reconciled == "unconfirmed_landed"  # type: ignore[union-attr]
        alarms = [(a.kind, a.tap_id) for a in (await session.execute(select(AlarmRow))).scalars()]
    assert ("counter_reused", lost.tap_id) in alarms
    kinds = await entries(sessions)
    assert ("landed", lost.tap_id) in kinds and ("voided", lost.tap_id) not in kinds
    found = await checks(sessions)
    assert found["totals"]["suspense"] == 0
    assert found["totals"]["revenue"] == exit_.fare + cloned_exit.fare > 0


async def test_a_clones_confirmed_write_after_a_landed_one_raises_the_clone_alarm(migrated: Any) -> None:
    """The other order: the unconfirmed exit is proven landed first, the clone's confirmed write from
    the same counter arrives afterwards. Two records from one counter: the clone alarm."""
    sessions, store, processor = await setup(migrated, reconcile=False)
    entry, _exit, lost, cloned_exit, genuine_next = clone_fork()
    await ingest(store, processor, entry, lost, genuine_next)
    await ingest(store, processor, cloned_exit)
    async with sessions() as session:
        assert (await session.get(TapRow, lost.tap_id)).reconciled == "unconfirmed_landed"  # type: ignore[union-attr]
        alarms = [(a.kind, a.tap_id) for a in (await session.execute(select(AlarmRow))).scalars()]
    assert ("counter_reused", cloned_exit.tap_id) in alarms


async def test_of_two_unconfirmed_writes_from_one_counter_only_the_proven_one_lands(migrated: Any) -> None:
    """Soak seed 7: a top-up's write at gate A went unanswered (did not land); the rider tapped at gate B,
    whose clock ran an hour slow, and that write landed, unanswered too. B's clock puts its write before
    A's, so nothing ordered them; the rider's next tap read counter+1 and counted for both: the top-up
    delivered twice, the back office 1,000 above the wallet. B's re-tap found B's very record on the
    wallet: B's write is the one that landed, A's is voided, the top-up delivered once, no clone alarm."""
    sessions, store, processor = await setup(migrated, reconcile=False)
    async with sessions.begin() as session:
        action = ActionRow(card_id=card(0), kind="topup", topup=1000, state="pending", created_at=at(1))
        session.add(action)
        await session.flush()
        await ledger.payment(session, card(0), 1000, "provider", action.id, at(1))
    alpha, bravo, charlie = SimGate(1), SimGate(2), SimGate(3)
    wallet = new_phone(CARD, balance=500)
    first, _lost = alpha.tap(wallet, CARD, ENTRY, at(2, 0), topup=1000, action_id=action.id)
    at_a = unconfirmed(alpha, first)
    second, wallet = bravo.tap(wallet, CARD, ENTRY, at(1, 10), topup=1000, action_id=action.id)  # slow clock
    at_b = unconfirmed(bravo, second)
    assert at_b.counter_before == at_a.counter_before and at_b.time < at_a.time
    retap = recovered(bravo, second, wallet)
    later, wallet = charlie.tap(wallet, CARD, EXIT, at(2, 40))
    await ingest(store, processor, at_a, at_b)
    await ingest(store, processor, retap)
    await ingest(store, processor, later)
    async with sessions() as session:
        states = {tap_id: (await session.get(TapRow, tap_id)).reconciled  # type: ignore[union-attr]
                  for tap_id in (at_a.tap_id, at_b.tap_id)}
        alarms = [a.kind for a in (await session.execute(select(AlarmRow))).scalars()]
    assert states == {at_a.tap_id: "unconfirmed_not_landed", at_b.tap_id: "unconfirmed_landed"}
    assert "counter_reused" not in alarms
    found = await checks(sessions)
    assert found["positions"][card(0)] == held(wallet, CARD)
    assert (found["totals"]["undelivered"], found["totals"]["suspense"]) == (0, 0)


async def test_a_retry_leaving_the_identical_record_still_voids_the_unconfirmed_write(migrated: Any) -> None:
    """The exit's write did not land and the rider's retry in the same second at the same gate wrote the
    same counter to the identical record: the next tap's wallet cannot tell which write it holds, and
    the confirmed retry is the one that landed (the wallet read the old counter for it)."""
    sessions, store, processor = await setup(migrated, reconcile=False)
    alpha, delta, bravo = SimGate(1), SimGate(4), SimGate(2)
    entry, wallet = alpha.tap(new_phone(CARD, balance=2000), CARD, ENTRY, at(2, 0))
    exit_, _lost_write = delta.tap(wallet, CARD, EXIT, at(2, 30))
    unknown = unconfirmed(delta, exit_)
    retry, wallet = delta.tap(wallet, CARD, EXIT, at(2, 30))  # the same second: the same record
    later, wallet = bravo.tap(wallet, CARD, ENTRY, at(4, 0))
    await ingest(store, processor, entry, unknown, retry, later)
    async with sessions() as session:
        assert (await session.get(TapRow, unknown.tap_id)).reconciled == "unconfirmed_not_landed"  # type: ignore[union-attr]
    found = await checks(sessions)
    assert (found["totals"]["suspense"], found["totals"]["revenue"]) == (0, retry.fare)


async def test_an_overdraft_exit_and_the_top_up_that_recovers_it(migrated: Any) -> None:
    """An exit that overdraws the wallet (the table's [overdraft]) is a fare like any other and the
    wallet's account goes below zero with the wallet; the next top-up is two entries, the part that
    pays the debt (`overdraft_recovery`) and the rest (`topup`); the ledger report shows the debt
    while it is owed."""
    sessions, store, processor = await setup(migrated)
    data = tomllib.loads(TINY.read_text(encoding="utf-8"))
    data["overdraft"] = {"limit_fen": 300, "taps": ["exit"]}
    blob = artefact.pack(compiler.compile_rules(rules.rules_from_data(data), 7, created_at=1_700_000_000))
    async with sessions.begin() as session:
        session.add(FareTableRow(version=7, name="overdraft", rules="", artefact=blob, checksum="00" * 32,
                                 created_at=at(0), activate_at=at(0)))
        action = ActionRow(card_id=card(0), kind="topup", topup=1000, state="pending", created_at=at(1))
        session.add(action)
        await session.flush()
        await ledger.payment(session, card(0), 1000, "provider", action.id, at(1))
    fare = FareState(fare_core.FareTable.from_bytes(blob), fare_core.DenyList([], version=0), SAM)
    alpha, delta = SimGate(1, fare=fare), SimGate(4, fare=fare)
    entry, wallet = alpha.tap(new_phone(CARD, balance=300), CARD, ENTRY, at(2, 0))
    exit_, wallet = delta.tap(wallet, CARD, EXIT, at(2, 30))  # 400 from 300
    assert exit_.allowed and exit_.flags & Flag.OVERDRAFT and (exit_.fare, exit_.balance_after) == (400, -100)
    await ingest(store, processor, entry, exit_)
    async with sessions() as session:
        assert (await ledger_report(session)).overdrawn == 100
    again, wallet = alpha.tap(wallet, CARD, ENTRY, at(3, 0), topup=1000, action_id=action.id)
    assert (again.allowed, again.topup_applied, again.balance_after) == (True, 1000, 900)
    await ingest(store, processor, again)
    kinds = await entries(sessions)
    assert kinds[-2:] == [("overdraft_recovery", again.tap_id), ("topup", again.tap_id)]
    async with sessions() as session:
        legs = (await session.execute(
            select(LedgerEntryRow.kind, PostingRow.account, PostingRow.amount).join(LedgerEntryRow)
            .where(LedgerEntryRow.tap_id == again.tap_id).order_by(PostingRow.id))).all()
        report = await ledger_report(session)
    assert [tuple(leg) for leg in legs] == [
        ("overdraft_recovery", "undelivered", -100), ("overdraft_recovery", f"wallet:{card(0)}", 100),
        ("topup", "undelivered", -900), ("topup", f"wallet:{card(0)}", 900)]
    assert report.overdrawn == 0 and report.revenue == 400
    found = await checks(sessions)
    assert found["positions"][card(0)] == held(wallet, CARD) == (900, again.counter_after)
    assert found["unbalanced"] == [] and found["heads"] == []


async def ledger_report(session: Any) -> LedgerReport:
    """GET /reports/ledger's answer, from the route itself."""
    return await ledger_totals(None, session)  # the viewer dependency is not used
