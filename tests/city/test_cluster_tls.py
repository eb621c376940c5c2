"""TLS on the NATS cluster (faregate/city/cluster_tls.py): the nodes speak nothing in the clear, a client
that does not trust the cluster's CA is refused before it sends its login, and the backend and a relay
on tls:// URLs with the CA do their whole job across TLS routes (a three-replica stream)."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.config import Settings
from backend.ingest.stream import STREAM, connect_cluster, ensure_stream, stream_config
from backend.relay import StationRelay
from backend.state_stream import state_stream_config
from faregate.city.cluster import NatsCluster
from faregate.city.cluster_auth import ClusterAccounts
from faregate.city.cluster_tls import ClusterCertificates
from protocol.mqtt import Topics, gate_id
from tests.city.citytools import require_nats, until
from tests.city.stationtools import GATES, STATION, GateListener, Station

pytestmark = [pytest.mark.security]


@pytest.fixture
def sealed(tmp_path: Path, city_prefix: str) -> Iterator[NatsCluster]:
    """Three nodes with accounts and TLS on clients and routes."""
    require_nats()
    accounts = ClusterAccounts(city_prefix)
    accounts.add_relay("relay-31", [gate_id(STATION, no) for no in GATES])
    tls = ClusterCertificates.make(tmp_path / "tls")
    with NatsCluster(tmp_path / "nats", accounts=accounts, tls=tls) as running:
        yield running


async def test_a_node_speaks_nothing_in_the_clear_and_an_untrusting_client_is_refused(
        sealed: NatsCluster) -> None:
    assert sealed.accounts is not None and sealed.tls is not None
    for node in sealed.nodes:
        reader, writer = await asyncio.open_connection("127.0.0.1", node.client_port)
        try:  # the greeting asks for TLS; a login sent in the clear is answered with a refusal, not taken
            info = json.loads((await reader.readline()).split(b" ", 1)[1])
            assert info["tls_required"] is True
            login = {"verbose": False, "user": "faregate-backend", "pass": sealed.accounts.backend_password}
            writer.write(f"CONNECT {json.dumps(login)}\r\nPING\r\n".encode())
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(200), 10)
            assert b"PONG" not in answer and (answer == b"" or b"-ERR" in answer), answer
        finally:
            writer.close()
            await writer.wait_closed()
    # TLS, but trusting the system's CAs rather than the cluster's: the handshake fails before any login
    context = ssl.create_default_context()
    with pytest.raises(ssl.SSLCertVerificationError):
        reader, writer = await asyncio.open_connection("127.0.0.1", sealed.nodes[0].client_port)
        await reader.readline()  # INFO, then the upgrade as nats-py makes it
        await writer.start_tls(context, server_hostname="127.0.0.1")
    writer.close()


async def test_the_backend_and_a_relay_work_across_tls(sealed: NatsCluster, city_prefix: str, tmp_path: Path,
                                                       mosquitto_tools: None) -> None:
    assert sealed.accounts is not None and sealed.tls is not None
    ca = str(sealed.tls.ca_file)
    backend = await connect_cluster(sealed.urls, "backend", ca_file=ca)
    station = Station(tmp_path / "station", city_prefix, sealed)
    station.broker.start()
    relay_urls = ",".join(sealed.urls_as("relay-31", sealed.accounts.relays["relay-31"].password))
    relay = StationRelay(Settings(mqtt_prefix=city_prefix, nats_ca_file=ca), station.relay_url, relay_urls)
    listener = GateListener(station, 1)
    try:
        js = backend.jetstream(timeout=10)
        await ensure_stream(js, stream_config(city_prefix, 3))  # three replicas: the routes carry it
        await ensure_stream(js, state_stream_config(Topics(city_prefix), 3))
        await relay.start()
        await until(lambda: relay.connected, 30, "the relay connected over TLS")
        assert relay._nc.connected_url.scheme == "tls"
        await asyncio.to_thread(station.tap, 1, range(1, 4))
        await until(lambda: relay.stats["forwarded"] >= 3, 20, "three taps forwarded")
        assert (await js.stream_info(STREAM)).state.messages == 3
        async with asyncio.timeout(10):
            while not listener.payloads(Topics(city_prefix).denylist_delta):
                await backend.publish(f"{city_prefix}.denylist.delta", b"delta-1")
                await asyncio.sleep(0.2)
    finally:
        listener.close()
        await relay.aclose()
        station.broker.stop()
        await backend.close()
