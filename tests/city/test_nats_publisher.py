"""The backend publishing to the gates over NATS (`--publish-nats`, backend/nats_publisher.py), through a
station relay to a gate at its station: the block as a plain publish, the state into FAREGATE_STATE
acknowledged; the block reaches the gate even while the cluster has no majority to store state."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pydantic
import pytest

from backend.config import Settings
from backend.db import make_engine, make_sessionmaker
from backend.distribution import Distributor
from backend.migrate import upgrade
from backend.publisher import Publisher
from backend.state_stream import STATE_STREAM
from faregate.city.cluster import NatsCluster
from protocol.mqtt import (
    DEVELOPMENT_PUBLIC_KEY,
    DenyListDeltaMessage,
    DenyListSnapshotMessage,
    Topics,
    Verifier,
)
from tests.city.citytools import until
from tests.city.stationtools import GateListener, Station, relay_connected

pytestmark = [pytest.mark.mosquitto]

CARD = "00000000000abc01"


def backend_settings(tmp_path: Path, prefix: str, nats_url: str) -> Settings:
    return Settings(environment="development", database_url=f"sqlite+aiosqlite:///{tmp_path / 'backend.db'}",
                    mqtt_prefix=prefix, mqtt_url="mqtt://127.0.0.1:1", publish_nats_url=nats_url)


@contextlib.asynccontextmanager
async def distributor(settings: Settings) -> AsyncIterator[Distributor]:
    engine = make_engine(settings)
    await upgrade(engine, settings)
    publisher = Publisher(settings, client_id="test-operator")
    try:
        yield Distributor(make_sessionmaker(engine), publisher)
    finally:
        await publisher.aclose()
        await engine.dispose()


def verified_delta(payload: bytes) -> DenyListDeltaMessage:
    message = DenyListDeltaMessage.model_validate_json(payload)
    Verifier([DEVELOPMENT_PUBLIC_KEY]).check(message)  # the gate's check: signed by the backend
    return message


@pytest.mark.slow
async def test_a_block_over_nats_reaches_the_gate_and_its_snapshot_is_stored_as_state(
    tmp_path: Path, cluster: NatsCluster, station: Station
) -> None:
    topics = Topics(station.prefix)
    relay = await relay_connected(station, cluster)
    listener = GateListener(station, 1)
    nc = await nats.connect(cluster.urls)
    try:
        async with distributor(backend_settings(tmp_path, station.prefix, cluster.ingest_url)) as operator:
            await operator.publisher.wait_connected(30)
            row = await operator.change_denylist([CARD], [], "stolen")
            await until(lambda: listener.payloads(topics.denylist_delta), 15, "the block at the gate")
            delta = verified_delta(listener.payloads(topics.denylist_delta)[0])
            assert (delta.version, delta.add) == (row.version, [int(CARD, 16)])
            # the snapshot: acknowledged by the state stream, so a relay away meanwhile fetches it
            stored = await nc.jetstream().get_last_msg(STATE_STREAM, f"{topics.prefix}.denylist.snapshot")
            snapshot = DenyListSnapshotMessage.model_validate_json(stored.data)
            Verifier([DEVELOPMENT_PUBLIC_KEY]).check(snapshot)
            assert (snapshot.version, snapshot.card_ids) == (row.version, [int(CARD, 16)])
            await until(lambda: listener.payloads(topics.denylist_snapshot) == [stored.data], 15,
                        "the snapshot retained at the station")
            # the delta is not state: the stream keeps the snapshot, not every block
            with pytest.raises(nats.js.errors.NotFoundError):
                await nc.jetstream().get_last_msg(STATE_STREAM, f"{topics.prefix}.denylist.delta")
    finally:
        listener.close()
        await relay.aclose()
        await nc.close()


@pytest.mark.slow
async def test_a_block_reaches_the_gate_while_the_cluster_cannot_store_state(
    tmp_path: Path, cluster: NatsCluster, station: Station
) -> None:
    """Two of three nodes killed -9: no majority, so no stream takes a write; the block (a plain
    publish, first) still reaches the gate, and the call then says the snapshot is not stored (the
    API's 503: saved, not published; the operator resends)."""
    topics = Topics(station.prefix)
    relay = await relay_connected(station, cluster)
    listener = GateListener(station, 1)
    home_port = relay._nc.connected_url.port
    home = next(node for node in cluster.nodes if node.client_port == home_port)
    try:
        async with distributor(backend_settings(tmp_path, station.prefix, home.url)) as operator:
            await operator.publisher.wait_connected(30)
            for node in cluster.nodes:
                if node is not home:
                    cluster.kill(node)
            with pytest.raises(TimeoutError):
                await operator.change_denylist([CARD], [], "stolen")
            await until(lambda: listener.payloads(topics.denylist_delta), 15, "the block at the gate")
            assert verified_delta(listener.payloads(topics.denylist_delta)[0]).add == [int(CARD, 16)]
    finally:
        listener.close()
        await relay.aclose()


def test_publish_nats_url_takes_only_a_nats_cluster() -> None:
    with pytest.raises(pydantic.ValidationError, match="FAREGATE_PUBLISH_NATS_URL"):
        Settings(publish_nats_url="mqtt://127.0.0.1:1883")
    assert Settings(publish_nats_url="nats://127.0.0.1:4222, nats://127.0.0.1:4223").publish_nats_url
