"""Ledger, trips and reconciliation on taps made by the real fare_core (honest, wrong-fare, cloned)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from backend.ingest.store import RawMessage, TapStore
from backend.processor import Processor
from backend.tables import AlarmRow, FareTableRow, LedgerRow, PhoneRow, TapRow, TripRow
from fare_core.reasons import Direction
from gate.messages import TapMessage, Topics, encode
from tests.backend.conftest import make_settings
from tests.backend.simgate import SimGate, at, new_phone, tiny_artefact

CARD = 0x0123456789ABCDEF


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
        ledger = (await session.execute(select(LedgerRow).order_by(LedgerRow.id))).scalars().all()
        assert [entry.balance_after for entry in ledger][-1] == 4600
        assert ledger[-1].balance_before == ledger[-2].balance_after  # the chain links
        assert (await session.execute(select(AlarmRow))).scalars().all() == []


async def test_reconciliation_catches_a_wrong_fare(migrated: Any) -> None:
    sessions, store, processor = await setup(migrated)
    alpha, delta = SimGate(1), SimGate(4)
    wallet = new_phone(CARD)
    entry, wallet = alpha.tap(wallet, CARD, Direction.ENTRY, at(2, 0))
    honest, _ = delta.tap(wallet, CARD, Direction.EXIT, at(2, 30))
    delta.seq -= 1
    lying, _ = delta.tap(
        wallet,
        CARD,
        Direction.EXIT,
        at(2, 30),
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
