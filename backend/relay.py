"""A station server's uplink into the centre's JetStream stream, acknowledged at the station only once
the stream has stored it on its replicas.

    gates ──► station Mosquitto ──► StationRelay ──js.publish──► FAREGATE_UPLINK (R3) ──► ingest workers
              (persistence, queue)   MQTT subscriber:              PubAck (stored on a majority)
                                     persistent session,           └──► then the station gets its PUBACK
                                     manual acks

Why not the station's Mosquitto bridge into the cluster's MQTT gateway (docs/deployment.md, "City
bench"): nats-server 2.9's gateway writes every QoS 1 publish through RAFT into its own `$MQTT_msgs`
stream before the PUBACK, and the subject then reaches `FAREGATE_UPLINK`, a second replicated write; and
its PUBACK covers the first, so a publish taken while the uplink stream elects a leader is acknowledged
yet not stored. The relay publishes straight into the stream with JetStream's publish acknowledgement:
one replicated write a message, and the station's queue lets a message go only when the stream holds it.

A message whose publish fails (no leader, a node lost, a timeout) is tried again after a back-off and
stays unacknowledged at the station meanwhile; a relay stopped or killed leaves its unacknowledged
messages in its persistent session, and the station delivers them again when it returns. Either way a
message can reach the stream twice; the ingest stores a tap once by its id (docs/deployment.md, "Several
ingest workers, exactly once").

The relay holds no key and needs none: taps carry their gate's MAC end to end. At the station it logs in
as RELAY_USER, which may only read the gates' uplink topics (faregate/city/station.py writes that ACL).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import nats
from nats.errors import Error as NatsError
from nats.js.errors import BadRequestError

from protocol.mqtt import Topics

from .config import Settings
from .ingest.stream import STREAM, nats_servers, stream_config, subject_of
from .mqtt import Delivery, MqttClient

log = logging.getLogger("faregate.relay")

RELAY_USER = "faregate-relay"  # the relay's account at its station server
IN_FLIGHT = 128  # publishes awaiting the stream's acknowledgement at once (the station sends up to 1000)
PUBLISH_TIMEOUT_S = 5.0  # a leader election takes a few seconds; past this the publish is tried again
RETRY_MIN_S, RETRY_MAX_S = 0.2, 5.0


class StationRelay:
    """Forwards one station server's taps, statuses and requests into the stream.

    `station_url`: the station's Mosquitto (with RELAY_USER's credentials); `nats_url`: the cluster's
    nodes, comma-separated (nats-py fails over between them)."""

    def __init__(self, settings: Settings, station_url: str, nats_url: str, *,
                 client_id: str = RELAY_USER, replicas: int = 3) -> None:
        self.settings = settings
        self.servers = nats_servers(nats_url)
        self.replicas = replicas
        topics = Topics(settings.mqtt_prefix)
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue()
        self.mqtt = MqttClient(
            settings, client_id, url=station_url, version="3.1.1", manual_ack=True, persistent=True,
            subscriptions=[(topics.all_taps, 1), (topics.all_status, 1), (topics.all_requests, 1)],
            on_message=self._queue.put_nowait,
        )
        self._nc: Any = None
        self._js: Any = None
        self._ready = asyncio.Event()  # a NATS connection and the stream are there
        self._tasks: list[asyncio.Task[None]] = []
        self.stats = {"forwarded": 0, "retried": 0, "unacked_at_station": 0}

    @property
    def connected(self) -> bool:
        return self.mqtt.connected.is_set() and self._ready.is_set()

    async def start(self) -> None:
        """Connect to the cluster (retrying until it answers), make sure the stream exists, then start
        taking the station's messages."""
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._connect(), name="relay nats"))
        self._tasks += [loop.create_task(self._forwarder(), name=f"relay {n}") for n in range(IN_FLIGHT)]
        self.mqtt.start()

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.mqtt.aclose()  # what was not acknowledged stays in the station's session
        if self._nc is not None:
            await asyncio.gather(self._nc.close(), return_exceptions=True)

    async def _connect(self) -> None:
        delay = RETRY_MIN_S
        while True:
            try:
                self._nc = await nats.connect(
                    servers=self.servers, name=self.mqtt.client_id, max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5, connect_timeout=5)
                self._js = self._nc.jetstream(timeout=PUBLISH_TIMEOUT_S)
                # it may exist (the workers or another relay made it): then its configuration stays
                with contextlib.suppress(BadRequestError):
                    await self._js.add_stream(stream_config(self.settings.mqtt_prefix, self.replicas))
                self._ready.set()
                log.info("relay %s: forwarding into %s on %s", self.mqtt.client_id, STREAM,
                         ",".join(self.servers))
                return
            except (NatsError, OSError) as error:
                log.warning("relay %s: cluster not reachable (%s); retrying in %.1f s",
                            self.mqtt.client_id, error, delay)
                if self._nc is not None:
                    await asyncio.gather(self._nc.close(), return_exceptions=True)
                    self._nc = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    async def _forwarder(self) -> None:
        while True:
            message = await self._queue.get()
            await self._ready.wait()
            await self._publish(message)
            if self.mqtt.ack(message):
                self.stats["forwarded"] += 1
            else:  # that connection is gone: the station delivers it again, stored once by tap id
                self.stats["unacked_at_station"] += 1

    async def _publish(self, message: Delivery) -> None:
        subject = subject_of(message.topic)
        delay = RETRY_MIN_S
        said = 0.0
        while True:
            try:
                await self._js.publish(subject, message.payload, timeout=PUBLISH_TIMEOUT_S, stream=STREAM)
                return
            except NatsError as error:  # no leader yet, a node lost, a timeout: the stream may hold it
                self.stats["retried"] += 1
                if time.monotonic() - said > 10:
                    said = time.monotonic()
                    log.warning("relay %s: publish on %s not acknowledged (%s: %s); trying again",
                                self.mqtt.client_id, subject, type(error).__name__, error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
