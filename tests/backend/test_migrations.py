"""The Alembic history builds exactly the schema tables.py declares, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, select

from backend import audit
from backend.db import make_engine, make_sessionmaker
from backend.migrate import alembic_config
from backend.processor import Processor
from backend.tables import ActionRow, Base, FareTableRow, LedgerEntryRow, PhoneRow, TapRow, TripRow
from fare_core.reasons import Direction
from faregate.simgate import SimGate, new_phone, tiny_artefact
from tests.backend.conftest import Database, make_settings

CARD = 0x0123456789ABCDEF


def at(hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, 24, hour, minute, tzinfo=UTC)


async def add_fare_table(sessions: Any) -> None:
    async with sessions.begin() as session:
        session.add(FareTableRow(version=1, name="tiny", rules="", artefact=tiny_artefact(),
                                 checksum="00" * 32, created_at=at(0), activate_at=at(0)))


async def test_migrations_match_the_models(migrated: Any) -> None:
    _database, engine, _sessions = migrated
    async with engine.connect() as connection:
        drift = await connection.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
        )
    assert drift == []


async def _alembic(engine: Any, settings: Any, verb: str, revision: str) -> None:
    config = alembic_config(settings)

    def run(connection: Connection) -> None:
        config.attributes["connection"] = connection
        getattr(command, verb)(config, revision)

    async with engine.begin() as connection:
        await connection.run_sync(run)


async def test_0007_rederives_old_data_under_the_ledger_and_downgrades(database: Database) -> None:
    """A database at 0006 with the old one-row-per-tap ledger, trips and phone heads: 0007 keeps the raw
    taps, drops what was derived under the old rules, posts each live action's source, and the processor
    then derives entries, trips and heads again; the downgrade brings the old table back."""
    settings = make_settings(database)
    engine = make_engine(settings)
    try:
        await _alembic(engine, settings, "upgrade", "0006")
        alpha, delta = SimGate(1), SimGate(4)
        entry, wallet = alpha.tap(new_phone(CARD, balance=2000), CARD, Direction.ENTRY, at(2, 0))
        exit_, wallet = delta.tap(wallet, CARD, Direction.EXIT, at(2, 30))
        card, now = f"{CARD:016x}", datetime.now(UTC)
        old = sa.MetaData()
        await _insert_old_rows(engine, old, card, now, entry, exit_)
        await _alembic(engine, settings, "upgrade", "head")
        sessions = make_sessionmaker(engine)
        async with sessions() as session:
            assert {t.reconciled for t in (await session.execute(select(TapRow))).scalars()} == {None}
            assert (await session.execute(select(TripRow))).scalars().all() == []
            phone = await session.get(PhoneRow, card)
            assert phone is not None and (phone.balance, phone.last_tap_id, phone.status) == (0, None, "lost")
            kinds = {a.id: a.kind for a in (await session.execute(select(ActionRow))).scalars()}
            assert sorted(kinds.values()) == ["topup", "transfer"]
            posted = (await session.execute(select(LedgerEntryRow))).scalars()
            sources = {(e.kind, e.action_id) for e in posted}
            assert sources == {("transfer_out", 1), ("payment", 2)}
        await add_fare_table(sessions)
        processor = Processor(make_settings(database, reconcile=False), sessions)
        while await processor.run_once():
            pass
        async with sessions() as session:
            trip = (await session.execute(select(TripRow))).scalar_one()
            assert (trip.state, trip.fare) == ("complete", 400)
            phone = await session.get(PhoneRow, card)
            assert phone is not None and (phone.balance, phone.counter) == (1600, exit_.counter_after)
            assert await audit.unbalanced_entries(session) == []
            totals = await audit.account_totals(session)
            # 1000 moved from the lost phone and 500 paid, both waiting for the new phone's first tap
            assert (totals["revenue"], totals["undelivered"]) == (400, 1500)
        await _alembic(engine, settings, "downgrade", "0006")
        async with engine.connect() as connection:
            names = await connection.run_sync(lambda sync: sa.inspect(sync).get_table_names())
            count = (await connection.execute(sa.text("SELECT count(*) FROM ledger"))).scalar()
            pending = (await connection.execute(
                sa.text("SELECT count(*) FROM taps WHERE reconciled IS NULL"))).scalar()
        assert "ledger" in names and "ledger_entries" not in names and "postings" not in names
        assert (count, pending) == (0, 2)
        await _alembic(engine, settings, "upgrade", "head")  # and up again
    finally:
        await engine.dispose()


async def _insert_old_rows(engine: Any, old: sa.MetaData, card: str, now: datetime, *taps: Any) -> None:
    """What a 0006 database held: the taps processed, a ledger row each, a trip, the phone's head, a
    lost phone's transfer action and a paid top-up."""
    async with engine.begin() as connection:
        await connection.run_sync(old.reflect)
        t = old.tables
        for tap in taps:
            row = {c.name: getattr(tap, c.name) for c in t["taps"].columns if hasattr(tap, c.name)}
            row.update(card_id=card, gate_id=tap.gate_id, wallet_before=bytes.fromhex(tap.wallet_before),
                       received_at=now, reconciled="ok", trip_id=1, direction=int(tap.direction),
                       mode=int(tap.mode), reason=int(tap.reason), flags=int(tap.flags))
            await connection.execute(t["taps"].insert().values(**row))
            await connection.execute(t["ledger"].insert().values(
                card_id=card, kind="tap", tap_id=tap.tap_id, time=tap.time, amount=-tap.fare,
                balance_before=tap.balance_before, balance_after=tap.balance_after,
                counter_before=tap.counter_before, counter_after=tap.counter_after))
        await connection.execute(t["trips"].insert().values(
            card_id=card, entry_tap_id=taps[0].tap_id, exit_tap_id=taps[1].tap_id, fare=400,
            state="complete"))
        await connection.execute(t["phones"].insert().values(
            card_id=card, status="lost", status_reason="", balance=0, counter=taps[1].counter_after,
            last_tap_id=taps[1].tap_id, replaced_by="00000000cafef00d"))
        await connection.execute(t["actions"].insert().values(
            id=1, card_id="00000000cafef00d", topup=1000, unblock=False, state="pending", created_at=now,
            created_by=f"commuter:{card}", reason=f"balance moved from lost phone {card}"))
        await connection.execute(t["actions"].insert().values(
            id=2, card_id="00000000cafef00d", topup=500, unblock=False, state="pending", created_at=now,
            created_by="payment-provider", reason="payment pi_x"))
        await connection.execute(t["payment_intents"].insert().values(
            reference="pi_" + "0" * 32, card_id="00000000cafef00d", amount=500, state="confirmed",
            created_at=now, action_id=2))
