"""The station relay (backend/relay.py) for real: a station server (Mosquitto) linked to the 3-node NATS
cluster by a relay. Uplink: taps taken by the station while the relay is away wait there; the stream's
leader killed -9 mid-stream costs nothing; a relay killed -9 leaves its unacknowledged messages at the
station. Downlink: a gate's ack and a block reach the gate through its station, state published while
the relay was away reaches it when it is back, and the node the relay was on killed -9 does not stop
the next block. The relay's account at the station reads the uplink and writes the downlink only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import nats
import nats.errors
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from backend.config import Settings
from backend.ingest.stream import STREAM
from backend.relay import RELAY_USER, StationRelay
from backend.state_stream import STATE_STREAM
from fare_core.reasons import GateMode
from faregate.city.cluster import NatsCluster
from faregate.city.workers import StationRelays
from faregate.simgate import tap_payload
from protocol.mqtt import DEVELOPMENT_SIGNING_SEED, GateCommand, Signer, Topics, encode, gate_id
from tests.city.citytools import stream_leader, until
from tests.city.stationtools import GATES, STATION, GateListener, Station, relay_connected, signed_snapshot

pytestmark = [pytest.mark.mosquitto]

T = TypeVar("T")


async def stream_taps(cluster: NatsCluster) -> list[str]:
    """Every tap id in the uplink stream, read message by message (no consumer: a work-queue stream
    takes one consumer a subject filter, so a read made again after a timeout could not make its own).
    A request that times out (a busy machine, a stream that just changed leader) is made again."""
    connection = await nats.connect(cluster.urls)
    try:
        js = connection.jetstream(timeout=5)
        state = (await answered(lambda: js.stream_info(STREAM))).state
        ids = []
        for seq in range(state.first_seq, state.last_seq + 1):
            message = await answered(lambda seq=seq: js.get_msg(STREAM, seq))
            ids.append(json.loads(message.data)["tap_id"])
        return ids
    finally:
        await connection.close()


async def answered(request: Callable[[], Awaitable[T]], attempts: int = 3) -> T:
    for attempt in range(attempts):
        try:
            return await request()
        except nats.errors.TimeoutError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


async def stream_count(cluster: NatsCluster) -> int:
    """Messages in the uplink stream; an info request that times out (a busy machine, a node just
    lost) is asked again, for up to 20 s."""
    connection = await nats.connect(cluster.urls)
    try:
        for _ in range(20):
            try:
                return int((await connection.jetstream(timeout=1).stream_info(STREAM)).state.messages)
            except nats.errors.TimeoutError:
                await asyncio.sleep(0.2)
        raise AssertionError("the uplink stream did not answer for 20 s")
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
    """A stolen relay password lets its holder read the station's uplink and write its downlink (which
    the gates check against the backend's signature), never publish as a gate nor read a gate's acks:
    the station's ACL drops both; the genuine tap after them is the one seen."""
    topics = Topics(station.prefix)
    gate = gate_id(STATION, 1)
    seen: list[tuple[str, bytes]] = []
    reader = station.client(RELAY_USER, station.relay_password)
    reader.on_message = lambda _c, _u, message: seen.append((message.topic, bytes(message.payload)))
    subscribed = threading.Event()
    reader.on_subscribe = lambda *_: subscribed.set()
    reader.subscribe([(topics.all_taps, 1), (topics.committed(gate), 1)])
    assert subscribed.wait(10)  # the SUBACK: whatever is published from here on is the reader's to see
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


@pytest.mark.slow
async def test_acks_and_blocks_come_down_through_the_relay_and_state_missed_is_fetched_on_return(
    cluster: NatsCluster, station: Station
) -> None:
    topics = Topics(station.prefix)
    gate = gate_id(STATION, 1)
    relay = await relay_connected(station, cluster)
    listener = GateListener(station, 1)
    nc = await nats.connect(cluster.urls)
    try:
        station.tap(1, range(1, 2))  # the relay learns the gate from its uplink and subscribes its acks
        await until(lambda: gate in relay.gates, 10, "the relay knows the gate")
        # as a worker (plain NATS) and the backend; again until the relay's new subscriptions are known
        # on the node this publisher is on
        for topic, payload in ((topics.committed(gate), b"ack-1"), (topics.denylist_delta, b"delta-1")):
            subject = topic.replace("/", ".")
            async with asyncio.timeout(10):
                while not listener.payloads(topic):
                    await nc.publish(subject, payload)
                    await asyncio.sleep(0.1)
        assert set(listener.payloads(topics.committed(gate))) == {b"ack-1"}
        await relay.aclose()

        # while the relay is away, the backend publishes a new snapshot, as Distributor does: signed,
        # retained, QoS 1, through a node's MQTT gateway (FAREGATE_STATE captures its subject)
        snapshot = signed_snapshot(2)
        backend = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"backend-{uuid.uuid4().hex[:8]}")
        backend.connect("127.0.0.1", cluster.nodes[0].mqtt_port)
        backend.loop_start()
        try:
            backend.publish(topics.denylist_snapshot, snapshot, qos=1, retain=True).wait_for_publish(10)
        finally:
            backend.loop_stop()
            backend.disconnect()
        async with asyncio.timeout(10):
            while True:
                with contextlib.suppress(nats.errors.Error):
                    last = await nc.jetstream().get_last_msg(STATE_STREAM,
                                                             f"{topics.prefix}.denylist.snapshot")
                    if last.data == snapshot:
                        break
                await asyncio.sleep(0.1)
        await nc.publish(f"{topics.prefix}.denylist.delta", b"delta-2")  # live only: missed, as it is
        await nc.flush()
        await asyncio.sleep(0.3)
        assert listener.payloads(topics.denylist_snapshot) == []
        relay = await relay_connected(station, cluster)
        # a fetch is retried after a JetStream request times out (5 s): on a loaded machine (CI saw
        # 10 s pass once) the answer may take two of them
        try:
            await until(lambda: listener.payloads(topics.denylist_snapshot) == [snapshot], 30,
                        "the snapshot published while the relay was away")
        except AssertionError as error:
            raise AssertionError(f"{error}; relay stats {relay.stats}, gate saw {listener.seen}") from None
        assert set(listener.payloads(topics.denylist_delta)) == {b"delta-1"}
        late = GateListener(station, 2)  # a gate connecting now gets the state retained at its station
        try:
            await until(lambda: late.payloads(topics.denylist_snapshot) == [snapshot], 10, "retained")
            assert late.seen[-1][2] is True
        finally:
            late.close()
    finally:
        listener.close()
        await relay.aclose()
        await nc.close()
    assert relay.stats["state_fetched"] >= 1


@pytest.mark.slow
async def test_a_block_reaches_the_station_soon_after_the_relays_node_is_killed(
    cluster: NatsCluster, station: Station
) -> None:
    topics = Topics(station.prefix)
    relay = await relay_connected(station, cluster)
    listener = GateListener(station, 1)
    home_port = relay._nc.connected_url.port
    home = next(node for node in cluster.nodes if node.client_port == home_port)
    nc = await nats.connect([node.url for node in cluster.nodes if node is not home])
    try:
        await asyncio.sleep(0.3)
        cluster.kill(home)  # the relay's client reconnects to another node by itself
        killed = time.monotonic()
        deadline = killed + 10
        while not listener.payloads(topics.denylist_delta) and time.monotonic() < deadline:
            await nc.publish(f"{topics.prefix}.denylist.delta", b"delta-after-kill")
            await asyncio.sleep(0.1)
        reached = time.monotonic() - killed
    finally:
        listener.close()
        await relay.aclose()
        await nc.close()
    assert listener.payloads(topics.denylist_delta)[:1] == [b"delta-after-kill"]
    assert reached < 5.0  # no JetStream on this path: no election to wait for (measured about 1 s)


async def retained_for_a_new_gate(station: Station, topic: str) -> list[bytes]:
    """What a gate connecting now gets on `topic`: the station's retained message."""
    late = GateListener(station, 2)
    try:
        await until(lambda: late.payloads(topic), 10, f"the retained {topic}")
        return late.payloads(topic)
    finally:
        late.close()


@pytest.mark.security
async def test_state_the_backend_did_not_sign_never_replaces_the_station_s_retained_state(
    cluster: NatsCluster, station: Station
) -> None:
    """A stranger able to publish on the cluster (an open one, or a stolen account) sends the relay a
    deny-list snapshot signed by another key, an unsigned one, garbage, a forged command and another
    gate's genuine command on this gate's topic. The relay
    hands none of them down: the station keeps the genuine snapshot retained, and a gate that connects
    gets that one. Without the check the last forgery stood at the station until the backend next
    published (the gates refusing it, so going without the list)."""
    topics = Topics(station.prefix)
    relay = await relay_connected(station, cluster)
    listener = GateListener(station, 1)
    nc = await nats.connect(cluster.urls)
    genuine = signed_snapshot(3)
    forged = signed_snapshot(4, seed=b"\x07" * 32)
    unsigned = json.dumps({"version": 5, "card_ids": [], "checksum": "0" * 48,
                           "time": "2026-12-03T08:00:00Z"}).encode()
    try:
        await asyncio.to_thread(station.tap, 1, range(1, 2))  # the relay learns gate 1: its command too
        await until(lambda: gate_id(STATION, 1) in relay._subscribed, 10, "the relay subscribed gate 1")
        subject = f"{topics.prefix}.denylist.snapshot"
        async with asyncio.timeout(10):
            while not listener.payloads(topics.denylist_snapshot):
                await nc.publish(subject, genuine)
                await asyncio.sleep(0.1)
        for payload in (forged, unsigned, b"not json"):
            await nc.publish(subject, payload)
        command = topics.command(gate_id(STATION, 1)).replace("/", ".")
        await nc.publish(command, b'{"command_id": 1}')
        # a genuine, signed command for gate 2, put on gate 1's topic: not gate 1's to keep
        elsewhere = Signer(DEVELOPMENT_SIGNING_SEED).sign(GateCommand(
            gate_id=gate_id(STATION, 2), command_id=1, mode=GateMode.CLOSED, issued_at=datetime.now(UTC)))
        await nc.publish(command, encode(elsewhere))
        await nc.flush()
        await until(lambda: relay.stats["forged"] >= 5, 10, "the five forgeries refused")
        assert await retained_for_a_new_gate(station, topics.denylist_snapshot) == [genuine]
        assert set(listener.payloads(topics.denylist_snapshot)) == {genuine}
    finally:
        listener.close()
        await relay.aclose()
        await nc.close()


@pytest.mark.security
async def test_an_older_genuine_state_message_replayed_never_replaces_a_newer_one_at_the_station(
    cluster: NatsCluster, station: Station
) -> None:
    """A stranger able to publish on the cluster replays the backend's own, genuinely signed snapshot of
    an earlier version after a newer one went down. Without the relay's memory of versions, that older
    snapshot stood retained at the station: a new gate started from it, without the phones blocked
    since. The relay hands it down no more; the same newest one fetched again still goes, and an older one
    fetched (the state stream lagging the live path) is stale, not counted as an attack."""
    topics = Topics(station.prefix)
    relay = await relay_connected(station, cluster)
    listener = GateListener(station, 1)
    nc = await nats.connect(cluster.urls)
    older, newer = signed_snapshot(3), signed_snapshot(4)
    subject = f"{topics.prefix}.denylist.snapshot"
    try:
        async with asyncio.timeout(10):
            while newer not in listener.payloads(topics.denylist_snapshot):
                await nc.publish(subject, older)
                await nc.publish(subject, newer)
                await asyncio.sleep(0.1)
        replayed = relay.stats["replayed"]
        await nc.publish(subject, older)
        await nc.flush()
        await until(lambda: relay.stats["replayed"] > replayed, 10, "the replay refused")
        assert await retained_for_a_new_gate(station, topics.denylist_snapshot) == [newer]
        before = dict(relay.stats)
        relay._down(topics.denylist_snapshot, newer)  # as a catch-up's fetch hands the newest down again
        relay._down(topics.denylist_snapshot, older)  # a fetch from a lagging stream: stale, not an attack
        assert relay.stats["down"] == before["down"] + 1 and relay.stats["forged"] == 0
        assert relay.stats["state_stale"] == before["state_stale"] + 1
        assert relay.stats["replayed"] == before["replayed"]
    finally:
        listener.close()
        await relay.aclose()
        await nc.close()
