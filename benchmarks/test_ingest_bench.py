"""pytest-benchmark: the ingest's store step (validate + insert + advance committed_seq, one
transaction) per batch of 2,000 taps on SQLite, beside the floor of the same rows written by a plain
sqlite3 executemany with no validation and no SQLAlchemy, measured in the same run.

Run: python3 -m pytest benchmarks/test_ingest_bench.py --benchmark-only
Rows: "single" = 2,000 messages of one tap (live traffic), "array" = 40 messages of 50 taps (a gate's
backlog), "floor" = the plain executemany. Each round stores taps never seen before (new seqs), so
it measures inserts, not the duplicate path. Compare rows of one run: the machine is shared.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from backend.config import Settings
from backend.db import make_engine, make_sessionmaker
from backend.ingest.store import RawMessage, TapStore, parse, tap_row
from backend.migrate import upgrade
from backend.tables import TapRow
from faregate.simgate import tap_payload
from protocol.mqtt import TapMessage, Topics, encode_taps

BATCH = 2_000
GATES = 20
TOPICS = Topics("bench")
_seq = itertools.count(1)


def _fresh_batch(per_message: int) -> list[RawMessage]:
    """BATCH new taps, spread over GATES gates, `per_message` taps in each message."""
    per_gate = BATCH // GATES
    seqs = [next(_seq) for _ in range(per_gate)]
    messages = []
    for gate in range(GATES):
        topic = TOPICS.taps(f"{1000 + gate // 8}-{gate % 8}")
        payloads = [tap_payload(1000 + gate // 8, gate % 8, seq) for seq in seqs]
        for start in range(0, per_gate, per_message):
            messages.append(RawMessage(topic, encode_taps(payloads[start:start + per_message])))
    return messages


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[asyncio.AbstractEventLoop, TapStore]]:
    path = tmp_path_factory.mktemp("ingest") / "bench.db"
    settings = Settings(environment="development", database_url=f"sqlite+aiosqlite:///{path}")
    loop = asyncio.new_event_loop()
    engine = make_engine(settings)
    loop.run_until_complete(upgrade(engine, settings))
    yield loop, TapStore(make_sessionmaker(engine))
    loop.run_until_complete(engine.dispose())
    loop.close()


@pytest.mark.parametrize("shape", ["single", "array"])
def test_store_batch(benchmark: Any, store: tuple[asyncio.AbstractEventLoop, TapStore], shape: str) -> None:
    loop, tap_store = store
    per_message = 1 if shape == "single" else 50

    def setup() -> tuple[tuple[list[RawMessage]], dict[str, Any]]:
        return (_fresh_batch(per_message),), {}

    def run(messages: list[RawMessage]) -> int:
        return loop.run_until_complete(tap_store.store(messages)).stored

    stored = benchmark.pedantic(run, setup=setup, rounds=15, iterations=1)
    assert stored == BATCH  # every tap new, none refused
    benchmark.extra_info["taps_per_round"] = BATCH


def test_floor_plain_executemany(benchmark: Any, tmp_path: Path,
                                 store: tuple[asyncio.AbstractEventLoop, TapStore]) -> None:
    """The same rows, already built, in one plain sqlite3 transaction: what the database alone costs
    (the same table and indexes, built from the model that the migrations are checked against)."""
    path = tmp_path / "floor.db"
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    engine_sql = [row[0] for row in _schema_of_taps()]
    for statement in engine_sql:
        connection.execute(statement)
    columns = [c.name for c in TapRow.__table__.columns]
    insert = (f"INSERT INTO taps ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)}) "
              "ON CONFLICT (tap_id, time) DO NOTHING")

    def setup() -> tuple[tuple[list[tuple[Any, ...]]], dict[str, Any]]:
        now = datetime.now(UTC)
        rows = []
        for message in _fresh_batch(50):
            for tap in parse(message):
                assert isinstance(tap, TapMessage)
                row = tap_row(tap, now)
                row["time"] = row["time"].replace(tzinfo=None).isoformat(" ")
                row["received_at"] = row["received_at"].replace(tzinfo=None).isoformat(" ")
                rows.append(tuple(row[c] for c in columns))
        return (rows,), {}

    def run(rows: list[tuple[Any, ...]]) -> int:
        connection.execute("BEGIN")
        count = connection.executemany(insert, rows).rowcount
        connection.execute("COMMIT")
        return count

    stored = benchmark.pedantic(run, setup=setup, rounds=15, iterations=1)
    connection.close()
    assert stored == BATCH


def _schema_of_taps() -> list[tuple[str]]:
    """CREATE TABLE and CREATE INDEX statements of the taps table, as the migrations made them."""
    from sqlalchemy.dialects import sqlite
    from sqlalchemy.schema import CreateIndex, CreateTable

    table = TapRow.__table__
    dialect = sqlite.dialect()
    statements = [(str(CreateTable(table).compile(dialect=dialect)),)]  # type: ignore[arg-type]
    statements += [(str(CreateIndex(index).compile(dialect=dialect)),) for index in table.indexes]
    return statements
