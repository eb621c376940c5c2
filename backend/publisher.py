"""The backend's outgoing MQTT: one paho client shared by the API and the control handlers.

`publish()` waits for the broker's PUBACK (in a thread, so the event loop never blocks), which is
what lets the API answer "deny-list version N published" truthfully.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from protocol.mqtt import Payload, Topics, encode

from .config import Settings
from .mqtt import Connected, make_client

log = logging.getLogger("faregate.publisher")


class Publisher:
    def __init__(self, settings: Settings, client_id: str | None = None) -> None:
        self.settings = settings
        self.topics = Topics(settings.mqtt_prefix)
        self.client, self._connect = make_client(
            settings, client_id or f"faregate-api-{uuid.uuid4().hex[:8]}"
        )
        self._connected = Connected()
        self.client.on_connect = self._connected.on_connect
        self._started = False

    def start(self) -> None:
        """Connect in the background (paho reconnects by itself); publishing waits for the connection."""
        if not self._started:
            self.client.connect_async(**self._connect)
            self.client.loop_start()
            self._started = True

    def stop(self) -> None:
        if self._started:
            self.client.disconnect()
            self.client.loop_stop()
            self._started = False

    async def publish(
        self, topic: str, message: Payload | bytes, *, retain: bool = False, timeout: float = 10.0
    ) -> None:
        payload = message if isinstance(message, bytes) else encode(message)
        self.start()

        def _send() -> None:
            if not self._connected.event.wait(timeout):
                raise TimeoutError(f"MQTT broker not connected ({self._connected.reason or 'no answer'})")
            info = self.client.publish(topic, payload, qos=1, retain=retain)
            info.wait_for_publish(timeout)
            if not info.is_published():
                raise TimeoutError(f"no PUBACK for {topic} within {timeout} s")

        await asyncio.to_thread(_send)
