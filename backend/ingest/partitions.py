"""The taps table's partitions on PostgreSQL: one per month of service days, cut where a service day
starts (ledger.ServiceDay: local time shifted back by the day's start), plus a default partition.

Why months and not days: every query that cannot be pruned (a tap by id, a gate's progress) probes each
partition's index, and PostgreSQL plans every partition it cannot prune; a city's five years are 60
monthly partitions against 1,800 daily ones. A report over a day or a month touches one partition.

Why a default partition: a tap is never refused for its date (a gate whose clock says 1999 is still
stored, in `taps_default`, and reconciled like any other). `ensure` creates the partitions from last
month to `AHEAD` months after today, and one for each month that has rows in the default partition (the
migration, then every ingest worker at its start and every few hours): those rows are moved into the new
partition in the same transaction (PostgreSQL refuses to attach a partition whose rows sit in the
default one). A gate whose clock is years off costs one partition for its month, not every month since.

The partitions live in a schema of their own, `taps_partitions`, named after the schema of their table
(`public_taps_2026_12`): the application's schema then holds exactly the tables backend/tables.py
declares, which the migrations are tested against (tests/backend/test_migrations.py), and several
schemas of one database (the tests' own) never clash. Dropping the taps table drops its partitions.
Concurrent callers (several workers starting) are serialised by a transaction-level advisory lock.

SQLite keeps a plain table: nothing here runs there.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..ledger import ServiceDay

log = logging.getLogger("faregate.ingest.partitions")

TABLE = "taps"
SCHEMA = "taps_partitions"
AHEAD = 2  # months of partitions made in advance
LOCK_KEY = 0x7A9_5EED  # pg_advisory_xact_lock: one ensure() at a time per database


def month_start(day: ServiceDay, month: date) -> datetime:
    """The UTC instant the first service day of `month` begins."""
    local_midnight = datetime.combine(month.replace(day=1), time(), tzinfo=UTC)
    return local_midnight + timedelta(minutes=day.day_start_min - day.utc_offset_min)


def next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def months(first: date, last: date) -> list[date]:
    current, found = first.replace(day=1), []
    while current <= last:
        found.append(current)
        current = next_month(current)
    return found


def name(schema: str, month: date | None) -> str:
    """A partition's name (unqualified, in SCHEMA): the taps table's schema, then the month or default;
    a schema name too long for PostgreSQL's 63-byte names is cut and completed with its hash."""
    if len(schema) > 45:
        schema = schema[:36] + "_" + hashlib.sha256(schema.encode()).hexdigest()[:8]
    return f"{schema}_taps_" + ("default" if month is None else f"{month.year:04d}_{month.month:02d}")


def _exists(connection: Connection, table: str) -> bool:
    found = connection.execute(
        text("SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
             "WHERE c.relname = :t AND n.nspname = :s"), {"t": table, "s": SCHEMA})
    return found.first() is not None


def ensure(connection: Connection, day: ServiceDay, today: date | None = None,
           parent: str = TABLE) -> list[str]:
    """Create the default partition and every missing monthly partition from last month to AHEAD months
    after `today`, and one for each month with rows in the default partition (moving them into it);
    returns the names created. Idempotent."""
    today = today or day.of(datetime.now(UTC))
    connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
    connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
    schema = str(connection.execute(text("SELECT current_schema()")).scalar())
    created = []
    default = f"{SCHEMA}.{name(schema, None)}"
    if not _exists(connection, name(schema, None)):
        connection.execute(text(f"CREATE TABLE {default} PARTITION OF {parent} DEFAULT"))
        created.append(default)
    last = today
    for _ in range(AHEAD):
        last = next_month(last.replace(day=1))
    wanted = set(months(today.replace(day=1) - timedelta(days=1), last))
    # and the months of whatever sits in the default partition: a stray from a gate whose clock is years
    # off gets its own month's partition, not every month in between (the migration's copy lands here)
    shift = day.utc_offset_min - day.day_start_min
    strays = connection.execute(text(
        "SELECT DISTINCT date_trunc('month', (time AT TIME ZONE 'UTC') + make_interval(mins => :shift))"
        f"::date FROM {default}"), {"shift": shift}).scalars()
    wanted.update(month for month in strays if isinstance(month, date))
    for month in sorted(wanted):
        if _exists(connection, name(schema, month)):
            continue
        table = f"{SCHEMA}.{name(schema, month)}"
        start, end = month_start(day, month), month_start(day, next_month(month))
        bounds = {"start": start, "end": end}
        stray = connection.execute(
            text(f"SELECT 1 FROM {default} WHERE time >= :start AND time < :end LIMIT 1"), bounds).first()
        if stray is None:
            connection.execute(text(
                f"CREATE TABLE {table} PARTITION OF {parent} FOR VALUES FROM ('{start.isoformat()}') "
                f"TO ('{end.isoformat()}')"))
        else:  # rows of this month went to the default partition: move them into the new one
            connection.execute(text(f"CREATE TABLE {table} (LIKE {parent} INCLUDING DEFAULTS)"))
            connection.execute(text(
                f"WITH moved AS (DELETE FROM {default} WHERE time >= :start AND time < :end RETURNING *) "
                f"INSERT INTO {table} SELECT * FROM moved"), bounds)
            connection.execute(text(
                f"ALTER TABLE {parent} ATTACH PARTITION {table} FOR VALUES FROM ('{start.isoformat()}') "
                f"TO ('{end.isoformat()}')"))
        created.append(table)
    return created


EVERY_S = 6 * 3600.0  # a running worker makes the coming months' partitions this often


async def maintain(sessions: async_sessionmaker[AsyncSession], day: ServiceDay, stop: asyncio.Event) -> None:
    """Every ingest worker, at its start and every EVERY_S: `ensure` on PostgreSQL (nothing on SQLite).
    A failure is logged and tried again at the next turn: taps then land in the default partition."""
    while not stop.is_set():
        try:
            async with sessions.begin() as session:
                if session.bind is not None and session.bind.dialect.name == "postgresql":
                    connection = await session.connection()
                    made = await connection.run_sync(lambda sync: ensure(sync, day))
                    if made:
                        log.info("taps partitions created: %s", ", ".join(made))
        except Exception as error:  # never stops the ingest
            log.warning("taps partitions not checked: %s", error)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(EVERY_S):
                await stop.wait()
