"""pytest-benchmark: what the city simulator's MQTT client costs a message, beside aiomqtt in the same run.

Run: python3 -m pytest benchmarks/test_city_client_bench.py --benchmark-only
Rows: 400 connections in one process on a private Mosquitto, all subscribed to one topic at QoS 1; a
round is one publish, until the last connection has it (each answers with its PUBACK). "lean" is
faregate.city.leanmqtt (what the city bench's gates use), "aiomqtt" the library gate/ and backend/ use.
Divide a round by 400 for the cost a message; the process's CPU is the only one it measures (the
broker's fan-out is the same for both). Needs mosquitto.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from faregate.city.compare import Mosquitto
from faregate.city.leanmqtt import LeanMqtt
from faregate.city.station import MOSQUITTO

CONNECTIONS = 400


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    if not Path(MOSQUITTO).exists():
        pytest.skip("needs mosquitto")
    with Mosquitto(tmp_path_factory.mktemp("clientbench")) as running:  # the comparison's plain broker
        yield running.port


class Crowd:
    """CONNECTIONS subscribers of one kind on their own event loop, and a paho publisher."""

    def __init__(self, kind: str, port: int) -> None:
        self.kind, self.port = kind, port
        self.topic = f"clientbench/{uuid.uuid4().hex[:8]}"
        self.loop = asyncio.new_event_loop()
        self.got = 0
        self.arrived = asyncio.Event()
        self._stop: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.publisher = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.publisher.connect("127.0.0.1", port)
        self.publisher.loop_start()

    def _count(self, *_: object) -> None:
        self.got += 1
        if self.got >= CONNECTIONS:
            self.arrived.set()

    async def _open(self) -> None:
        self._stop = asyncio.Event()
        if self.kind == "lean":
            links = [await LeanMqtt.open("127.0.0.1", self.port, client_id=f"lean-{i}-{self.topic}",
                                         on_message=self._count) for i in range(CONNECTIONS)]
            for link in links:
                await link.subscribe([(self.topic, 1)])

            async def close() -> None:
                assert self._stop is not None
                await self._stop.wait()
                for link in links:
                    link.close()

            self._tasks.append(asyncio.ensure_future(close()))
            return
        subscribed = asyncio.Semaphore(0)

        async def one(i: int) -> None:
            async with aiomqtt.Client("127.0.0.1", self.port, identifier=f"aio-{i}-{self.topic}",
                                      protocol=aiomqtt.ProtocolVersion.V311) as client:
                await client.subscribe(self.topic, qos=1)
                subscribed.release()
                receiving = asyncio.ensure_future(self._receive(client))
                assert self._stop is not None
                await self._stop.wait()
                receiving.cancel()

        self._tasks += [asyncio.ensure_future(one(i)) for i in range(CONNECTIONS)]
        for _ in range(CONNECTIONS):
            await subscribed.acquire()

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for _ in client.messages:
            self._count()

    async def _round(self) -> None:
        self.got = 0
        self.arrived.clear()
        self.publisher.publish(self.topic, b'{"version": 1, "payload": "' + b"x" * 300 + b'"}', qos=1)
        async with asyncio.timeout(30):
            await self.arrived.wait()

    def round(self) -> None:
        self.loop.run_until_complete(self._round())

    def __enter__(self) -> Crowd:
        self.loop.run_until_complete(self._open())
        return self

    def __exit__(self, *_: object) -> None:
        assert self._stop is not None
        self._stop.set()
        self.loop.run_until_complete(asyncio.gather(*self._tasks, return_exceptions=True))
        self.loop.close()
        self.publisher.loop_stop()
        self.publisher.disconnect()


@pytest.mark.parametrize("kind", ["lean", "aiomqtt"])
def test_one_message_to_400_connections(benchmark: Any, broker: int, kind: str) -> None:
    benchmark.group = "city client: one QoS 1 message to 400 connections in one process"
    with Crowd(kind, broker) as crowd:
        crowd.round()  # warm
        benchmark.pedantic(crowd.round, rounds=30, iterations=1)
        assert crowd.got == CONNECTIONS
