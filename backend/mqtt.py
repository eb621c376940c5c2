"""paho-mqtt 2.x clients configured from Settings: URL parsing, v5 or 3.1.1, persistent sessions.

paho rather than aiomqtt because the ingest must acknowledge a message only after its database
commit (paho's manual_ack); aiomqtt acks on receipt and drops on a full queue (see DESIGN.md).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .config import Settings

SESSION_EXPIRY_S = 24 * 3600


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """mqtt://[user:password@]host[:port] (port 1883 by default)."""
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
            raise ValueError(f"unsupported MQTT URL {url!r} (expected mqtt://host:port)")
        return cls(
            parts.hostname,
            parts.port or 1883,
            unquote(parts.username) if parts.username else None,
            unquote(parts.password) if parts.password else None,
        )


def make_client(
    settings: Settings,
    client_id: str,
    *,
    manual_ack: bool = False,
    persistent: bool = False,
    url: str | None = None,
    version: str | None = None,
) -> tuple[mqtt.Client, dict[str, Any]]:
    """A configured client and the keyword arguments for its connect()/connect_async()."""
    address = BrokerAddress.parse(url or settings.mqtt_url)
    v5 = (version or settings.mqtt_version) == "5"
    protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
    kwargs: dict[str, Any] = {
        "callback_api_version": CallbackAPIVersion.VERSION2,
        "client_id": client_id,
        "protocol": protocol,
        "manual_ack": manual_ack,
    }
    if not v5:
        kwargs["clean_session"] = not persistent
    client = mqtt.Client(**kwargs)
    username = address.username or settings.mqtt_username
    password = address.password or settings.mqtt_password
    if username:
        client.username_pw_set(username, password)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    connect: dict[str, Any] = {"host": address.host, "port": address.port, "keepalive": 30}
    if v5:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if persistent:
            properties.SessionExpiryInterval = SESSION_EXPIRY_S
            connect["clean_start"] = False
        properties.ReceiveMaximum = settings.ingest_receive_maximum
        connect["properties"] = properties
    return client, connect


class Connected:
    """A threading.Event set by on_connect; lets synchronous callers wait for the first CONNACK."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason: str = ""

    def on_connect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason_code: Any, _properties: Any = None
    ) -> None:
        self.reason = str(reason_code)
        if not getattr(reason_code, "is_failure", False):
            self.event.set()
