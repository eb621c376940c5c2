"""Attacks on the brokers' login and ACL, on both the embedded amqtt (as `faregate demo` runs it) and
Mosquitto on the shipped configuration: anonymous or wrong logins are refused, and a logged-in gate can
neither speak for another gate nor forge what only the backend may send.

The tests are async and block only in threads: the embedded broker runs on the test's event loop."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from backend.broker import embedded_broker, free_port
from backend.config import Settings
from backend.deploy.accounts import BrokerAccounts
from backend.deploy.acl import acl_rules, acl_text, allowed
from faregate.simgate import SimUplink
from protocol.mqtt import Topics

pytestmark = pytest.mark.security


@dataclass
class Secured:
    name: str
    url: str  # no credentials in it
    accounts: BrokerAccounts
    topics: Topics

    def client(self, user: str | None, subscribe: list[str], password: str | None = None) -> SimUplink:
        """A client with just these subscriptions, logged in as `user` (its own password by default)."""
        if user is not None and password is None:
            password = self.accounts.passwords.get(user)
        uplink = SimUplink(self.url, self.topics, username=user, password=password, subscribe=subscribe,
                           client_id=f"{user}-{uuid.uuid4().hex[:6]}")
        uplink.start()
        return uplink


@pytest.fixture(params=["amqtt", pytest.param("mosquitto-shipped", marks=pytest.mark.mosquitto)])
async def secured(request: pytest.FixtureRequest) -> AsyncIterator[Secured]:
    topics = Topics(f"t{uuid.uuid4().hex[:10]}")
    if request.param == "amqtt":
        accounts = BrokerAccounts.generate(["12-3", "12-4"])
        async with embedded_broker(free_port(), accounts, topics.prefix) as url:
            yield Secured("amqtt", url, accounts, topics)
        return
    shipped = request.getfixturevalue("shipped_mosquitto")
    yield Secured("mosquitto-shipped", f"mqtt://127.0.0.1:{shipped.port}", shipped.accounts, topics)


def wait(condition: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.02)


@pytest.mark.parametrize("login", ["anonymous", "wrong password", "unknown user", "backend, gate's password"])
async def test_anonymous_and_wrong_logins_are_refused(secured: Secured, login: str) -> None:
    user, password = {
        "anonymous": (None, None),
        "wrong password": ("12-3", "not-the-password"),
        "unknown user": ("99-9", "x"),
        "backend, gate's password": (secured.accounts.backend_user, secured.accounts.passwords["12-3"]),
    }[login]
    refused = secured.client(user, [], password)
    try:
        await asyncio.to_thread(wait, lambda: refused.refused is not None)
        assert not refused.connected.is_set()
    finally:
        await asyncio.to_thread(refused.close)


async def test_a_gate_publishes_its_own_taps_only(secured: Secured) -> None:
    t = secured.topics
    backend = secured.client(secured.accounts.backend_user, [t.all_taps, t.all_status])
    gate = secured.client("12-3", [])
    try:
        await asyncio.to_thread(backend.wait_ready)
        await asyncio.to_thread(gate.wait_ready)
        await asyncio.to_thread(gate.publish, t.taps("12-4"), b"forged tap of another gate")
        await asyncio.to_thread(gate.publish, t.status("12-4"), b"forged status of another gate")
        await asyncio.to_thread(gate.publish, t.taps("12-3"), b"own tap")
        await asyncio.to_thread(wait, lambda: backend.messages(t.taps("12-3")))
        assert backend.messages(t.taps("12-3")) == [b"own tap"]
        # published first on the same connection: had the broker passed them, they would be here
        assert backend.messages(t.taps("12-4")) == [] and backend.messages(t.status("12-4")) == []
    finally:
        await asyncio.to_thread(backend.close)
        await asyncio.to_thread(gate.close)


async def test_a_gate_cannot_forge_what_only_the_backend_sends(secured: Secured) -> None:
    t = secured.topics
    victim = secured.client("12-4", [t.committed("12-4"), t.command("12-4"), t.denylist_delta, t.fare_table,
                                     t.actions])
    forger = secured.client("12-3", [])
    backend = secured.client(secured.accounts.backend_user, [])
    try:
        await asyncio.to_thread(victim.wait_ready)
        await asyncio.to_thread(forger.wait_ready)
        await asyncio.to_thread(backend.wait_ready)
        for topic in (t.committed("12-4"), t.command("12-4"), t.denylist_delta, t.fare_table, t.actions,
                      t.committed("12-3")):
            await asyncio.to_thread(forger.publish, topic, b"forged")
        await asyncio.to_thread(backend.publish, t.actions, b"genuine")
        await asyncio.to_thread(wait, lambda: victim.messages(t.actions))
        for topic in (t.committed("12-4"), t.command("12-4"), t.denylist_delta, t.fare_table):
            assert victim.messages(topic) == [], topic
        assert victim.messages(t.actions) == [b"genuine"]
    finally:
        await asyncio.to_thread(victim.close)
        await asyncio.to_thread(forger.close)
        await asyncio.to_thread(backend.close)


async def test_a_gate_reads_its_own_acks_and_the_shared_lists_only(secured: Secured) -> None:
    t = secured.topics
    # a wildcard over every gate's acks is refused as a whole; the shared lists and its own acks are not
    gate = secured.client("12-3", [t.committed("12-3"), t.committed("12-4"), f"{t.prefix}/gates/+/committed",
                                   f"{t.prefix}/#", t.denylist_delta])
    backend = secured.client(secured.accounts.backend_user, [])
    try:
        await asyncio.to_thread(gate.wait_ready)
        await asyncio.to_thread(backend.wait_ready)
        await asyncio.to_thread(backend.publish, t.committed("12-4"), b"other gate's ack")
        await asyncio.to_thread(backend.publish, t.taps("12-4"), b"other gate's tap")
        await asyncio.to_thread(backend.publish, t.committed("12-3"), b"own ack")
        await asyncio.to_thread(backend.publish, t.denylist_delta, b"delta")
        got_both = lambda: gate.messages(t.denylist_delta) and gate.messages(t.committed("12-3"))  # noqa: E731
        await asyncio.to_thread(wait, got_both)
        assert gate.messages(t.committed("12-3")) == [b"own ack"]
        assert gate.messages(t.denylist_delta) == [b"delta"]
        assert gate.messages(t.committed("12-4")) == [] and gate.messages(t.taps("12-4")) == []
    finally:
        await asyncio.to_thread(gate.close)
        await asyncio.to_thread(backend.close)


def test_one_rule_list_makes_both_brokers_acls() -> None:
    """The Mosquitto file is a rendering of the rules amqtt evaluates: every rule is a line of it."""
    rules = acl_rules("faregate", "faregate-backend")
    text = acl_text("faregate", "faregate-backend")
    for rule in rules:
        kind = "topic" if rule.user else "pattern"
        assert f"{kind} {rule.access} {rule.topic}" in text.splitlines()
    assert allowed(rules, "12-3", "faregate/gates/12-3/taps", "write")
    assert not allowed(rules, "12-3", "faregate/gates/12-4/taps", "write")
    assert not allowed(rules, "+", "faregate/gates/+/taps", "write")  # a username is never a wildcard
    assert not allowed(rules, None, "faregate/denylist/delta", "read")
    assert allowed(rules, "12-3", "faregate/denylist/#", "subscribe")
    assert not allowed(rules, "12-3", "faregate/#", "subscribe")
    assert allowed(rules, "faregate-backend", "faregate/gates/+/taps", "subscribe")
    assert not allowed(rules, "faregate-backend", "other/gates/12-3/taps", "write")


def test_production_refuses_to_start_without_mqtt_credentials() -> None:
    """The MQTT check alone (the other production secrets are other tests' business and keep growing)."""

    def production(**values: Any) -> Settings:
        fields = {**Settings().model_dump(), "environment": "production", **values}
        settings = Settings.model_construct(**fields)
        return settings._mqtt_credentials_outside_development()

    for missing in ({}, {"mqtt_username": "faregate-backend"}, {"mqtt_password": "pw"}):
        with pytest.raises(ValueError, match="FAREGATE_MQTT_USERNAME and FAREGATE_MQTT_PASSWORD"):
            production(**missing)
    production(mqtt_username="faregate-backend", mqtt_password="pw")
    production(mqtt_url="mqtts://faregate-backend:pw@broker:8883")
    assert Settings(environment="development").mqtt_username is None  # development still runs as before


def test_the_embedded_broker_is_never_open_by_accident() -> None:
    from backend.broker import embedded_config

    with pytest.raises(ValueError, match="allow_anonymous"):
        embedded_config(free_port())
