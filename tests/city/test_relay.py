"""The station relay (backend/relay.py) for real: a station server (Mosquitto) whose uplink a relay
publishes into the 3-node NATS cluster's stream with JetStream's acknowledgement. Taps taken by the
station while the relay is away wait there; the stream's leader killed -9 mid-stream costs nothing; a
relay killed -9 leaves its unacknowledged messages at the station; the relay's account at the station
reads the uplink and nothing else."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import paho.mqtt.client as mqtt
import pytest
from nats.js.api import AckPolicy, ConsumerConfig
from paho.mqtt.enums import CallbackAPIVersion

from backend.config import Settings
from backend.ingest.stream import STREAM
from backend.relay import RELAY_USER, StationRelay
from faregate.city.cluster import NatsCluster
from faregate.city.station import BrokerFiles, Mosquitto, free_port, write_station
from faregate.city.workers import StationRelays
from faregate.simgate import tap_payload
from protocol.mqtt import Topics, gate_id
from tests.city.citytools import stream_leader, until

pytestmark = [pytest.mark.mosquitto]

STATION = 31
GATES = [1, 2, 3]


class Station:
    """A station server with a relay account, bridged (downlink only) to the cluster's gateways."""

    def __init__(self, directory: Path, prefix: str, cluster: NatsCluster) -> None:
        self.prefix = prefix
        self.relay_password = secrets.token_urlsafe(12)
        nodes = [("127.0.0.1", node.mqtt_port) for node in cluster.nodes]
        self.files: BrokerFiles = write_station(
            directory, prefix, STATION, GATES, free_port(), nodes[0], "no-auth-on-this-cluster",
            more_centres=nodes[1:], centre_is_mosquitto=False, relay_password=self.relay_password)
        self.broker = Mosquitto(self.files)

    @property
    def relay_url(self) -> str:
        return f"mqtt://{RELAY_USER}:{self.relay_password}@127.0.0.1:{self.files.port}"

    def client(self, user: str, password: str) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}")
        client.username_pw_set(user, password)
        client.connect("127.0.0.1", self.files.port)
        client.loop_start()
        return client

    def tap(self, gate_no: int, seqs: range, seconds: float = 0.0) -> None:
        """The gate publishes these taps to its station, QoS 1, each PUBACKed by the station, spread
        evenly over `seconds`."""
        gate = gate_id(STATION, gate_no)
        client = self.client(gate, self.files.passwords[gate])
        try:
            for seq in seqs:
                payload = tap_payload(STATION, gate_no, seq)
                client.publish(Topics(self.prefix).taps(gate), payload, qos=1).wait_for_publish(10)
                if seconds:
                    time.sleep(seconds / len(seqs))
        finally:
            client.loop_stop()
            client.disconnect()


@pytest.fixture
def station(tmp_path: Path, mosquitto_tools: None, cluster: NatsCluster,
            city_prefix: str) -> Iterator[Station]:
    server = Station(tmp_path / "station", city_prefix, cluster)
    server.broker.start()
    try:
        yield server
    finally:
        server.broker.stop()


async def stream_taps(cluster: NatsCluster) -> list[str]:
    """Every tap id in the uplink stream (read without acknowledging: the stream keeps them)."""
    connection = await nats.connect(cluster.urls)
    try:
        js = connection.jetstream()
        total = (await js.stream_info(STREAM)).state.messages
        consumer = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, inactive_threshold=30.0)
        subscription = await js.pull_subscribe(">", stream=STREAM, config=consumer)
        ids: list[str] = []
        while len(ids) < total:
            for message in await subscription.fetch(min(500, total - len(ids)), timeout=5):
                ids.append(json.loads(message.data)["tap_id"])
        await subscription.unsubscribe()
        return ids
    finally:
        await connection.close()


async def stream_count(cluster: NatsCluster) -> int:
    connection = await nats.connect(cluster.urls)
    try:
        return int((await connection.jetstream().stream_info(STREAM)).state.messages)
    finally:
        await connection.close()


async def until_stream_holds(cluster: NatsCluster, count: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    held = 0
    while time.monotonic() < deadline:
        try:
            held = await stream_count(cluster)
        except Exception:  # no leader for a moment after a kill
            held = 0
        if held >= count:
            return held
        await asyncio.sleep(0.1)
    raise AssertionError(f"the stream holds {held} messages, not {count}, after {timeout} s")


def expected_ids(per_gate: range) -> set[str]:
    return {f"{gate_id(STATION, no)}:{seq}" for no in GATES for seq in per_gate}


@pytest.mark.slow
async def test_taps_wait_at_the_station_until_the_relay_has_them_stored_across_a_leader_kill(
    cluster: NatsCluster, station: Station
) -> None:
    settings = Settings(mqtt_prefix=station.prefix)
    first = StationRelay(settings, station.relay_url, cluster.ingest_url)
    await first.start()  # its persistent session at the station is made
    await until(lambda: first.connected, 30, "the relay subscribed at its station, the stream made")
    await first.aclose()
    for no in GATES:  # no relay running: the station PUBACKs the gates and keeps the taps for the relay
        station.tap(no, range(1, 41))
    assert await stream_count(cluster) == 0
    relay = StationRelay(settings, station.relay_url, cluster.ingest_url)
    await relay.start()
    try:
        await until_stream_holds(cluster, 120, 30)
        leader = await stream_leader(cluster)
        feeding = asyncio.gather(*(asyncio.to_thread(station.tap, no, range(41, 241), 3.0) for no in GATES))
        await asyncio.sleep(1.0)
        cluster.kill(next(node for node in cluster.nodes if node.name == leader))
        await feeding
        await until_stream_holds(cluster, 720, 60)
        await until(lambda: relay.stats["forwarded"] >= 720, 30, "every message acknowledged at the station")
    finally:
        await relay.aclose()
    ids = await stream_taps(cluster)
    assert set(ids) == expected_ids(range(1, 241))  # nothing lost across the leader's death
    assert relay.stats["retried"] >= 1  # publishes went unacknowledged during the election, and came again


@pytest.mark.slow
async def test_a_relay_killed_mid_stream_leaves_what_it_had_not_acknowledged_at_the_station(
    cluster: NatsCluster, station: Station, tmp_path: Path
) -> None:
    relays = StationRelays(tmp_path / "relays", [station.relay_url], cluster.ingest_url, station.prefix)
    relays.start()
    try:
        feeding = asyncio.gather(*(asyncio.to_thread(station.tap, no, range(1, 301), 3.0) for no in GATES))
        await until_stream_holds(cluster, 100, 30)
        assert relays.process is not None
        relays.process.kill()  # kill -9 mid-stream: its unacknowledged messages stay in its session
        await feeding
        held = await stream_count(cluster)
        assert held < 900  # the relay died before the station had handed it every tap
        relays.start()  # the same account and client id: the station's session is delivered again
        await until_stream_holds(cluster, 900, 60)
    finally:
        relays.stop()
    ids = await stream_taps(cluster)
    assert set(ids) == expected_ids(range(1, 301))


@pytest.mark.security
async def test_the_relay_account_reads_the_uplink_and_cannot_publish_as_a_gate(station: Station) -> None:
    """A stolen relay password lets its holder read the station's uplink, never publish as a gate nor
    on a gate's downlink: the station's ACL drops both; the genuine tap after them is the one seen."""
    topics = Topics(station.prefix)
    gate = gate_id(STATION, 1)
    seen: list[tuple[str, bytes]] = []
    reader = station.client(RELAY_USER, station.relay_password)
    reader.on_message = lambda _c, _u, message: seen.append((message.topic, bytes(message.payload)))
    reader.subscribe([(topics.all_taps, 1), (topics.committed(gate), 1)])
    time.sleep(0.3)
    forger = station.client(RELAY_USER, station.relay_password)
    try:
        forged = tap_payload(STATION, 1, 7, key=b"\x00" * 32)
        forger.publish(topics.taps(gate), forged, qos=1).wait_for_publish(5)
        forger.publish(topics.committed(gate), b"{}", qos=1).wait_for_publish(5)
        station.tap(1, range(1, 2))  # the genuine gate, after the forgeries
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        for client in (reader, forger):
            client.loop_stop()
            client.disconnect()
    assert seen == [(topics.taps(gate), tap_payload(STATION, 1, 1))]
