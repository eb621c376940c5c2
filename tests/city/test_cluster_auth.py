"""The cluster's accounts (faregate/city/cluster_auth.py) against a stranger on the station network and a
stolen relay password: a client without the password is refused; a relay's account publishes its own
gates' uplink and nothing else (no other station's gate, no downlink subject, no stream deleted), reads
its own gates' downlink and replies only; and a relay on its account still does its whole job."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import nats
import nats.errors
import pytest

from backend.config import Settings
from backend.ingest.stream import STREAM, connect_cluster, ensure_stream, stream_config
from backend.mqtt import BrokerAddress
from backend.relay import StationRelay
from backend.state_stream import STATE_STREAM, state_stream_config
from faregate.city.cluster import NatsCluster
from faregate.city.cluster_auth import ADMIN_USER, ClusterAccounts
from faregate.simgate import tap_payload
from protocol.mqtt import Topics, gate_id
from tests.city.citytools import require_nats, until
from tests.city.stationtools import GATES, STATION, GateListener, Station, signed_snapshot

pytestmark = [pytest.mark.security]

OTHER_STATION = STATION + 1


@pytest.fixture
def guarded(tmp_path: Path, city_prefix: str) -> Iterator[NatsCluster]:
    """A 3-node cluster with accounts: the backend, station 31's relay and station 32's relay."""
    require_nats()
    accounts = ClusterAccounts(city_prefix)
    accounts.add_relay("relay-31", [gate_id(STATION, no) for no in GATES])
    accounts.add_relay("relay-32", [gate_id(OTHER_STATION, 1)])
    with NatsCluster(tmp_path / "nats", accounts=accounts) as running:
        yield running


def relay_urls(cluster: NatsCluster, user: str) -> list[str]:
    assert cluster.accounts is not None
    return cluster.urls_as(user, cluster.accounts.relays[user].password)


class Client:
    """A nats-py connection that records the server's asynchronous errors (permission violations)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: Any = None

    async def connect(self, urls: list[str]) -> Client:
        async def error(e: Exception) -> None:
            self.errors.append(str(e))

        self.nc = await connect_cluster(urls, "test", error_cb=error)
        return self

    def refused(self, subject: str) -> bool:
        return any("permissions violation" in e.lower() and subject.lower() in e.lower() for e in self.errors)


async def backend_ready(cluster: NatsCluster, prefix: str) -> Any:
    """The backend's connection, with both streams made (a relay may only read them)."""
    nc = await connect_cluster(cluster.urls, "backend")
    js = nc.jetstream(timeout=10)
    await ensure_stream(js, stream_config(prefix, 3))
    await ensure_stream(js, state_stream_config(Topics(prefix), 3))
    return nc


async def test_a_client_without_the_cluster_password_is_refused(guarded: NatsCluster) -> None:
    """Spoken in NATS's own protocol on a socket (nats-py leaks its writer on a refused login)."""
    for login in ({}, {"user": "faregate-backend", "pass": "wrong"}, {"user": "relay-31", "pass": "wrong"}):
        for node in guarded.nodes:
            reader, writer = await asyncio.open_connection("127.0.0.1", node.client_port)
            try:
                assert (await reader.readline()).startswith(b"INFO ")
                connect = json.dumps({"verbose": False, "pedantic": False, **login})
                writer.write(f"CONNECT {connect}\r\nPING\r\n".encode())
                await writer.drain()
                answer = await asyncio.wait_for(reader.readline(), 5)
                assert answer.startswith(b"-ERR 'Authorization Violation'"), answer
            finally:
                writer.close()
                await writer.wait_closed()


async def test_a_relay_account_publishes_its_own_gates_uplink_and_nothing_else(
    guarded: NatsCluster, city_prefix: str
) -> None:
    backend = await backend_ready(guarded, city_prefix)
    relay = await Client().connect(relay_urls(guarded, "relay-31"))
    seen: list[tuple[str, bytes]] = []
    try:
        async def append(message: Any) -> None:
            seen.append((message.subject, message.data))

        acks = await backend.subscribe(f"{city_prefix}.gates.*.committed", cb=append)
        await backend.flush()
        js = relay.nc.jetstream(timeout=2)
        own = f"{city_prefix}.gates.{gate_id(STATION, 1)}.taps"
        await js.publish(own, tap_payload(STATION, 1, 1))  # acknowledged: stored
        other = f"{city_prefix}.gates.{gate_id(OTHER_STATION, 1)}.taps"
        with pytest.raises(nats.errors.TimeoutError):  # dropped by the node: no acknowledgement comes
            await js.publish(other, tap_payload(OTHER_STATION, 1, 1))
        forged_ack = f"{city_prefix}.gates.{gate_id(STATION, 1)}.committed"
        await relay.nc.publish(forged_ack, b'{"forged": true}')
        with pytest.raises(nats.errors.TimeoutError):
            await js.delete_stream(STREAM)
        await relay.nc.flush()
        await backend.publish(forged_ack, b"genuine")  # the backend's own ack, after the forgery
        await until(lambda: seen, 5, "the backend's ack")
        await until(lambda: relay.refused(other) and relay.refused(forged_ack), 5, "the violations reported")
        assert seen == [(forged_ack, b"genuine")]
        info = await backend.jetstream().stream_info(STREAM)
        assert info.state.messages == 1  # the stream is there, holding the one tap of its own gate
        stored = await backend.jetstream().get_msg(STREAM, info.state.last_seq)
        assert json.loads(stored.data)["tap_id"] == f"{gate_id(STATION, 1)}:1"
        await acks.unsubscribe()
    finally:
        await relay.nc.close()
        await backend.close()


async def test_the_backend_account_cannot_wipe_the_streams_and_the_admin_account_can(
    guarded: NatsCluster, city_prefix: str
) -> None:
    """A compromised worker or API host holds the backend's login: it must not be able to delete, purge
    or reconfigure the uplink stream (taps not yet stored), delete a message or the ingest's consumer.
    Each request is dropped by the node (no answer comes, the violation is reported); the stream keeps
    its tap. The admin account, which no process runs on, can."""
    backend = await backend_ready(guarded, city_prefix)
    worker = await Client().connect(guarded.urls)
    assert guarded.accounts is not None
    admin = await connect_cluster(guarded.urls_as(ADMIN_USER, guarded.accounts.admin_password), "admin")
    try:
        js = worker.nc.jetstream(timeout=2)
        await js.publish(f"{city_prefix}.gates.{gate_id(STATION, 1)}.taps", tap_payload(STATION, 1, 1))
        await js.add_consumer(STREAM, durable_name="ingest-test", ack_policy="explicit")  # allowed: makes
        with pytest.raises(nats.errors.TimeoutError):
            await js.purge_stream(STREAM)
        with pytest.raises(nats.errors.TimeoutError):
            await js.delete_msg(STREAM, 1)
        with pytest.raises(nats.errors.TimeoutError):
            await js.delete_consumer(STREAM, "ingest-test")
        with pytest.raises(nats.errors.TimeoutError):
            await js.update_stream(stream_config(city_prefix, 3))
        with pytest.raises(nats.errors.TimeoutError):
            await js.delete_stream(STREAM)
        await until(lambda: all(worker.refused(f"$JS.API.{what}.{STREAM}") for what in
                                ("STREAM.PURGE", "STREAM.MSG.DELETE", "CONSUMER.DELETE", "STREAM.UPDATE",
                                 "STREAM.DELETE")), 5, "the violations reported")
        info = await backend.jetstream().stream_info(STREAM)
        assert info.state.messages == 1
        assert await admin.jetstream(timeout=10).delete_stream(STREAM) is True
    finally:
        await worker.nc.close()
        await admin.close()
        await backend.close()


async def test_a_relay_account_reads_its_own_gates_downlink_and_replies_only(
    guarded: NatsCluster, city_prefix: str
) -> None:
    backend = await backend_ready(guarded, city_prefix)
    relay = await Client().connect(relay_urls(guarded, "relay-31"))
    got: list[str] = []
    try:
        own = f"{city_prefix}.gates.{gate_id(STATION, 1)}.committed"
        other = f"{city_prefix}.gates.{gate_id(OTHER_STATION, 1)}.committed"
        async def append(message: Any) -> None:
            got.append(message.subject)

        for subject in (own, other, "_INBOX.>", f"{city_prefix}.gates.*.taps"):
            await relay.nc.subscribe(subject, cb=append)
        await relay.nc.flush()
        await until(lambda: relay.refused(other) and relay.refused("_INBOX.>"), 5,
                    "the refusals reported")
        await asyncio.sleep(0.2)
        for subject in (other, own):  # another station's ack first, then its own
            await backend.publish(subject, b"ack")
        await backend.jetstream().stream_info(STREAM)  # a request: its reply goes to the backend's inbox
        await backend.publish(f"{city_prefix}.gates.{gate_id(OTHER_STATION, 1)}.taps", b"x")
        await until(lambda: got, 5, "its own gate's ack")
        await asyncio.sleep(0.3)
        assert got == [own]
    finally:
        await relay.nc.close()
        await backend.close()


@pytest.mark.mosquitto
@pytest.mark.slow
async def test_a_relay_on_its_own_account_forwards_taps_and_hands_down_blocks(
    guarded: NatsCluster, city_prefix: str, tmp_path: Path, mosquitto_tools: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    topics = Topics(city_prefix)
    backend = await backend_ready(guarded, city_prefix)
    station = Station(tmp_path / "station", city_prefix, guarded)
    station.broker.start()
    relay = StationRelay(Settings(mqtt_prefix=city_prefix), station.relay_url,
                         ",".join(relay_urls(guarded, "relay-31")))
    listener: GateListener | None = None
    try:  # state published before the relay runs: it fetches it on its account when it connects
        snapshot = signed_snapshot(1)
        await backend.jetstream().publish(f"{city_prefix}.denylist.snapshot", snapshot, stream=STATE_STREAM)
        await relay.start()
        await until(lambda: relay.connected, 30, "the relay connected on its account")
        listener = GateListener(station, 1)
        await until(lambda: listener.payloads(topics.denylist_snapshot) == [snapshot], 30,
                    "the fetched state retained at the station")
        await asyncio.to_thread(station.tap, 1, range(1, 4))
        js = backend.jetstream()
        await until_async(lambda: _messages(js), 3, 20, "the three taps in the stream")
        async with asyncio.timeout(10):
            while not listener.payloads(topics.denylist_delta):
                await backend.publish(f"{city_prefix}.denylist.delta", b"delta-1")
                await asyncio.sleep(0.2)
        assert relay.stats["forwarded"] >= 3 and relay.stats["refused"] == 0
        assert relay.stats["state_fetched"] >= 1
        said = caplog.text  # what it logged names its nodes, never its password (logs are read widely)
        assert "forwarding into" in said
        assert guarded.accounts is not None and guarded.accounts.relays["relay-31"].password not in said
    finally:
        if listener is not None:
            listener.close()
        await relay.aclose()
        station.broker.stop()
        await backend.close()


async def _messages(js: Any) -> int:
    return int((await js.stream_info(STREAM)).state.messages)


async def until_async(read: Any, want: int, timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while await read() < want:
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def test_the_cluster_command_starts_with_accounts_and_keeps_their_passwords_in_a_private_file(
    tmp_path: Path, city_prefix: str
) -> None:
    """`python3 -m faregate.city.cluster`, as docs/deployment.md runs it by hand: accounts on unless
    `--open`; the logins in <dir>/accounts.json (mode 0600), none on the screen; a client without one
    refused on NATS and on the MQTT gateway, the backend's login taken on both; a relay's range of
    gates expanded into its account."""
    require_nats()
    directory = tmp_path / "nats"
    directory.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "faregate.city.cluster", "--dir", str(directory), "--prefix", city_prefix,
         "--relay", f"r1={STATION}-1..3,{OTHER_STATION}-2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(3)]
        assert lines[2].startswith("logins"), "".join(lines) + process.stdout.read(2000)
        path = directory / "accounts.json"
        for private in (path, directory / "backend.env", directory / "relay-r1.env"):
            assert (private.stat().st_mode & 0o777) == 0o600, private
        assert (directory / "backend.env").read_text().startswith("FAREGATE_INGEST_FROM=nats://")
        logins = json.loads(path.read_text())
        secrets = [logins["backend"]["nats"], *logins["relays"]["r1"]["nats"].split(",")]
        assert not any(secret.split("@")[0] in "".join(lines) for secret in secrets)
        assert logins["relays"]["r1"]["gates"] == sorted(
            [gate_id(STATION, n) for n in (1, 2, 3)] + [gate_id(OTHER_STATION, 2)])
        mqtt_port = int(lines[1].split(": ")[1].split(",")[0].rsplit(":", 1)[1])
        asyncio.run(_logins(lines[0].split(": ")[1].split(",")[0].strip(), logins["backend"]["nats"],
                            mqtt_port, logins["backend"]["mqtt"][0]))
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


async def _logins(open_url: str, backend_urls: str, mqtt_port: int, backend_mqtt: str) -> None:
    host, port = open_url.removeprefix("nats://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        await reader.readline()
        writer.write(b'CONNECT {"verbose": false, "pedantic": false}\r\nPING\r\n')
        await writer.drain()
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"-ERR 'Authorization Violation'")
    finally:
        writer.close()
        await writer.wait_closed()
    nc = await connect_cluster(backend_urls.split(","), "backend")
    await nc.close()
    for url, accepted in ((f"mqtt://127.0.0.1:{mqtt_port}", False), (backend_mqtt, True)):
        address = BrokerAddress.parse(url)
        client = aiomqtt.Client(address.host, address.port, username=address.username,
                                password=address.password, protocol=aiomqtt.ProtocolVersion.V311)
        if accepted:
            async with client:
                pass
        else:
            with pytest.raises(aiomqtt.MqttError):
                async with client:
                    pass
