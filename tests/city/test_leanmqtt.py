"""The simulator's lean MQTT client against real brokers (the embedded amqtt, a private Mosquitto, the
shipped Mosquitto's logins) and against a scripted peer for what a broker should never send."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from faregate.city.leanmqtt import LeanMqtt, LinkError, Will
from tests.gate.brokers import MOSQUITTO, Amqtt, PrivateMosquitto, ShippedMosquitto, require


@pytest.fixture(params=["amqtt", pytest.param("mosquitto", marks=pytest.mark.mosquitto)])
async def broker_port(request: pytest.FixtureRequest) -> AsyncIterator[int]:
    broker: Amqtt | PrivateMosquitto
    if request.param == "mosquitto":
        require("the mosquitto binary", os.path.exists(MOSQUITTO))
        broker = PrivateMosquitto()
    else:
        broker = Amqtt()
    await broker.start()
    try:
        yield broker.port
    finally:
        await broker.stop()
        if isinstance(broker, PrivateMosquitto):
            broker.cleanup()


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.arrived = asyncio.Event()

    def __call__(self, topic: str, payload: bytes) -> None:
        self.messages.append((topic, payload))
        self.arrived.set()

    async def until(self, count: int, timeout: float = 10.0) -> list[tuple[str, bytes]]:
        async with asyncio.timeout(timeout):
            while len(self.messages) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.messages


async def test_publish_subscribe_retained_unsubscribe_in_order(broker_port: int) -> None:
    topic = f"lean/{uuid.uuid4().hex[:8]}"
    sender = await LeanMqtt.open("127.0.0.1", broker_port, client_id="lean-sender", on_message=Inbox())
    await sender.publish(f"{topic}/state", b"retained-1", qos=1, retain=True)
    inbox = Inbox()
    receiver = await LeanMqtt.open("127.0.0.1", broker_port, client_id="lean-receiver", on_message=inbox)
    try:
        granted = await receiver.subscribe([(f"{topic}/state", 1), (f"{topic}/live", 1)])
        assert granted == [1, 1]
        await inbox.until(1)
        for n in range(50):  # QoS 1 both ways, each PUBACKed before the next
            await sender.publish(f"{topic}/live", b"%d" % n, qos=1)
        sender.publish_nowait(f"{topic}/live", b"qos0", qos=0)
        got = await inbox.until(52)
        assert got[0] == (f"{topic}/state", b"retained-1")
        assert [p for _, p in got[1:]] == [b"%d" % n for n in range(50)] + [b"qos0"]
        receiver.unsubscribe_nowait([f"{topic}/live"])
        await receiver.subscribe([(f"{topic}/after", 0)])  # acked after the UNSUBSCRIBE before it
        await sender.publish(f"{topic}/live", b"unheard")
        await sender.publish(f"{topic}/after", b"heard")
        got = await inbox.until(53)
        assert got[52] == (f"{topic}/after", b"heard") and len(got) == 53
    finally:
        sender.close()
        receiver.close()
    await receiver.wait_closed()  # a clean close returns


async def test_the_will_goes_out_on_a_lost_link_not_on_a_clean_close(broker_port: int) -> None:
    topic = f"lean/{uuid.uuid4().hex[:8]}/status"
    inbox = Inbox()
    watcher = await LeanMqtt.open("127.0.0.1", broker_port, client_id="lean-watcher", on_message=inbox)
    await watcher.subscribe([(topic, 1)])
    clean = await LeanMqtt.open("127.0.0.1", broker_port, client_id="lean-clean", on_message=Inbox(),
                                will=Will(topic, b"clean-offline", qos=1, retain=False))
    clean.close()
    lost = await LeanMqtt.open("127.0.0.1", broker_port, client_id="lean-lost", on_message=Inbox(),
                               will=Will(topic, b"lost-offline", qos=1, retain=False))
    assert lost._transport is not None
    lost._transport.abort()  # no DISCONNECT: the broker sends the will
    try:
        assert await inbox.until(1) == [(topic, b"lost-offline")]
        await asyncio.sleep(0.3)
        assert inbox.messages == [(topic, b"lost-offline")]
        with pytest.raises(LinkError):
            await lost.wait_closed()
        with pytest.raises(LinkError):
            await lost.publish(topic, b"after the loss")
    finally:
        watcher.close()


@pytest.mark.security
@pytest.mark.mosquitto
async def test_a_wrong_password_is_refused_with_the_reason() -> None:
    tools = os.path.exists(MOSQUITTO) and shutil.which("mosquitto_passwd") is not None
    require("mosquitto and mosquitto_passwd", tools)
    broker = ShippedMosquitto(gates=["31-1"])
    await broker.start()
    try:
        with pytest.raises(LinkError, match=r"bad user name or password|not authorised"):
            await LeanMqtt.open("127.0.0.1", broker.port, client_id="g", on_message=Inbox(),
                                username="31-1", password="not-the-password")
        good = await LeanMqtt.open("127.0.0.1", broker.port, client_id="g", on_message=Inbox(),
                                   username="31-1", password=broker.accounts.passwords["31-1"])
        good.close()
    finally:
        await broker.stop()
        broker.cleanup()


@contextlib.asynccontextmanager
async def scripted_peer(script: Callable[[asyncio.StreamWriter], None]) -> AsyncIterator[int]:
    """A 'broker' on a free port that reads the CONNECT and then writes what `script` writes; every
    connection it took is closed when the block ends."""
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read(1024)
        script(writer)
        await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await server.wait_closed()


async def test_frames_split_byte_by_byte_and_a_failing_handler_lose_nothing() -> None:
    frames = b"\x20\x02\x00\x00"  # CONNACK accepted
    for n in range(3):  # QoS 0 PUBLISH to "t/x" with payload b"n"
        frames += b"\x30\x06\x00\x03t/x" + b"%d" % n

    async def drip(writer: asyncio.StreamWriter) -> None:
        for i in range(len(frames)):
            writer.write(frames[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0)

    got: list[bytes] = []

    def handler(topic: str, payload: bytes) -> None:
        got.append(payload)
        if payload == b"0":
            raise RuntimeError("a handler's bug")

    dripping: list[asyncio.Task[None]] = []
    async with scripted_peer(lambda writer: dripping.append(asyncio.ensure_future(drip(writer)))) as port:
        link = await LeanMqtt.open("127.0.0.1", port, client_id="c", on_message=handler, timeout=5)
        async with asyncio.timeout(5):
            while len(got) < 3:
                await asyncio.sleep(0.01)
        assert got == [b"0", b"1", b"2"]
        link.close()
        await asyncio.gather(*dripping)


@pytest.mark.security
@pytest.mark.parametrize("garbage", [
    pytest.param(b"\x30\xff\xff\xff\xff\x7f", id="remaining-length-past-four-bytes"),
    pytest.param(b"\x34\x06\x00\x03t/x\x00\x01", id="qos2-publish"),
    pytest.param(b"\xf0\x00", id="reserved-packet-type"),
])
async def test_a_peer_speaking_garbage_ends_the_link_with_an_error(garbage: bytes) -> None:
    async with scripted_peer(lambda writer: writer.write(b"\x20\x02\x00\x00" + garbage)) as port:
        inbox = Inbox()
        link = await LeanMqtt.open("127.0.0.1", port, client_id="c", on_message=inbox, timeout=5)
        with pytest.raises(LinkError):
            async with asyncio.timeout(5):
                await link.wait_closed()
        assert inbox.messages == []


async def test_no_connack_is_a_timeout_not_a_hang() -> None:
    async with scripted_peer(lambda writer: None) as port:
        with pytest.raises(LinkError, match="no CONNACK"):
            await LeanMqtt.open("127.0.0.1", port, client_id="c", on_message=Inbox(), timeout=0.5)
