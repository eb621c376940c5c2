"""One reading of an MQTT URL (protocol/mqtt/address.py) for the gate's config and the backend's client."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from backend.mqtt import BrokerAddress
from gate.config import MqttConfig
from protocol.mqtt.address import MqttUrl, NotAnMqttUrl, for_log, parse_mqtt_url

CASES = [
    ("mqtt://broker:1884", MqttUrl("broker", 1884, None, None, False)),
    ("mqtt://Broker.Example", MqttUrl("broker.example", None, None, None, False)),
    ("tcp://10.0.0.5", MqttUrl("10.0.0.5", None, None, None, False)),
    ("mqtts://gate%2F1:p%40ss%3Aword@broker", MqttUrl("broker", None, "gate/1", "p@ss:word", True)),
    ("ssl://[::1]:9000", MqttUrl("::1", 9000, None, None, True)),
    ("mqtt://user@broker", MqttUrl("broker", None, "user", None, False)),
    ("mqtt://user:@broker", MqttUrl("broker", None, "user", None, False)),
    ("mqtt://:secret@broker", MqttUrl("broker", None, None, "secret", False)),
]


@pytest.mark.parametrize(("url", "expected"), CASES)
def test_an_mqtt_url_is_read_once_for_gate_and_backend(url: str, expected: MqttUrl) -> None:
    assert parse_mqtt_url(url) == expected
    tls_port = 8883 if expected.tls else 1883
    assert BrokerAddress.parse(url) == BrokerAddress(
        expected.host, expected.port or tls_port, expected.username, expected.password, expected.tls
    )
    gate = MqttConfig(url=url)
    assert gate.host_port == (expected.host, expected.port or tls_port)
    assert gate.tls is expected.tls
    # the gate logs in with the URL's user only when it has one (then with the URL's password, if any)
    if expected.username:
        assert (gate.username, gate.password) == (expected.username, expected.password)
    else:
        assert (gate.username, gate.password) == (None, None)


def test_the_gate_keeps_its_own_login_and_tls_rules() -> None:
    given = MqttConfig(url="mqtt://url-user:url-pass@broker", username="gate-7", password="pw")
    assert (given.username, given.password) == ("gate-7", "pw")
    with_ca = MqttConfig(url="mqtt://broker", ca_file=Path("/etc/ca.pem"))  # a CA file turns TLS on
    assert with_ca.tls and with_ca.host_port == ("broker", 8883)
    offline = MqttConfig(url=None)
    assert (offline.tls, offline.host_port) == (False, ("127.0.0.1", 1883))
    # a port no broker can have is refused when the config loads (it used to fail at the first connect)
    with pytest.raises(ValidationError, match="Port out of range"):
        MqttConfig(url="mqtt://broker:99999")


@pytest.mark.parametrize("url", ["http://broker", "mqtt://", "broker:1883", "mqtt:///path"])
def test_anything_else_is_refused(url: str) -> None:
    with pytest.raises(NotAnMqttUrl) as error:
        parse_mqtt_url(url)
    assert "broker" not in str(error.value)  # the message never repeats the URL (it may hold a password)


def test_the_backend_still_accepts_a_bare_host() -> None:
    assert BrokerAddress.parse("u:p@broker:1999") == BrokerAddress("broker", 1999, "u", "p", False)
    with pytest.raises(ValueError, match="unsupported MQTT URL"):
        BrokerAddress.parse("http://broker")
    with pytest.raises(ValueError, match="Port"):
        BrokerAddress.parse("mqtt://broker:99999")


@pytest.mark.security
def test_a_log_line_shows_a_cluster_s_urls_without_their_passwords() -> None:
    urls = ("nats://faregate-backend:s3cret-A@127.0.0.1:4222,nats://relay-31:p%40ss@127.0.0.1:4223,"
            "nats://127.0.0.1:4224")
    shown = for_log(urls)
    assert shown == ("nats://faregate-backend:***@127.0.0.1:4222,nats://relay-31:***@127.0.0.1:4223,"
                     "nats://127.0.0.1:4224")
    assert "s3cret" not in shown and "p%40ss" not in shown
    assert for_log("mqtt://gate-31-1@broker:1883") == "mqtt://gate-31-1@broker:1883"  # no password, as is
