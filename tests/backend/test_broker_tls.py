"""TLS to the broker, once, on loopback: a private Mosquitto with a TLS-only listener (the shipped
configuration plus a certificate this test makes), a real gate and the real backend over mqtts://, and a
client that does not trust the test's CA refused at the handshake."""

from __future__ import annotations

import asyncio
import datetime as dt
import getpass
import ipaddress
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from backend.broker import free_port
from backend.config import Settings
from backend.db import make_engine
from backend.deploy.mosquitto_config import write_config
from backend.mqtt import MqttClient
from backend.runtime import serve
from backend.tables import TapRow
from fare_core import compiler, rules
from faregate.station import GateSpec, SimStation
from firmware_sim.config import BarrierConfig, DeviceConfig
from firmware_sim.population import Phone, Population

MOSQUITTO = "/usr/sbin/mosquitto"
TINY = Path(__file__).resolve().parents[2] / "fare_core" / "examples" / "tiny.toml"
pytestmark = [pytest.mark.mosquitto, pytest.mark.security]


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_ca_and_server(out: Path) -> tuple[Path, Path, Path]:
    """A CA (ca.pem) and a server certificate for 127.0.0.1 signed by it (server.pem, server.key)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("faregate test CA")
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, encipher_only=False,
                                     decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    paths = out / "ca.pem", out / "server.pem", out / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[2].chmod(0o600)
    return paths


@dataclass
class TlsBroker:
    url: str  # mqtts://127.0.0.1:port, no credentials
    ca: Path
    passwords: dict[str, str]


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[TlsBroker]:
    if not (Path(MOSQUITTO).exists() and shutil.which("mosquitto_passwd")):
        if os.environ.get("CI") == "true":
            pytest.fail("mosquitto is not installed and CI=true")
        pytest.skip("mosquitto is not installed")
    ca, cert, key = make_ca_and_server(tmp_path)
    port = free_port()
    passwords = write_config(tmp_path / "broker", "tls", ["1-1"], "backend", "backend-secret", port=port,
                             run_as=getpass.getuser(), tls=(ca, cert, key), acl_prefix="+")
    passwords["backend"] = "backend-secret"
    process = subprocess.Popen([MOSQUITTO, "-c", str(tmp_path / "broker" / "mosquitto.conf")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise AssertionError(f"mosquitto did not start: {process.stderr.read()!r}") from None
                time.sleep(0.05)
        yield TlsBroker(f"mqtts://127.0.0.1:{port}", ca, passwords)
    finally:
        process.terminate()
        process.wait(10)
        if process.stderr is not None:
            process.stderr.close()


def settings_for(tmp_path: Path, broker: TlsBroker, ca: Path | None) -> Settings:
    return Settings(
        environment="development", database_url=f"sqlite+aiosqlite:///{tmp_path / 'backend.db'}",
        mqtt_url=broker.url, mqtt_version="5", mqtt_username="backend", mqtt_password="backend-secret",
        mqtt_ca_file=str(ca) if ca else None, mqtt_prefix=f"t{uuid.uuid4().hex[:8]}",
        ingest_group=f"g{uuid.uuid4().hex[:8]}", ingest_client_id=f"ingest-{uuid.uuid4().hex[:8]}",
        ingest_batch_wait_ms=5)


async def stored(settings: Settings) -> list[str]:
    engine = make_engine(settings)
    try:
        async with engine.connect() as connection:
            return list((await connection.execute(select(TapRow.tap_id))).scalars().all())
    finally:
        await engine.dispose()


async def test_a_gate_and_the_backend_over_tls_and_a_tap_goes_through(tls_broker: TlsBroker,
                                                                      tmp_path: Path) -> None:
    settings = settings_for(tmp_path, tls_broker, tls_broker.ca)
    table = compiler.compile_rules(rules.load_rules(TINY), version=2)
    stop = asyncio.Event()
    backend = asyncio.create_task(serve(settings, api=False, ingest=True, stop=stop, install_signals=False))
    try:
        device = DeviceConfig(barrier=BarrierConfig(travel_ms=30, passage_ms=60))
        async with SimStation(tmp_path / "gates", [GateSpec(1, 1, "entry")],
                              Population([Phone(card_id=0x7001, balance=5000)]), table, device=device,
                              mqtt_url=tls_broker.url, prefix=settings.mqtt_prefix,
                              passwords={"1-1": tls_broker.passwords["1-1"]},
                              mqtt_options={"ca_file": str(tls_broker.ca)}) as station:
            uplink = station.gates[0].uplink
            assert uplink is not None and uplink.tls_context is not None
            await asyncio.wait_for(uplink.connected.wait(), 15)
            entry = await station.tap(0x7001, 0)
            assert entry.passed_at is not None
            deadline = asyncio.get_running_loop().time() + 20
            while await stored(settings) != ["1-1:1"]:
                assert asyncio.get_running_loop().time() < deadline, "the tap did not reach the database"
                await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(backend, 30)


async def test_a_client_that_does_not_trust_the_ca_is_refused(tls_broker: TlsBroker, tmp_path: Path) -> None:
    trusting = MqttClient(settings_for(tmp_path, tls_broker, tls_broker.ca), f"ok-{uuid.uuid4().hex[:6]}")
    untrusting = MqttClient(settings_for(tmp_path, tls_broker, None), f"no-{uuid.uuid4().hex[:6]}")
    try:
        await trusting.wait_connected(timeout=10)  # the same broker, the same login: only the CA differs
        with pytest.raises(TimeoutError):
            await untrusting.wait_connected(timeout=3)
    finally:
        await trusting.aclose()
        await untrusting.aclose()
