"""The embedded broker (amqtt) for a demo, one station, and tests: no Mosquitto to install.

amqtt speaks MQTT 3.1.1 only and has no shared subscriptions, so a backend on it uses
mqtt_version="3.1.1" and a plain subscription (ingest_group=""); see docs/mqtt.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

from amqtt.broker import Broker
from amqtt.contexts import BrokerConfig, ListenerConfig


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def embedded_config(port: int) -> BrokerConfig:
    return BrokerConfig(
        listeners={"default": ListenerConfig(type="tcp", bind=f"127.0.0.1:{port}")},
        plugins={"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    )


@contextlib.asynccontextmanager
async def embedded_broker(port: int | None = None) -> AsyncIterator[str]:
    """Run amqtt on 127.0.0.1 (a free port unless given) for the block; yields its mqtt:// URL."""
    port = port or free_port()
    broker = Broker(embedded_config(port))
    await broker.start()
    try:
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        await broker.shutdown()
        await asyncio.sleep(0)
