"""The backend's outgoing messages to the gates: one client shared by the API and the control handlers,
MQTT to the broker, or with `publish_nats_url` NATS publishes on the cluster (backend/nats_publisher.py).

`publish()` returns only once the broker's PUBACK is in, which is what lets the API answer "deny-list
version N published" truthfully. The client (backend/mqtt.py) runs on the caller's event loop and
connects on the first publish. Every payload model that has a signature field is signed here with the
backend's key, so no message to a gate can leave unsigned (docs/security.md).
"""

from __future__ import annotations

import uuid

from protocol.mqtt import Payload, Topics, encode

from .config import Settings
from .ingest.authn import signer
from .mqtt import MqttClient, PublishRefused
from .nats_publisher import NatsPublisherLink


class Publisher:
    def __init__(self, settings: Settings, client_id: str | None = None) -> None:
        self.settings = settings
        self.topics = Topics(settings.mqtt_prefix)
        name = client_id or f"faregate-api-{uuid.uuid4().hex[:8]}"
        self.link: MqttClient | NatsPublisherLink = (
            NatsPublisherLink(settings.publish_nats_url, settings.mqtt_prefix, name,
                              ca_file=settings.nats_ca_file)
            if settings.publish_nats_url else MqttClient(settings, name))
        self.signer = signer(settings)

    def start(self) -> None:
        """Connect in the background (reconnecting with back-off); needs the running event loop."""
        self.link.start()

    def stop(self) -> None:
        """Close at once (synchronous); `aclose()` also waits for the connection task to end."""
        self.link.close()

    async def aclose(self) -> None:
        await self.link.aclose()

    async def wait_connected(self, timeout: float | None = None) -> None:
        await self.link.wait_connected(timeout)

    async def publish(
        self, topic: str, message: Payload | bytes, *, retain: bool = False, timeout: float = 10.0
    ) -> None:
        """QoS 1. TimeoutError whenever the broker's PUBACK is not in within `timeout`: no connection,
        the connection lost first (the message is then not sent again), or a v5 refusal; the API
        routes answer 503 "saved, but not published" on it."""
        if isinstance(message, Payload) and "sig" in type(message).model_fields:
            message = self.signer.sign(message)
        payload = message if isinstance(message, bytes) else encode(message)
        try:
            await self.link.publish(topic, payload, qos=1, retain=retain, timeout=timeout)
        except (ConnectionError, PublishRefused) as error:
            raise TimeoutError(f"{topic} not confirmed by the broker: {error}") from error
