"""backend.mqtt.MqttClient on real brokers (amqtt, Mosquitto): PUBACKs, manual acks, lost connections.

A relay on 127.0.0.1 sits between the client and the broker: it can hold the broker's answers (a
PUBACK that is late) and cut the connection (a lost connection), and it sees whether the client's
socket is still open. Nothing here is simulated but the network's misbehaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from backend.broker import free_port
from backend.config import Settings
from backend.mqtt import BrokerAddress, Delivery, MqttClient, MqttDisconnected
from backend.publisher import Publisher
from tests.backend.conftest import BrokerInfo, wait_for


class Relay:
    """TCP relay to the broker. `hold()` keeps what the broker sends until `release()`; `cut()`
    closes every relayed connection; `live` counts client connections the client has not closed."""

    def __init__(self, broker_url: str) -> None:
        self.upstream = BrokerAddress.parse(broker_url)
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.live = 0
        self.accepted = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self.url = ""

    async def __aenter__(self) -> Relay:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"mqtt://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *_: object) -> None:
        self.server.close()
        await self.server.wait_closed()
        self.release()
        self.cut()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    def hold(self) -> None:
        self.flowing.clear()

    def release(self) -> None:
        self.flowing.set()

    def cut(self) -> None:
        for writer in list(self._writers):
            writer.close()

    async def _serve(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        self._handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        self.accepted += 1
        self.live += 1
        self._writers.add(client_out)
        broker_out: asyncio.StreamWriter | None = None
        down: asyncio.Task[None] | None = None
        try:
            broker_in, broker_out = await asyncio.open_connection(self.upstream.host, self.upstream.port)
            self._writers.add(broker_out)
            down = asyncio.create_task(self._pump(broker_in, client_out, self.flowing))
            await self._pump(client_in, broker_out, None)  # until the client closes (or a cut)
        finally:
            self.live -= 1
            if down is not None:
                down.cancel()
                await asyncio.gather(down, return_exceptions=True)
            for writer in (client_out, broker_out):
                if writer is not None:
                    self._writers.discard(writer)
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()

    @staticmethod
    async def _pump(
        source: asyncio.StreamReader, sink: asyncio.StreamWriter, gate: asyncio.Event | None
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                if gate is not None:
                    await gate.wait()
                sink.write(data)
                await sink.drain()


def settings_for(broker: BrokerInfo, prefix: str) -> Settings:
    return Settings(
        environment="development",
        mqtt_url=broker.url,
        mqtt_version=broker.version,
        mqtt_prefix=prefix,
        ingest_group=broker.group,
    )


def client_tasks() -> set[asyncio.Task[Any]]:
    """The event loop's tasks running MqttClient code."""
    return {
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "").startswith("MqttClient.")
    }


@pytest.fixture
async def relay(broker: BrokerInfo) -> AsyncIterator[Relay]:
    async with Relay(broker.url) as running:
        yield running


@contextlib.asynccontextmanager
async def observer(settings: Settings, topic: str) -> AsyncIterator[list[bytes]]:
    """A plain subscriber straight on the broker: what the broker really received."""
    seen: list[bytes] = []
    client = MqttClient(
        settings,
        f"observer-{uuid.uuid4().hex[:8]}",
        subscriptions=[(topic, 1)],
        on_message=lambda message: seen.append(message.payload),
    )
    async with client:
        await client.wait_connected(10)
        yield seen


async def test_publish_resolves_only_once_the_puback_is_in(broker: BrokerInfo, relay: Relay) -> None:
    settings = settings_for(broker, f"t{uuid.uuid4().hex[:10]}")
    topic = f"{settings.mqtt_prefix}/probe"
    async with observer(settings, topic) as seen, MqttClient(settings, "pub", url=relay.url) as client:
        await client.wait_connected(10)
        relay.hold()
        publishing = asyncio.create_task(client.publish(topic, b"one", timeout=10))
        await wait_for(lambda: b"one" in seen)  # the broker has it, and has answered
        await asyncio.sleep(0.3)
        assert not publishing.done()  # the PUBACK is still in the relay
        relay.release()
        await asyncio.wait_for(publishing, 5)
    assert client_tasks() == set()
    await wait_for(lambda: relay.live == 0)


async def test_a_lost_connection_fails_pending_publishes_which_are_not_sent_again(
    broker: BrokerInfo, relay: Relay
) -> None:
    settings = settings_for(broker, f"t{uuid.uuid4().hex[:10]}")
    topic = f"{settings.mqtt_prefix}/probe"
    async with observer(settings, topic) as seen, MqttClient(settings, "pub", url=relay.url) as client:
        await client.wait_connected(10)
        relay.hold()
        publishing = asyncio.create_task(client.publish(topic, b"lost", timeout=30))
        await wait_for(lambda: b"lost" in seen)
        started = time.monotonic()
        relay.cut()
        with pytest.raises(MqttDisconnected):
            await publishing
        assert time.monotonic() - started < 2  # failed by the disconnect, not by its 30 s timeout
        relay.release()
        await client.wait_connected(10)  # reconnected by itself
        assert relay.accepted == 2
        await client.publish(topic, b"after", timeout=10)
        await wait_for(lambda: b"after" in seen)
        await asyncio.sleep(0.3)
        assert seen.count(b"lost") == 1  # the failed publish was not resent on the new connection
    await wait_for(lambda: relay.live == 0)


@pytest.mark.keeps_sessions  # not on amqtt, which drops in-flight QoS 1 state on a disconnect (docs/mqtt.md)
async def test_an_unacknowledged_message_comes_back_to_the_persistent_session(
    broker: BrokerInfo, relay: Relay
) -> None:
    settings = settings_for(broker, f"t{uuid.uuid4().hex[:10]}")
    topic = f"{settings.mqtt_prefix}/gates/1-1/taps"
    subscription = f"$share/{broker.group}/{topic}" if broker.group else topic
    client_id = f"ingest-{uuid.uuid4().hex[:10]}"
    received: asyncio.Queue[Delivery] = asyncio.Queue()
    worker = MqttClient(
        settings,
        client_id,
        url=relay.url,
        manual_ack=True,
        persistent=True,
        subscriptions=[(subscription, 1)],
        on_message=received.put_nowait,
    )
    try:
        async with worker, MqttClient(settings, "gate") as gate:
            await worker.wait_connected(10)
            await gate.publish(topic, b"tap", timeout=10)
            first = await asyncio.wait_for(received.get(), 10)
            assert first.payload == b"tap"
            relay.cut()  # crash before the commit: never acknowledged
            again = await asyncio.wait_for(received.get(), 10)
            assert again.payload == b"tap"
            assert again.connection != first.connection
            assert not worker.ack(first)  # its connection is gone; its message id means nothing now
            assert worker.ack(again)
            await asyncio.sleep(0.3)  # the PUBACK reaches the broker
            relay.cut()
            await wait_for(lambda: relay.accepted == 3 and worker.connected.is_set())
            await asyncio.sleep(1.0)
            assert received.empty()  # acknowledged once: not redelivered
    finally:
        # end the broker's session for this client id (clean start, no expiry)
        async with MqttClient(settings, client_id) as cleaner:
            await cleaner.wait_connected(10)
    assert client_tasks() == set()
    await wait_for(lambda: relay.live == 0)


async def test_closing_while_the_connack_is_awaited_leaves_no_socket_or_task(
    broker: BrokerInfo, relay: Relay
) -> None:
    settings = settings_for(broker, f"t{uuid.uuid4().hex[:10]}")
    relay.hold()  # the CONNACK never arrives
    client = MqttClient(settings, "stuck", url=relay.url)
    client.start()
    await wait_for(lambda: relay.live == 1)
    publishing = asyncio.create_task(client.publish(f"{settings.mqtt_prefix}/x", b"x", timeout=30))
    await asyncio.sleep(0.1)
    await client.aclose()
    with pytest.raises(MqttDisconnected):
        await publishing  # a publish waiting for the connection fails at once
    assert not client.connected.is_set()
    assert client_tasks() == set()
    await wait_for(lambda: relay.live == 0)


async def test_closing_while_backing_off_and_a_publish_timing_out_without_a_broker() -> None:
    settings = Settings(environment="development", mqtt_url=f"mqtt://127.0.0.1:{free_port()}")
    publisher = Publisher(settings)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await publisher.publish(f"{settings.mqtt_prefix}/x", b"x", timeout=0.5)
    assert time.monotonic() - started < 2
    await publisher.aclose()
    assert client_tasks() == set()
    with pytest.raises(TimeoutError):  # closed: refuses at once rather than reconnecting
        await publisher.publish(f"{settings.mqtt_prefix}/x", b"x", timeout=5)
