"""Self-healing state on a real Mosquitto restarted without persistence, with the real backend and gate:
the retained fare table comes back (the backend republishes on reconnecting), a gate without one asks,
and a burst of snapshot requests from one gate causes a bounded number of republishes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest

from backend.config import Settings
from backend.db import make_engine, make_sessionmaker
from backend.migrate import upgrade
from backend.runtime import serve
from backend.tables import FareTableRow
from fare_core import FareTable, artefact, compiler, rules
from faregate.simgate import development_mac_key
from faregate.station import GateSpec, SimStation
from firmware_sim.population import Phone, Population
from protocol.mqtt import SnapshotRequest, Topics, UpdateKind, encode_with_mac

from .brokers import MOSQUITTO, PrivateMosquitto, require
from .test_gate_updates import DEVICE, EXAMPLES

pytestmark = [pytest.mark.security, pytest.mark.mosquitto, pytest.mark.slow]

PREFIX = "heal"
CARD = 0x9100


@pytest.fixture
async def mosquitto() -> AsyncIterator[PrivateMosquitto]:
    require("mosquitto", Path(MOSQUITTO).exists())
    chosen = PrivateMosquitto()  # persistence off: a restart loses every retained message
    await chosen.start()
    try:
        yield chosen
    finally:
        await chosen.stop()
        chosen.cleanup()


@pytest.fixture
async def backend(tmp_path: Path, mosquitto: PrivateMosquitto) -> AsyncIterator[Settings]:
    """The backend (ingest and control, no API) on SQLite with fare table version 2 published."""
    settings = Settings(environment="development", database_url=f"sqlite+aiosqlite:///{tmp_path / 'b.db'}",
                        mqtt_url=mosquitto.url, mqtt_version="5", mqtt_prefix=PREFIX,
                        ingest_client_id="heal-ingest", ingest_batch_wait_ms=5)
    engine = make_engine(settings)
    await upgrade(engine, settings)
    blob = artefact.pack(compiler.compile_rules(rules.load_rules(EXAMPLES / "tiny.toml"), version=2))
    now = datetime.now(UTC)
    async with make_sessionmaker(engine).begin() as session:
        checksum = FareTable.from_bytes(blob).checksum
        session.add(FareTableRow(version=2, rules="", artefact=blob, checksum=checksum, created_at=now,
                                 activate_at=now - timedelta(seconds=1), state="published"))
    await engine.dispose()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, api=False, ingest=True, processor=False, stop=stop,
                                     install_signals=False))
    try:
        yield settings
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def retained(mosquitto: PrivateMosquitto, topic: str, wait: float = 1.0) -> bytes | None:
    """The retained payload on `topic`, if the broker holds one."""
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
        await client.subscribe(topic, qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                async for message in client.messages:
                    return bytes(message.payload) or None
    return None


async def eventually_retained(mosquitto: PrivateMosquitto, topic: str, timeout: float = 20.0) -> bytes:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        with contextlib.suppress(aiomqtt.MqttError):
            if (payload := await retained(mosquitto, topic)) is not None:
                return payload
        await asyncio.sleep(0.2)
    raise AssertionError(f"nothing retained on {topic} within {timeout} s")


async def test_after_a_broker_restart_without_persistence_a_new_gate_gets_the_fare_table(
    tmp_path: Path, mosquitto: PrivateMosquitto, backend: Settings
) -> None:
    topics = Topics(PREFIX)
    await eventually_retained(mosquitto, topics.fare_table)  # republished when the backend connected
    await mosquitto.stop()
    await mosquitto.start()  # same port, nothing retained any more
    await eventually_retained(mosquitto, topics.fare_table)  # the backend reconnected and republished
    # the retained copy is lost again (an operator cleared it): a gate without a table must ask
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
        await client.publish(topics.fare_table, b"", qos=1, retain=True)
    population = Population([Phone(card_id=CARD, balance=1000)])
    station = SimStation(tmp_path / "gates", [GateSpec(1, 1, "entry")], population, None, device=DEVICE,
                         mqtt_url=mosquitto.url, prefix=PREFIX)
    async with station:
        gate = station.gates[0]
        assert gate.uplink is not None and gate.state.fare_table is None
        gate.uplink.fare_table_ask_s = 0.5
        for _ in range(300):
            if gate.state.fare_table is not None:
                break
            await asyncio.sleep(0.05)
        assert gate.state.fare_table is not None and gate.state.fare_table.version == 2
        assert gate.uplink.fare_table_requests >= 1  # it asked; nothing was retained to find
        passed = await station.tap(CARD, 0)
        assert not passed.denied and passed.passed_at is not None


async def test_a_burst_of_snapshot_requests_causes_a_bounded_number_of_republishes(
    mosquitto: PrivateMosquitto, backend: Settings
) -> None:
    topics = Topics(PREFIX)
    await eventually_retained(mosquitto, topics.fare_table)
    await asyncio.sleep(5.5)  # the republish of the backend's connection is a window behind us
    key = development_mac_key(1, 1)
    counts = {topics.fare_table: 0, topics.denylist_snapshot: 0}
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as watcher:
        for topic in counts:
            await watcher.subscribe(topic, qos=1)

        async def count() -> None:
            async for message in watcher.messages:
                if not message.retain:  # what the backend publishes now, not the retained copy
                    counts[str(message.topic)] += 1

        counter = asyncio.create_task(count())
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as gate:
            for n in range(100):  # within a second, as one gate's login can
                kind = UpdateKind.FARE_TABLE if n % 2 else UpdateKind.DENYLIST
                request = SnapshotRequest(gate_id="1-1", kind=kind, have_version=0, time=datetime.now(UTC))
                await gate.publish(topics.request("1-1"), encode_with_mac(request, key), qos=1)
                await asyncio.sleep(0.009)
        await asyncio.sleep(7.0)  # the window and its one trailing republish
        counter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await counter
    assert 1 <= counts[topics.fare_table] <= 2, counts
    assert 1 <= counts[topics.denylist_snapshot] <= 2, counts
