"""Arbitrary payloads on a gate's own taps topic, at a running ingest on a real broker and database:
after each one, the gate's next good tap is stored. One message must never stop the ingest.

The ingest runs on its own event loop in a thread, so hypothesis drives the test synchronously (and
can shrink a failing payload): publish the hostile payload, publish a good tap, wait for its row.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic_core
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy import select

from backend.db import make_engine, make_sessionmaker
from backend.ingest import authn
from backend.ingest.worker import IngestWorker
from backend.migrate import upgrade
from backend.tables import AlarmRow, DeadLetterRow
from faregate.simgate import SimGate, SimUplink, development_mac_key, tap_payload
from protocol.mqtt import TapMessage, Topics
from tests.backend.conftest import MOSQUITTO_URL, BrokerInfo, Database, make_settings, require_service

pytestmark = [pytest.mark.security, pytest.mark.mosquitto]

KEY = development_mac_key(12, 3)


class Harness:
    """An ingest worker on SQLite and the shared Mosquitto, on an event loop of its own thread."""

    def __init__(self, tmp_path: Path, alarm: tuple[int, float]) -> None:
        self.path = tmp_path / "fuzz.db"
        database = Database("sqlite", f"sqlite+aiosqlite:///{self.path}", None)
        broker = BrokerInfo("mosquitto", MOSQUITTO_URL, "5", f"g{uuid.uuid4().hex[:8]}")
        self.settings = make_settings(database, broker)
        self.topics = Topics(self.settings.mqtt_prefix)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzzed ingest", daemon=True)
        self.thread.start()
        self.stop = asyncio.Event()
        self.alarm = alarm
        self.engine: Any = None
        self.task: asyncio.Task[None] | None = None
        self.worker: IngestWorker | None = None
        self.call(self._start())
        self.gate = SimUplink(broker.url, self.topics, [SimGate(12, 3)], version=broker.version)
        self.gate.start()
        self.gate.wait_ready()
        self.seq = 0
        self.genuine: set[str] = set()  # ids in the forged range whose content verifies (slow-path oracle)

    def call(self, coroutine: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _start(self) -> None:
        self.engine = make_engine(self.settings)
        await upgrade(self.engine, self.settings)
        sessions = make_sessionmaker(self.engine)
        self.worker = IngestWorker(self.settings, sessions, dead_letter_alarm=self.alarm)
        self.task = asyncio.create_task(self.worker.run(self.stop))
        await asyncio.wait_for(self.worker.connected.wait(), 10)
        await asyncio.sleep(0.2)  # SUBACK

    async def _stop(self) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 10)
        await self.engine.dispose()

    def close(self) -> None:
        self.gate.close()
        try:
            self.call(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.path, timeout=10) as connection:
            return connection.execute(sql, args).fetchall()

    def publish(self, payload: bytes) -> None:
        self.gate.publish(self.topics.taps("12-3"), payload)

    def no_forged_tap_is_stored(self, payload: bytes) -> None:
        """After `payload` was handled (the next good tap is stored): every stored tap in the range the
        hostile payloads use (seq >= FORGED) is one whose parsed content carries its gate's valid MAC,
        judged independently of the ingest's fast path (each element re-serialised and verified)."""
        self.genuine |= genuine_ids(payload)
        stored = {row[0] for row in self.query("SELECT tap_id FROM taps WHERE seq >= ?", FORGED)}
        assert stored <= self.genuine, f"forged tap(s) stored: {sorted(stored - self.genuine)}"

    def good_tap_is_stored(self, timeout: float = 15.0) -> None:
        """Publish the gate's next good tap and wait until its row is in the database."""
        self.seq += 1
        self.publish(tap_payload(12, 3, self.seq, key=KEY))
        deadline = time.monotonic() + timeout
        while not self.query("SELECT 1 FROM taps WHERE tap_id = ?", f"12-3:{self.seq}"):
            assert self.task is not None and not self.task.done(), "the ingest stopped"
            assert time.monotonic() < deadline, f"good tap {self.seq} not stored within {timeout} s"
            time.sleep(0.005)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    require_service("Mosquitto", 1883)
    running = Harness(tmp_path, alarm=(5, 60.0))
    try:
        yield running
    finally:
        running.close()


FORGED = 1_000_000  # hostile payloads use seqs from here up; the good taps stay far below
KEYS = authn.gate_keys(None)


def genuine_ids(payload: bytes) -> set[str]:
    """The tap ids of the elements of `payload` whose parsed content verifies under the gate's key."""
    try:
        value = pydantic_core.from_json(payload)
    except ValueError:
        return set()
    ids = set()
    for element in value if isinstance(value, list) else [value]:
        try:
            tap = TapMessage.model_validate_json(json.dumps(element, separators=(",", ":")))
        except (ValidationError, TypeError, ValueError):
            continue
        if authn.refusal(KEYS, tap) is None:
            ids.add(tap.tap_id)
    return ids


def _good_tap(seq: int) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(tap_payload(12, 3, seq, key=KEY))
    return value


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)


@st.composite
def broken_tap(draw: st.DrawFn) -> bytes:
    """A tap that looks right with one field removed, replaced by any JSON value, or one added."""
    tap = _good_tap(draw(st.integers(1_000_000, 2_000_000)))  # far above the good taps' seqs
    field = draw(st.sampled_from(sorted(tap)))
    how = draw(st.sampled_from(["drop", "replace", "add"]))
    if how == "drop":
        del tap[field]
    elif how == "replace":
        tap[field] = draw(JSON)
    else:
        tap[draw(st.text(min_size=1, max_size=10))] = draw(JSON)
    return json.dumps(tap).encode()


def _nested(depth: int, opener: bytes, closer: bytes) -> bytes:
    return opener * depth + closer * depth


PAYLOADS = st.one_of(
    st.binary(max_size=2048),
    st.builds(_nested, st.integers(1, 50_000), st.sampled_from([b"[", b'{"a":[']), st.just(b"]")),
    st.integers(0, 2_000).map(lambda n: b"[" + b",".join([b"{}"] * n) + b"]"),
    st.integers(0, 2_000).map(lambda n: b"[" + b",".join([b"1"] * n) + b"]"),
    JSON.map(lambda value: json.dumps(value).encode()),
    broken_tap(),
    st.lists(broken_tap(), min_size=1, max_size=20).map(lambda taps: b"[" + b",".join(taps) + b"]"),
)


def test_after_any_payload_the_next_good_tap_is_stored(harness: Harness) -> None:
    @settings(
        max_examples=250,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @example(_nested(1_000, b"[", b"]"))  # the message that stopped tap storage for good
    @example(b"[" + b"0" * (3 * 1024 * 1024) + b"]")  # megabytes, refused on size alone
    @given(PAYLOADS)
    def one(payload: bytes) -> None:
        harness.publish(payload)
        harness.good_tap_is_stored()
        harness.no_forged_tap_is_stored(payload)

    one()
    assert harness.worker is not None and harness.worker.stats["dead_lettered"] > 0


@st.composite
def mixed_array(draw: st.DrawFn) -> bytes:
    """Genuine and forged taps (a genuine tap's MAC on other content) in one array, laid out to make a
    cut on `},{` misalign: genuine taps hidden in rejected elements or in a duplicate key's discarded
    value, whitespace between elements."""
    def genuine(seq: int) -> bytes:
        return tap_payload(12, 3, seq, key=KEY)

    def forged(seq: int) -> bytes:
        tap = json.loads(genuine(seq))
        tap.update(seq=seq + 500_000, tap_id=f"12-3:{seq + 500_000}", fare=0)  # the genuine MAC kept
        return json.dumps(tap, separators=(",", ":")).encode()

    parts = []
    for _ in range(draw(st.integers(1, 8))):
        seq = draw(st.integers(FORGED, FORGED + 400_000))
        kind = draw(st.sampled_from(["genuine", "forged", "hidden", "duplicate", "junk"]))
        if kind == "genuine":
            parts.append(genuine(seq))
        elif kind == "forged":
            parts.append(forged(seq))
        elif kind == "hidden":
            parts.append(b'{"z":[{},' + genuine(seq) + b",{}]}")
        elif kind == "duplicate":  # `fare` twice: the first value (discarded) holds a genuine tap
            cover = draw(st.sampled_from([genuine, forged]))(seq + 1)
            parts.append(b'{"fare":[{},' + genuine(seq) + b",{}]," + cover[1:])
        else:
            parts.append(draw(st.sampled_from([b"1", b'{"x":0}', b"[]", b'{"a":[[{},{}]]}'])))
    separators = draw(st.lists(st.sampled_from([b",", b",", b", ", b",\n", b" , "]),
                               min_size=len(parts), max_size=len(parts)))
    return b"[" + b"".join(p + sep for p, sep in zip(parts[:-1], separators, strict=False)) + parts[-1] + b"]"


def test_mixed_genuine_and_forged_arrays_store_only_the_genuine_taps(harness: Harness) -> None:
    real = tap_payload(12, 3, FORGED + 7, key=KEY)
    forged = json.loads(real)
    forged.update(seq=FORGED + 999, tap_id=f"12-3:{FORGED + 999}", fare=0)
    forgery = json.dumps(forged, separators=(",", ":")).encode()
    splice = b'[{"z":[{},' + real + b",{}]}," + forgery + b',1,{"x":0}]'

    @settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @example(splice)  # the reviewer's PoC: stored the forgery before the fix
    @given(mixed_array())
    def one(payload: bytes) -> None:
        harness.publish(payload)
        harness.good_tap_is_stored()
        harness.no_forged_tap_is_stored(payload)

    one()
    assert harness.query("SELECT count(*) FROM taps WHERE seq >= ?", FORGED)[0][0] > 0  # genuine ones stored


def test_a_huge_payload_is_dead_lettered_as_a_bounded_prefix_with_its_size_and_hash(harness: Harness) -> None:
    payload = b'{"tap_id":"' + b"x" * (10 * 1024 * 1024) + b'"}'  # 10 MB
    harness.publish(payload)
    harness.good_tap_is_stored()
    ((stored, size, digest, gate),) = harness.query(
        "SELECT length(payload), payload_size, payload_sha256, gate_id FROM dead_letters"
    )
    assert stored <= 4096
    assert (size, digest, gate) == (len(payload), hashlib.sha256(payload).hexdigest(), "12-3")


def test_dead_letters_from_one_gate_raise_one_alarm_per_window(harness: Harness) -> None:
    for n in range(12):  # five make an alarm (the harness's threshold); twelve still make one
        harness.publish(b"not a tap %d" % n)
    harness.good_tap_is_stored()

    async def alarms() -> list[AlarmRow]:
        async with make_sessionmaker(harness.engine)() as session:
            return list((await session.execute(select(AlarmRow))).scalars().all())

    async def dead() -> int:
        async with make_sessionmaker(harness.engine)() as session:
            return len((await session.execute(select(DeadLetterRow.id))).all())

    assert harness.call(dead()) == 12
    (alarm,) = [a for a in harness.call(alarms()) if a.kind == "dead_letters"]
    assert alarm.gate_id == "12-3" and "dead-lettered" in alarm.detail
