"""An ingest worker on the cluster's stream sending its acks as plain NATS publishes (`--ingest-downlink
nats`): a gate subscribed at a node's MQTT gateway gets the signed Committed, and keeps getting them
after the node the worker's NATS connection was on is killed -9 (the client reconnects by itself to
another node, and the worker must go on sending)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from backend.db import make_engine, make_sessionmaker
from backend.ingest.stream import NATS_DOWNLINK, StreamSource
from backend.ingest.worker import IngestWorker
from backend.migrate import upgrade
from faregate.city.cluster import NatsCluster
from faregate.simgate import tap_payload
from protocol.mqtt import DEVELOPMENT_PUBLIC_KEY, Committed, Topics, Verifier
from tests.backend.conftest import Database, make_settings


class AckListener:
    """A gate's downlink at one MQTT gateway, QoS 0 (as a station bridge into the cluster subscribes)."""

    def __init__(self, port: int, topic: str, probe: str) -> None:
        self.acks: list[Committed] = []
        self.probed = False
        self.probe = probe
        self.verifier = Verifier([DEVELOPMENT_PUBLIC_KEY])
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"gate-{uuid.uuid4().hex[:8]}")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([(topic, 0), (probe, 0)])
        self.client.loop_start()

    async def wait_live(self, nc: nats.NATS) -> None:
        """On a fresh cluster a node's MQTT subscriptions take a few seconds to see plain NATS
        publishes (measured here: none after 1 s, all after 4 s): probe until one arrives."""
        async with asyncio.timeout(20):
            while not self.probed:
                await nc.publish(self.probe.replace("/", "."), b"probe")
                await asyncio.sleep(0.2)

    def _on_message(self, _client: object, _userdata: object, message: mqtt.MQTTMessage) -> None:
        if message.topic == self.probe:
            self.probed = True
            return
        ack = Committed.model_validate_json(message.payload)
        self.verifier.check(ack)  # signed by the backend, as every message a gate uses
        self.acks.append(ack)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
async def worker(cluster: NatsCluster, tmp_path: Path) -> AsyncIterator[IngestWorker]:
    settings = make_settings(Database("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'fg.db'}", None),
                             mqtt_prefix=f"city{uuid.uuid4().hex[:8]}", mqtt_url=cluster.mqtt_urls[0],
                             mqtt_version="3.1.1")
    engine = make_engine(settings)
    await upgrade(engine, settings)
    running = IngestWorker(settings, make_sessionmaker(engine),
                           stream=StreamSource(cluster.ingest_url, [NATS_DOWNLINK], ack_wait_s=5.0))
    stop = asyncio.Event()
    task = asyncio.create_task(running.run(stop))
    try:
        async with asyncio.timeout(30):
            await running.connected.wait()
        yield running
    finally:
        stop.set()
        await task
        await engine.dispose()


async def until_acked(listener: AckListener, seq: int, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not any(ack.through_seq >= seq for ack in listener.acks):
            await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_acks_go_out_as_plain_nats_publishes_and_survive_the_workers_node(
    cluster: NatsCluster, worker: IngestWorker
) -> None:
    topics = Topics(worker.settings.mqtt_prefix)
    source = worker.mqtt
    nc = source._nc  # the worker's NATS connection: which node it is on
    home = next(node for node in cluster.nodes if node.client_port == nc.connected_url.port)
    other = next(node for node in cluster.nodes if node is not home)
    listener = AckListener(other.mqtt_port, topics.committed("7-1"), f"{topics.prefix}/probe")
    publisher = await nats.connect(cluster.urls)
    try:
        await listener.wait_live(publisher)
        await publisher.jetstream().publish(f"{topics.prefix}.gates.7-1.taps", tap_payload(7, 1, 1))
        await until_acked(listener, 1, 20)
        assert source.stats["published"] >= 1 and not source.stats["unsent"]

        cluster.kill(home)  # the worker's client moves to another node by itself
        async with asyncio.timeout(30):
            while not nc.is_connected or nc.connected_url.port == home.client_port:
                await asyncio.sleep(0.05)
        for _attempt in range(60):  # the stream may be electing a leader: publish until it takes it
            try:
                await publisher.jetstream().publish(f"{topics.prefix}.gates.7-1.taps", tap_payload(7, 1, 2),
                                                    timeout=2)
                break
            except Exception:
                await asyncio.sleep(0.5)
        await until_acked(listener, 2, 30)
    finally:
        listener.close()
        await publisher.close()
    assert worker.connected.is_set()
    assert [ack.through_seq for ack in listener.acks][-1] == 2
