"""Ledger, trips and reconciliation on taps made by the real fare_core (honest, wrong-fare, cloned)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from backend import audit
from backend.ingest.store import RawMessage, TapStore
from backend.processor import Processor
from backend.tables import ActionRow, AlarmRow, FareTableRow, LedgerEntryRow, PhoneRow, TapRow, TripRow
from fare_core.reasons import Direction
from faregate.simgate import SimGate, new_phone, tiny_artefact
from protocol.mqtt import TapMessage, Topics, encode, with_mac
from tests.backend.conftest import make_settings

CARD = 0x0123456789ABCDEF


def at(hour: int, minute: int = 0, day: int = 24) -> datetime:
    """A UTC time on 2026-11-(day) (a Tuesday for 24): 02:00 UTC is 10:00 in Guangzhou (off-peak)."""
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


async def setup(migrated: Any, **settings: Any) -> tuple[Any, TapStore, Processor]:
    database, _engine, sessions = migrated
    blob = tiny_artefact()
    async with sessions.begin() as session:
        session.add(
            FareTableRow(
                version=1,
                name="tiny",
                rules="",
                artefact=blob,
                checksum="00" * 32,
                created_at=datetime.now(UTC),
                activate_at=datetime.now(UTC),
            )
        )
    return sessions, TapStore(sessions), Processor(make_settings(database, **settings), sessions)


async def ingest(store: TapStore, processor: Processor, *taps: TapMessage) -> None:
    topics = Topics("t")
    await store.store([RawMessage(topics.taps(t.gate_id), encode(t)) for t in taps])
    while await processor.run_once():
        pass


async def test_honest_trip_is_paired_ledgered_and_reconciled(migrated: Any) -> None:
    sessions, store, processor = await setup(migrated)
    alpha, delta = SimGate(1), SimGate(4)
    wallet = new_phone(CARD, balance=5000)
    entry, wallet = alpha.tap(wallet, CARD, Direction.ENTRY, at(2, 0))
    exit_, wallet = delta.tap(wallet, CARD, Direction.EXIT, at(2, 30))
    assert exit_.fare == 400  # tiny.toml: the promotional A<->D fare, off-peak
    await ingest(store, processor, entry, exit_)
    async with sessions() as session:
        assert {t.reconciled for t in (await session.execute(select(TapRow))).scalars()} == {"ok"}
        trip = (await session.execute(select(TripRow))).scalar_one()
        assert (trip.state, trip.entry_station, trip.exit_station, trip.fare) == ("complete", 1, 4, 400)
        phone = await session.get(PhoneRow, f"{CARD:016x}")
        assert phone is not None and phone.balance == 4600 and phone.counter == exit_.counter_after
        entries = (await session.execute(select(LedgerEntryRow).order_by(LedgerEntryRow.id))).scalars().all()
        assert [(e.kind, e.tap_id) for e in entries] == [("opening", entry.tap_id), ("fare", exit_.tap_id)]
        positions = await audit.wallet_positions(session)
        assert positions[f"{CARD:016x}"] == (4600, exit_.counter_after)  # the postings sum to the wallet
        assert await audit.account_totals(session) == {
            "issuance": -5000, "wallet": 4600, "revenue": 400, "suspense": 0, "undelivered": 0}
        assert await audit.unbalanced_entries(session) == []
        assert await audit.invalid_trips(session) == []
        assert (await session.execute(select(AlarmRow))).scalars().all() == []


async def test_reconciliation_catches_a_wrong_fare(migrated: Any) -> None:
    sessions, store, processor = await setup(migrated)
    alpha, delta = SimGate(1), SimGate(4)
    wallet = new_phone(CARD)
    entry, wallet = alpha.tap(wallet, CARD, Direction.ENTRY, at(2, 0))
    honest, _ = delta.tap(wallet, CARD, Direction.EXIT, at(2, 30))
    lying, _ = delta.tap(  # the same tap reported again, with a fare it did not charge
        wallet,
        CARD,
        Direction.EXIT,
        at(2, 30),
        seq=honest.seq,
        fare=honest.fare + 100,
        balance_after=honest.balance_after - 100,
    )
    await ingest(store, processor, entry, lying)
    async with sessions() as session:
        alarm = (await session.execute(select(AlarmRow))).scalar_one()
        tap = await session.get(TapRow, lying.tap_id)
    assert alarm.kind == "wrong_fare" and alarm.tap_id == lying.tap_id
    assert "fare: gate 500, backend 400" in alarm.detail
    assert tap is not None and tap.reconciled == "wrong_fare"


async def test_reconciliation_catches_a_cloned_phone_and_can_deny_list_it(migrated: Any) -> None:
    blocked: list[list[str]] = []

    async def on_block(cards: list[str], reason: str) -> None:
        blocked.append(cards)

    sessions, store, processor = await setup(migrated, auto_denylist=True)
    processor.on_block = on_block
    alpha, bravo = SimGate(1), SimGate(2)
    original = new_phone(CARD)
    clone = original  # the wallet bytes copied to a second phone
    first, _ = alpha.tap(original, CARD, Direction.ENTRY, at(2, 0))
    second, _ = bravo.tap(clone, CARD, Direction.ENTRY, at(2, 5))
    assert first.allowed and second.allowed  # each gate alone cannot tell
    await ingest(store, processor, first, second)
    async with sessions() as session:
        alarms = (await session.execute(select(AlarmRow))).scalars().all()
    # both taps wrote the wallet from the same counter: each is flagged, naming the other
    assert sorted((a.kind, a.tap_id, a.severity) for a in alarms) == [
        ("counter_reused", first.tap_id, "critical"),
        ("counter_reused", second.tap_id, "critical"),
    ]
    assert second.tap_id in next(a.detail for a in alarms if a.tap_id == first.tap_id)
    assert blocked == [[f"{CARD:016x}"]]


async def test_a_balance_jump_is_flagged(migrated: Any) -> None:
    sessions, store, processor = await setup(migrated, reconcile=False)
    alpha, delta = SimGate(1), SimGate(4)
    wallet = new_phone(CARD, balance=5000)
    entry, wallet = alpha.tap(wallet, CARD, Direction.ENTRY, at(2, 0))
    # the next tap reads the counter the entry wrote, but a balance it never left (a doctored wallet)
    exit_, _ = delta.tap(wallet, CARD, Direction.EXIT, at(2, 30), balance_before=9000, balance_after=8600)
    await ingest(store, processor, entry, exit_)
    async with sessions() as session:
        alarm = (await session.execute(select(AlarmRow))).scalar_one()
    assert (alarm.kind, alarm.tap_id) == ("balance_jump", exit_.tap_id)
    assert "the previous tap left 5000" in alarm.detail


async def test_an_applied_action_leaves_the_pending_list(migrated: Any) -> None:
    sessions, store, processor = await setup(migrated)
    applied: list[bool] = []

    async def on_applied() -> None:
        applied.append(True)

    processor.on_action_applied = on_applied
    async with sessions.begin() as session:
        action = ActionRow(
            card_id=f"{CARD:016x}", topup=1000, unblock=False, state="pending", created_at=datetime.now(UTC)
        )
        session.add(action)
    alpha = SimGate(1)
    # the gate applied the action: fare_core's topup, the report carrying the action's id
    tap, _ = alpha.tap(
        new_phone(CARD, balance=100), CARD, Direction.ENTRY, at(2, 0), topup=1000, action_id=action.id
    )
    assert tap.topup_applied == 1000
    tap = type(tap).model_validate_json(encode(tap))
    await ingest(store, processor, tap)
    async with sessions() as session:
        row = await session.get(ActionRow, action.id)
        stored = await session.get(TapRow, tap.tap_id)
    assert row is not None and (row.state, row.applied_tap_id) == ("applied", tap.tap_id)
    assert applied == [True]
    assert stored is not None and stored.reconciled == "ok"


async def test_unconfirmed_write_is_settled_by_the_next_tap(migrated: Any) -> None:
    """A gate that could not learn whether its write landed flags the tap UNCONFIRMED with the values
    the write would have made. The phone's next tap settles it, and never as a clone."""
    from fare_core import Flag, Reason

    sessions, store, processor = await setup(migrated, auto_denylist=True)
    alpha, delta = SimGate(1), SimGate(4)
    landed_card, lost_card = CARD, CARD + 1
    for card in (landed_card, lost_card):
        wallet = new_phone(card, balance=5000)
        entry, written = alpha.tap(wallet, card, Direction.ENTRY, at(2, 0))
        unconfirmed = with_mac(entry.model_copy(update={  # the gate rewrites the row, under its MAC
            "allowed": False, "reason": Reason.READ_FAILED, "flags": entry.flags | Flag.UNCONFIRMED}),
            alpha.mac_key)
        await ingest(store, processor, unconfirmed)
        # the write landed on one phone, not on the other: the next tap reads what the phone holds
        after = written if card == landed_card else wallet
        nxt, _ = (delta.tap(after, card, Direction.EXIT, at(2, 30)) if card == landed_card
                  else alpha.tap(after, card, Direction.ENTRY, at(2, 1)))
        await ingest(store, processor, nxt)
        if card == landed_card:
            landed_exit = nxt
    async with sessions() as session:
        states = {t.tap_id: t.reconciled for t in (await session.execute(select(TapRow))).scalars()}
        # alpha's taps: 1 the landed phone's entry, 2 the lost phone's entry, 3 its second try
        assert (states["1-1:1"], states["1-1:2"]) == ("unconfirmed_landed", "unconfirmed_not_landed")
        assert "counter_reused" not in " ".join(v or "" for v in states.values())
        assert (await session.execute(select(AlarmRow))).scalars().all() == []
        landed = await session.get(PhoneRow, f"{landed_card:016x}")
        # the settled write and the exit are both in the ledger; the lost one went back out of suspense
        assert landed is not None and landed.counter == landed_exit.counter_after
        entries = (await session.execute(select(LedgerEntryRow).order_by(LedgerEntryRow.id))).scalars().all()
        assert [(e.kind, e.tap_id) for e in entries if e.card_id == f"{landed_card:016x}"] == [
            ("opening", "1-1:1"), ("fare", "4-1:1")]  # an entry of fare 0 moves nothing: no entry
        assert (await audit.account_totals(session))["suspense"] == 0
        trip = (await session.execute(
            select(TripRow).where(TripRow.card_id == f"{landed_card:016x}"))).scalar_one()
        assert (trip.state, trip.entry_tap_id, trip.exit_tap_id) == ("complete", "1-1:1", "4-1:1")


async def test_a_bus_boarding_is_a_whole_trip(migrated: Any) -> None:
    sessions, store, processor = await setup(migrated)
    bus, alpha, delta = SimGate(50), SimGate(1), SimGate(4)  # tiny.toml: stop 50 is on the flat bus network
    wallet = new_phone(CARD, balance=5000)
    board, wallet = bus.tap(wallet, CARD, Direction.ENTRY, at(2, 0))
    entry, wallet = alpha.tap(wallet, CARD, Direction.ENTRY, at(2, 20))
    exit_, wallet = delta.tap(wallet, CARD, Direction.EXIT, at(2, 50))
    await ingest(store, processor, board, entry, exit_)
    async with sessions() as session:
        trips = (await session.execute(select(TripRow).order_by(TripRow.id))).scalars().all()
        assert [(t.state, t.entry_station, t.exit_station, t.fare) for t in trips] == [
            ("complete", 50, 50, board.fare), ("complete", 1, 4, exit_.fare)]
        assert board.fare > 0


async def test_consecutive_taps_in_one_batch_leave_no_gap(migrated: Any) -> None:
    """A known phone's next taps arriving together read the counters each other wrote: all `ok`."""
    sessions, store, processor = await setup(migrated)
    alpha, delta = SimGate(1), SimGate(4)
    first, wallet = alpha.tap(new_phone(CARD, balance=5000), CARD, Direction.ENTRY, at(2, 0))
    await ingest(store, processor, first)
    exit_, wallet = delta.tap(wallet, CARD, Direction.EXIT, at(2, 30))
    again, wallet = delta.tap(wallet, CARD, Direction.ENTRY, at(3, 0))
    await ingest(store, processor, exit_, again)
    async with sessions() as session:
        assert {t.reconciled for t in (await session.execute(select(TapRow))).scalars()} == {"ok"}
