"""The taps table for a city's years: keyed by (tap_id, time), on PostgreSQL partitioned by service day
(monthly ranges, a default partition). One tap id still gets one row: a second tap under the same id at
another time (its gate's valid MAC, another day) is refused as a conflict, never stored beside the first."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from typing import Any

import pytest
from sqlalchemy import func, select, text

from backend.db import make_engine, make_sessionmaker
from backend.ingest import partitions
from backend.ingest.store import RawMessage, TapStore
from backend.ledger import ServiceDay
from backend.migrate import upgrade
from backend.tables import AlarmRow, DeadLetterRow, TapRow
from protocol.mqtt import Topics, encode
from tests.backend.conftest import POSTGRES_URL, Database, database, make_settings, make_tap, migrated

__all__ = ["database", "migrated"]

TOPICS = Topics("faregate")
BEIJING = ServiceDay(480, 240)  # the settings' defaults: UTC+8, the day starts at 04:00


def raw(tap: Any) -> RawMessage:
    return RawMessage(TOPICS.taps(tap.gate_id), encode(tap))


@pytest.mark.security
async def test_one_tap_id_at_another_time_is_a_conflict_not_a_second_row(migrated: Any) -> None:
    _database, _engine, sessions = migrated
    store = TapStore(sessions)
    first = make_tap(7, time=datetime(2026, 11, 22, 8, 0, 7, tzinfo=UTC))
    later = make_tap(7, time=datetime(2027, 3, 1, 9, 0, 0, tzinfo=UTC))  # same id, valid MAC, other month
    assert (await store.store([raw(first)])).stored == 1
    again = await store.store([raw(later)])
    assert (again.stored, again.dead_lettered) == (0, 1)
    assert (await store.store([raw(first)])).duplicates == 1  # the genuine resend is a duplicate still
    async with sessions() as session:
        rows = (await session.execute(select(TapRow.time).where(TapRow.tap_id == first.tap_id))).all()
        reasons = (await session.execute(select(DeadLetterRow.reason))).scalars().all()
        kinds = (await session.execute(select(AlarmRow.kind))).scalars().all()
    assert [row.time for row in rows] == [first.time]
    assert reasons == [f"tap_conflict: {first.tap_id}"] and kinds == ["tap_conflict"]


def test_month_bounds_follow_the_service_day() -> None:
    start = partitions.month_start(BEIJING, date(2026, 12, 1))
    assert start == datetime(2026, 11, 30, 20, 0, tzinfo=UTC)  # 04:00 in UTC+8 on 1 December
    assert BEIJING.of(start) == date(2026, 12, 1)
    assert BEIJING.of(start.replace(minute=0, hour=19)) == date(2026, 11, 30)
    assert partitions.months(date(2026, 11, 5), date(2027, 1, 1)) == [
        date(2026, 11, 1), date(2026, 12, 1), date(2027, 1, 1)]


@pytest.fixture
async def pg_migrated(pg_schema: str) -> AsyncIterator[tuple[Database, Any, Any]]:
    database = Database("postgres", POSTGRES_URL, pg_schema)
    settings = make_settings(database)
    engine = make_engine(settings)
    try:
        await upgrade(engine, settings)
        yield database, engine, make_sessionmaker(engine)
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_postgresql_partitions_by_service_day_and_moves_strays(pg_migrated: Any) -> None:
    database, engine, sessions = pg_migrated
    store = TapStore(sessions)
    month = datetime.now(UTC).replace(day=15)
    today = make_tap(1, time=month.replace(microsecond=0))
    old = make_tap(2, time=datetime(2020, 1, 10, 12, 0, tzinfo=UTC))  # a gate's clock years behind
    result = await store.store([raw(today), raw(old)])
    assert result.stored == 2

    async def partition_of(tap_id: str) -> str:
        async with engine.connect() as connection:
            return str((await connection.execute(
                text("SELECT tableoid::regclass::text FROM taps WHERE tap_id = :t"), {"t": tap_id})).scalar())

    schema = database.schema or "public"
    this_month = partitions.name(schema, BEIJING.of(today.time).replace(day=1))
    assert (await partition_of(today.tap_id)).endswith(this_month)
    assert (await partition_of(old.tap_id)).endswith(partitions.name(schema, None))  # the default
    async with engine.begin() as connection:
        created = await connection.run_sync(lambda sync: partitions.ensure(sync, BEIJING))
    assert any(name.endswith(partitions.name(schema, date(2020, 1, 1))) for name in created)
    assert (await partition_of(old.tap_id)).endswith(partitions.name(schema, date(2020, 1, 1)))
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(TapRow)) == 2
        assert (await session.get(TapRow, old.tap_id)) is not None  # the ORM still finds a tap by its id
