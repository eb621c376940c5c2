"""A plain paho client acting as a gate in tests: publishes taps, records what the backend sends back."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from backend.mqtt import BrokerAddress


class GateClient:
    def __init__(
        self,
        url: str,
        version: str,
        subscriptions: list[str],
        username: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
        will: tuple[str, bytes] | None = None,
    ) -> None:
        address = BrokerAddress.parse(url)
        protocol = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            protocol=protocol,
            client_id=client_id or f"gate-{uuid.uuid4().hex[:8]}",
        )
        if username:
            self.client.username_pw_set(username, password)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.received: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.connected = threading.Event()
        self.refused: Any = None
        self.subscriptions = subscriptions
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.max_inflight_messages_set(100)
        self.client.connect(address.host, address.port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            self.refused = reason
            return
        self.connected.set()
        if self.subscriptions:
            client.subscribe([(topic, 1) for topic in self.subscriptions])
        else:
            self.subscribed.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.received.append((message.topic, bytes(message.payload), bool(message.retain)))

    def wait_ready(self, timeout: float = 10.0) -> None:
        if not self.subscribed.wait(timeout):
            raise AssertionError(f"gate client not subscribed (refused: {self.refused})")

    def publish(self, topic: str, payload: bytes, qos: int = 1, timeout: float = 10.0) -> None:
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(timeout)

    def messages(self, topic: str) -> list[bytes]:
        with self.lock:
            return [payload for t, payload, _ in self.received if t == topic]

    def vanish(self) -> None:
        """Drop the connection without DISCONNECT, as a gate losing power does."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
