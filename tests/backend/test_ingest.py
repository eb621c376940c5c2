"""Ingest end to end through a real broker into a real database: idempotence, dead letters, gaps."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select

from backend.control import handle_control_messages
from backend.db import make_engine, make_sessionmaker
from backend.ingest.store import RawMessage
from backend.ingest.worker import IngestWorker
from backend.migrate import upgrade
from backend.tables import AlarmRow, DeadLetterRow, GateRow, TapRow
from fare_core.reasons import GateMode
from faregate.simgate import SimGate, SimUplink, development_mac_key
from protocol.mqtt import (
    MAX_TAPS_PER_MESSAGE,
    Committed,
    GateState,
    GateStatus,
    ResendRequest,
    Topics,
    encode,
    encode_taps,
    encode_with_mac,
    parse_gate_id,
)
from tests.backend.conftest import BrokerInfo, Database, make_settings, make_tap, wait_for


class Running:
    def __init__(self, settings: Any, sessions: Any, worker: IngestWorker) -> None:
        self.settings = settings
        self.sessions = sessions
        self.worker = worker
        self.topics = Topics(settings.mqtt_prefix)

    async def count(self, table: Any) -> int:
        async with self.sessions() as session:
            return int((await session.execute(select(func.count()).select_from(table))).scalar_one())


@pytest.fixture
async def ingest(database: Database, broker: BrokerInfo) -> AsyncIterator[Running]:
    settings = make_settings(database, broker)
    engine = make_engine(settings)
    await upgrade(engine, settings)
    sessions = make_sessionmaker(engine)

    async def control(messages: list[RawMessage]) -> None:
        await handle_control_messages(settings, sessions, messages)

    worker = IngestWorker(settings, sessions, on_other=control)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.wait_for(worker.connected.wait(), 10)
        await asyncio.sleep(0.2)  # SUBACK
        yield Running(settings, sessions, worker)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await engine.dispose()


async def gate_for(run: Running, broker: BrokerInfo, gate: str = "12-3") -> SimUplink:
    """The gate on its own uplink; the tests publish by hand what they need its journal to look like."""
    uplink = SimUplink(broker.url, run.topics, [SimGate(*parse_gate_id(gate))], version=broker.version)
    uplink.start()
    await asyncio.to_thread(uplink.wait_ready)
    return uplink


def committed_through(uplink: SimUplink, run: Running, gate: str = "12-3") -> int:
    messages = uplink.messages(run.topics.committed(gate))
    return max((Committed.model_validate_json(m).through_seq for m in messages), default=-1)


async def test_same_tap_twice_and_replayed_journal_store_once(ingest: Running, broker: BrokerInfo) -> None:
    gate = await gate_for(ingest, broker)
    try:
        taps = [make_tap(seq) for seq in range(1, 21)]
        topic = ingest.topics.taps("12-3")
        await asyncio.to_thread(gate.publish, topic, encode(taps[0]))
        await asyncio.to_thread(gate.publish, topic, encode(taps[0]))  # the same tap twice
        for tap in taps:  # then the whole journal...
            await asyncio.to_thread(gate.publish, topic, encode(tap))
        for tap in taps:  # ...replayed after a reconnect
            await asyncio.to_thread(gate.publish, topic, encode(tap))
        await wait_for(lambda: committed_through(gate, ingest) == 20)
        await wait_for(lambda: ingest.worker.stats["stored"] + ingest.worker.stats["duplicates"] == 42)
        assert await ingest.count(TapRow) == 20
        assert ingest.worker.stats["stored"] == 20
        assert ingest.worker.stats["duplicates"] == 22
        async with ingest.sessions() as session:
            row = (await session.execute(select(GateRow))).scalar_one()
        assert (row.gate_id, row.committed_seq, row.highest_seq) == ("12-3", 20, 20)
    finally:
        gate.close()


MALFORMED: list[tuple[str, bytes, str]] = [
    ("12-3", b"\xff\xfe not json", "invalid"),
    ("12-3", b"{}", "invalid"),
    ("12-3", json.dumps({**json.loads(encode(make_tap(5))), "fare": 2.5}).encode(), "fare"),
    ("12-3", json.dumps({**json.loads(encode(make_tap(5))), "extra": 1}).encode(), "extra"),
    ("12-3", json.dumps({**json.loads(encode(make_tap(5))), "card_id": "12"}).encode(), "card_id"),
    (
        "12-3",
        json.dumps({**json.loads(encode(make_tap(5))), "time": "2026-11-22T08:00:00+08:00"}).encode(),
        "UTC",
    ),
    ("99-1", encode(make_tap(5)), "topic of gate 99-1"),
    ("12-3", b"[]", "empty tap array"),
    ("12-3", b'[{"tap_id": "12-3:9"', "undecodable tap array"),
    ("12-3", b"[" + b",".join([encode(make_tap(9))] * (MAX_TAPS_PER_MESSAGE + 1)) + b"]", "at most"),
]


async def test_malformed_payloads_are_dead_lettered_and_the_worker_keeps_going(
    ingest: Running, broker: BrokerInfo
) -> None:
    gate = await gate_for(ingest, broker)
    try:
        for gate_id, payload, _ in MALFORMED:
            await asyncio.to_thread(gate.publish, ingest.topics.taps(gate_id), payload)
        await asyncio.to_thread(gate.publish, ingest.topics.taps("12-3"), encode(make_tap(1)))
        await wait_for(lambda: committed_through(gate, ingest) == 1)
        await wait_for(lambda: ingest.count(DeadLetterRow), timeout=5)
        await wait_for(lambda: ingest.worker.stats["dead_lettered"] == len(MALFORMED))
        async with ingest.sessions() as session:
            dead = (await session.execute(select(DeadLetterRow).order_by(DeadLetterRow.id))).scalars().all()
        assert len(dead) == len(MALFORMED)
        by_hash = {row.payload_sha256: row for row in dead}  # a long payload is kept as its prefix
        for gate_id, payload, needle in MALFORMED:
            row = by_hash[hashlib.sha256(payload).hexdigest()]
            assert row.payload == payload[:4096] and row.payload_size == len(payload)
            assert needle in row.reason
            assert row.topic == ingest.topics.taps(gate_id)
        assert await ingest.count(TapRow) == 1
    finally:
        gate.close()


async def test_a_tap_array_stores_its_valid_taps_and_dead_letters_only_its_bad_ones(
    ingest: Running, broker: BrokerInfo
) -> None:
    gate = await gate_for(ingest, broker)
    try:
        elements = [encode(make_tap(seq)) for seq in range(1, 11)]
        elements[3] = json.dumps({**json.loads(elements[3]), "fare": -1}).encode()  # seq 4: bad fare
        elements[6] = encode(make_tap(7, station_id=99, gate_no=1))  # seq 7: another gate's tap
        topic = ingest.topics.taps("12-3")
        await asyncio.to_thread(gate.publish, topic, encode_taps(elements))
        await wait_for(lambda: ingest.worker.stats["dead_lettered"] == 2)
        await wait_for(lambda: committed_through(gate, ingest) == 3)
        assert await ingest.count(TapRow) == 8
        assert ingest.worker.stats["received"] == 10
        async with ingest.sessions() as session:
            dead = (await session.execute(select(DeadLetterRow).order_by(DeadLetterRow.id))).scalars().all()
        reasons = sorted(row.reason for row in dead)
        assert "fare" in reasons[0] and "invalid tap" in reasons[0]
        assert "tap of gate 99-1 published on the topic of gate 12-3" in reasons[1]
        assert {json.loads(row.payload)["seq"] for row in dead} == {4, 7}  # each bad element kept whole
        # the gate sends the two again, correctly, as one array: nothing is stored twice
        await asyncio.to_thread(
            gate.publish, topic, encode_taps([encode(make_tap(4)), encode(make_tap(5)), encode(make_tap(7))])
        )
        await wait_for(lambda: committed_through(gate, ingest) == 10)
        assert await ingest.count(TapRow) == 10
        assert ingest.worker.stats["duplicates"] == 1
    finally:
        gate.close()


async def test_a_gap_in_the_sequence_asks_the_gate_to_resend(ingest: Running, broker: BrokerInfo) -> None:
    gate = await gate_for(ingest, broker)
    try:
        topic = ingest.topics.taps("12-3")
        for seq in (1, 2, 5, 6):
            await asyncio.to_thread(gate.publish, topic, encode(make_tap(seq)))
        await wait_for(lambda: committed_through(gate, ingest) == 2)
        requests = await wait_for(lambda: gate.messages(ingest.topics.resend("12-3")))
        request = ResendRequest.model_validate_json(requests[0])
        assert (request.gate_id, request.from_seq, request.to_seq) == ("12-3", 3, 4)
        for seq in (3, 4):
            await asyncio.to_thread(gate.publish, topic, encode(make_tap(seq)))
        await wait_for(lambda: committed_through(gate, ingest) == 6)
        assert await ingest.count(TapRow) == 6
    finally:
        gate.close()


async def test_a_gap_left_open_raises_one_alarm(ingest: Running, broker: BrokerInfo) -> None:
    ingest.worker.settings.ingest_gap_alarm_s = 1.5
    gate = await gate_for(ingest, broker)
    try:
        topic = ingest.topics.taps("12-3")
        for seq in (1, 2, 5, 8):
            await asyncio.to_thread(gate.publish, topic, encode(make_tap(seq)))
        await wait_for(lambda: committed_through(gate, ingest) == 2)
        assert await ingest.count(AlarmRow) == 0  # a young gap may still be in flight: no alarm yet

        async def gap_alarms() -> list[AlarmRow]:
            async with ingest.sessions() as session:
                rows = await session.execute(select(AlarmRow).where(AlarmRow.kind == "tap_gap"))
                return list(rows.scalars().all())

        alarms = await wait_for(gap_alarms, timeout=10)
        await asyncio.sleep(1.5)  # the sweeper runs twice a second: it must not raise it again
        alarms = await gap_alarms()
        assert len(alarms) == 1
        assert (alarms[0].gate_id, alarms[0].tap_id, alarms[0].severity) == ("12-3", "12-3:3", "warning")
        assert "seq 3..4, 6..7 missing" in alarms[0].detail
        for seq in (3, 4, 6, 7):
            await asyncio.to_thread(gate.publish, topic, encode(make_tap(seq)))
        await wait_for(lambda: committed_through(gate, ingest) == 8)
        await asyncio.sleep(1.0)
        assert len(await gap_alarms()) == 1
    finally:
        gate.close()


KEY_12_3 = development_mac_key(12, 3)  # gate 12-3's own uplink MAC key


async def test_gate_status_and_its_last_will_are_recorded(ingest: Running, broker: BrokerInfo) -> None:
    topic = ingest.topics.status("12-3")
    gate = SimUplink(
        broker.url,
        ingest.topics,
        [SimGate(12, 3)],
        version=broker.version,
        will=(topic, encode_with_mac(GateStatus(gate_id="12-3", state=GateState.OFFLINE), KEY_12_3)),
    )
    gate.start()
    try:
        await asyncio.to_thread(gate.wait_ready)
        online = GateStatus(
            gate_id="12-3",
            state=GateState.ONLINE,
            time=datetime.now(UTC),
            mode=GateMode.NORMAL,
            fare_table_version=7,
            denylist_version=3,
            last_seq=0,
            software="gate 0.1",
        )
        await asyncio.to_thread(gate.publish, topic, encode_with_mac(online, KEY_12_3))
        await asyncio.to_thread(gate.publish, ingest.topics.status("12-4"), b"not a status")

        async def gate_row() -> GateRow | None:
            async with ingest.sessions() as session:
                return await session.get(GateRow, "12-3")

        row = await wait_for(gate_row)
        assert (row.state, row.fare_table_version, row.denylist_version, row.software) == (
            "online",
            7,
            3,
            "gate 0.1",
        )
        gate.vanish()  # no DISCONNECT: the broker publishes the last will
        await wait_for(lambda: _state(ingest), timeout=30)
        async with ingest.sessions() as session:
            alarm = (await session.execute(select(AlarmRow))).scalar_one()
        assert (alarm.kind, alarm.gate_id) == ("gate_offline", "12-3")
        await wait_for(lambda: ingest.count(DeadLetterRow))
    finally:
        gate.close()


async def _state(run: Running) -> bool:
    async with run.sessions() as session:
        row = await session.get(GateRow, "12-3")
        return row is not None and row.state == "offline"
