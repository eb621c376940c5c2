"""A station server linked to the test cluster by a relay, as the relay tests and the backend's NATS
publisher tests use it: the station (Mosquitto with a relay account, no bridge), a gate listening at it,
and a relay connected to both."""

from __future__ import annotations

import secrets
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

import fare_core
from backend.broker import free_port
from backend.config import Settings
from backend.relay import RELAY_USER, StationRelay
from faregate.city.cluster import NatsCluster
from faregate.city.station import BrokerFiles, Mosquitto, write_station
from faregate.simgate import tap_payload
from protocol.mqtt import DEVELOPMENT_SIGNING_SEED, DenyListSnapshotMessage, Signer, Topics, encode, gate_id
from tests.city.citytools import until

STATION = 31
GATES = [1, 2, 3]


class Station:
    """A station server with a relay account and no bridge: the relay links it to the cluster."""

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


class GateListener:
    """One gate at its station, subscribed to what a gate subscribes to (its own acks, the deny-list)."""

    def __init__(self, station: Station, gate_no: int) -> None:
        self.topics = Topics(station.prefix)
        gate = gate_id(STATION, gate_no)
        self.seen: list[tuple[str, bytes, bool]] = []
        self.client = station.client(gate, station.files.passwords[gate])
        self.client.on_message = lambda _c, _u, m: self.seen.append((m.topic, bytes(m.payload), m.retain))
        self.client.subscribe([(self.topics.committed(gate), 1), (f"{self.topics.prefix}/denylist/#", 1)])

    def payloads(self, topic: str) -> list[bytes]:
        return [payload for t, payload, _ in self.seen if t == topic]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def signed_snapshot(version: int, seed: bytes = DEVELOPMENT_SIGNING_SEED) -> bytes:
    """A deny-list snapshot (one phone) signed as the backend signs it (another `seed`: a forgery)."""
    card = 0x1000 + version
    checksum = fare_core.DenyList([card], version=version).checksum
    return encode(Signer(seed).sign(DenyListSnapshotMessage(
        version=version, card_ids=[card], checksum=checksum, time=datetime.now(UTC))))


async def relay_connected(station: Station, cluster: NatsCluster) -> StationRelay:
    relay = StationRelay(Settings(mqtt_prefix=station.prefix), station.relay_url, cluster.ingest_url)
    await relay.start()
    await until(lambda: relay.connected, 30, "the relay connected to its station and the cluster")
    return relay
