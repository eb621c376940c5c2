"""The shipped Mosquitto configuration, on a real Mosquitto: per-gate passwords and the gate ACL."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.broker import free_port
from backend.deploy.mosquitto_config import write_config
from faregate.simgate import SimUplink
from protocol.mqtt import Topics

MOSQUITTO = "/usr/sbin/mosquitto"
pytestmark = pytest.mark.mosquitto


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], Topics]]:
    if not (Path(MOSQUITTO).exists() and shutil.which("mosquitto_passwd")):
        if os.environ.get("CI") == "true":
            pytest.fail("mosquitto is not installed and CI=true")
        pytest.skip("mosquitto is not installed")
    port = free_port()
    prefix = f"acl{os.getpid()}"
    passwords = write_config(
        tmp_path, prefix, ["12-3", "12-4"], "backend", "backend-secret", port=port, run_as=getpass.getuser()
    )
    passwords["backend"] = "backend-secret"
    process = subprocess.Popen(
        [MOSQUITTO, "-c", str(tmp_path / "mosquitto.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
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
        yield f"mqtt://127.0.0.1:{port}", passwords, Topics(prefix)
    finally:
        process.terminate()
        process.wait(10)
        if process.stderr is not None:
            process.stderr.close()


def client(
    url: str, topics: Topics, user: str | None, password: str | None, subscriptions: list[str]
) -> SimUplink:
    """A client with just these subscriptions: the gate under test, or one playing the backend."""
    uplink = SimUplink(url, topics, version="5", username=user, password=password, subscribe=subscriptions)
    uplink.start()
    return uplink


def test_a_gate_publishes_only_its_own_taps(secured: tuple[str, dict[str, str], Topics]) -> None:
    url, passwords, topics = secured
    backend = client(url, topics, "backend", passwords["backend"], [f"$share/ingest/{topics.all_taps}"])
    gate = client(url, topics, "12-3", passwords["12-3"], [])
    try:
        backend.wait_ready()
        gate.wait_ready()
        gate.publish(topics.taps("12-4"), b"forged tap of another gate")  # refused by the ACL
        gate.publish(topics.taps("12-3"), b"own tap")
        deadline = time.monotonic() + 10
        while not backend.messages(topics.taps("12-3")) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert backend.messages(topics.taps("12-3")) == [b"own tap"]
        # same connection, published first: had the broker let it through it would be here already
        assert backend.messages(topics.taps("12-4")) == []
    finally:
        backend.close()
        gate.close()


def test_a_gate_reads_its_own_acks_and_the_shared_lists_only(
    secured: tuple[str, dict[str, str], Topics],
) -> None:
    url, passwords, topics = secured
    gate = client(
        url,
        topics,
        "12-3",
        passwords["12-3"],
        [topics.committed("12-3"), topics.committed("12-4"), topics.denylist_delta],
    )
    backend = client(url, topics, "backend", passwords["backend"], [])
    try:
        gate.wait_ready()
        backend.wait_ready()
        backend.publish(topics.committed("12-4"), b"other gate's ack")
        backend.publish(topics.committed("12-3"), b"own ack")
        backend.publish(topics.denylist_delta, b"delta")
        deadline = time.monotonic() + 10
        while not gate.messages(topics.denylist_delta) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert gate.messages(topics.committed("12-3")) == [b"own ack"]
        assert gate.messages(topics.denylist_delta) == [b"delta"]
        assert gate.messages(topics.committed("12-4")) == []
    finally:
        gate.close()
        backend.close()


@pytest.mark.parametrize(("user", "password"), [("12-3", "wrong password"), (None, None), ("nobody", "x")])
def test_wrong_or_missing_credentials_are_refused(
    secured: tuple[str, dict[str, str], Topics], user: str | None, password: str | None
) -> None:
    url, _, topics = secured
    refused = client(url, topics, user, password, [])
    try:
        deadline = time.monotonic() + 10
        while refused.refused is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert refused.refused is not None and not refused.connected.is_set()
    finally:
        refused.close()


def test_the_shipped_packet_limit_carries_the_largest_message_the_contract_allows() -> None:
    """A deny-list snapshot the protocol accepts must not be dropped by the broker it ships with."""
    from datetime import UTC, datetime

    from protocol.mqtt import MAX_LIST_ITEMS, MAX_MESSAGE_BYTES, DenyListSnapshotMessage, encode

    conf = (Path(__file__).parents[2] / "backend" / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    (limit,) = [int(line.split()[1]) for line in conf.splitlines() if line.startswith("max_packet_size ")]
    assert limit >= MAX_MESSAGE_BYTES + 64 * 1024  # room for the topic and the MQTT header
    ids = range(0xFFFF_FFFF_0000_0000, 0xFFFF_FFFF_0000_0000 + MAX_LIST_ITEMS)
    snapshot = DenyListSnapshotMessage(version=1, card_ids=list(ids), checksum="0" * 16,
                                       time=datetime(2026, 12, 2, tzinfo=UTC), key_id="0" * 16, sig="00" * 64)
    assert len(encode(snapshot)) <= MAX_MESSAGE_BYTES
