"""A station server's link to a clustered centre (NATS JetStream), both ways, in place of a Mosquitto
bridge into the cluster's MQTT gateways.

    gates ──► station Mosquitto ──► StationRelay ──js.publish──► FAREGATE_UPLINK (R3) ──► ingest workers
              (persistence, queue)   MQTT subscriber:              PubAck (stored on a majority)
                                     persistent session,           └──► then the station gets its PUBACK
                                     manual acks
    gates ◄── station Mosquitto ◄── StationRelay ◄── plain NATS subscriptions (each gate's acks, resend
              (retained state)       (retained as       requests and commands; the deny-list, fare
                                      the contract)      table and actions); FAREGATE_STATE on reconnect

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

Downlink: plain NATS subscriptions, no JetStream on the way, so a block or an ack reaches the station
while the cluster elects leaders (a Mosquitto bridge into nats-server 2.9's MQTT gateway remakes its
session through the JetStream API on every reconnection, and was measured still away 10 s after its node
was killed: docs/deployment.md). The relay learns its gates from their uplink (each gate's retained
status is delivered to it at every subscription) and subscribes to each gate's acks, resend requests
and commands; the shared deny-list, fare-table and action topics for all. It republishes them to its
station retained or not as docs/mqtt.md says. What was published while the relay was away from the
cluster or its station is fetched from FAREGATE_STATE, a stream holding the last message of each state
subject (the deny-list snapshot and its reference, the fare table, the action list, each gate's
command), at every (re)connection; a missed ack costs the gate one stall replay, stored once.

The relay holds no key and needs none: taps carry their gate's MAC end to end, and everything it hands
down is signed by the backend and checked by the gate. At the station it logs in as RELAY_USER, which may
read the gates' uplink topics and write their downlink topics, nothing else (faregate/city/station.py
writes that ACL).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import nats
from nats.errors import Error as NatsError
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from protocol.mqtt import Topics

from .config import Settings
from .ingest.stream import STREAM, nats_servers, stream_config, subject_of, topic_of
from .mqtt import Delivery, MqttClient

log = logging.getLogger("faregate.relay")

RELAY_USER = "faregate-relay"  # the relay's account at its station server
STATE_STREAM = "FAREGATE_STATE"  # the last message of each state subject, for a relay back from away
IN_FLIGHT = 128  # publishes awaiting the stream's acknowledgement at once (the station sends up to 1000)
PUBLISH_TIMEOUT_S = 5.0  # a leader election takes a few seconds; past this the publish is tried again
RETRY_MIN_S, RETRY_MAX_S = 0.2, 5.0


def state_topics(topics: Topics) -> list[str]:
    """The shared topics whose last message is the state a gate needs (retained at every broker)."""
    return [topics.denylist_snapshot, topics.denylist_snapshot_ref, topics.fare_table, topics.actions]


def state_stream_config(topics: Topics, replicas: int) -> StreamConfig:
    return StreamConfig(
        name=STATE_STREAM,
        subjects=[subject_of(t) for t in state_topics(topics)] + [subject_of(topics.command("*"))],
        retention=RetentionPolicy.LIMITS,
        max_msgs_per_subject=1,  # the state, not its history
        storage=StorageType.FILE,
        num_replicas=replicas,
    )


class StationRelay:
    """Forwards one station server's taps, statuses and requests into the stream, and the centre's
    messages for its gates down to the station.

    `station_url`: the station's Mosquitto (with RELAY_USER's credentials); `nats_url`: the cluster's
    nodes, comma-separated (nats-py fails over between them)."""

    def __init__(self, settings: Settings, station_url: str, nats_url: str, *,
                 client_id: str = RELAY_USER, replicas: int = 3) -> None:
        self.settings = settings
        self.servers = nats_servers(nats_url)
        self.replicas = replicas
        self.topics = topics = Topics(settings.mqtt_prefix)
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue()
        self.mqtt = MqttClient(
            settings, client_id, url=station_url, version="3.1.1", manual_ack=True, persistent=True,
            subscriptions=[(topics.all_taps, 1), (topics.all_status, 1), (topics.all_requests, 1)],
            on_message=self._on_uplink, on_ready=self._station_ready,
        )
        self._retained = {topics.denylist_snapshot, topics.denylist_snapshot_ref, topics.fare_table,
                          topics.actions}  # and each gate's committed and command (docs/mqtt.md)
        self.gates: set[str] = set()  # learnt from their uplink
        self._nc: Any = None
        self._js: Any = None
        self._ready = asyncio.Event()  # a NATS connection and the streams are there
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self.stats = {"forwarded": 0, "retried": 0, "unacked_at_station": 0, "down": 0, "down_dropped": 0,
                      "state_fetched": 0}

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
        for task in [*self._tasks, *self._background]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._background, return_exceptions=True)
        await self.mqtt.aclose()  # what was not acknowledged stays in the station's session
        if self._nc is not None:
            await asyncio.gather(self._nc.close(), return_exceptions=True)

    async def _connect(self) -> None:
        delay = RETRY_MIN_S
        while True:
            try:
                self._nc = await nats.connect(
                    servers=self.servers, name=self.mqtt.client_id, max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5, connect_timeout=5, reconnected_cb=self._reconnected)
                self._js = self._nc.jetstream(timeout=PUBLISH_TIMEOUT_S)
                # they may exist (the workers or another relay made them): then their configuration stays
                with contextlib.suppress(BadRequestError):
                    await self._js.add_stream(stream_config(self.settings.mqtt_prefix, self.replicas))
                with contextlib.suppress(BadRequestError):
                    await self._js.add_stream(state_stream_config(self.topics, self.replicas))
                for topic in [self.topics.denylist_delta, *state_topics(self.topics)]:
                    await self._nc.subscribe(subject_of(topic), cb=self._on_downlink)
                for gate in sorted(self.gates):
                    await self._subscribe_gate(gate)
                self._ready.set()
                self._catch_up(sorted(self.gates), shared=True)
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

    # --- downlink ------------------------------------------------------------------------------------

    def _on_uplink(self, message: Delivery) -> None:
        gate = Topics.gate_of(message.topic)
        if gate not in self.gates:
            self.gates.add(gate)
            if self._ready.is_set():
                self._spawn(self._learnt(gate))
        self._queue.put_nowait(message)

    async def _learnt(self, gate: str) -> None:
        await self._subscribe_gate(gate)
        await self._fetch_state([self.topics.command(gate)])

    async def _subscribe_gate(self, gate: str) -> None:
        for topic in (self.topics.committed(gate), self.topics.resend(gate), self.topics.command(gate)):
            await self._nc.subscribe(subject_of(topic), cb=self._on_downlink)

    async def _on_downlink(self, msg: Any) -> None:
        self._down(topic_of(msg.subject), msg.data)

    def _down(self, topic: str, payload: bytes) -> None:
        leaf = topic.rsplit("/", 1)[-1]
        retain = topic in self._retained or leaf in ("committed", "command")
        if self.mqtt.publish_nowait(topic, payload, qos=1, retain=retain):
            self.stats["down"] += 1
        else:  # the station is away: what is state is fetched again when it is back
            self.stats["down_dropped"] += 1

    async def _reconnected(self) -> None:
        """nats-py re-made the subscriptions on another node; what was published meanwhile is fetched."""
        self._catch_up(sorted(self.gates), shared=True)

    def _station_ready(self) -> None:
        if self._ready.is_set():
            self._catch_up(sorted(self.gates), shared=True)

    def _catch_up(self, gates: list[str], *, shared: bool) -> None:
        topics = (state_topics(self.topics) if shared else []) + [self.topics.command(g) for g in gates]
        self._spawn(self._fetch_state(topics))

    async def _fetch_state(self, topics: list[str]) -> None:
        """The last message of each state topic, from FAREGATE_STATE, handed down (retained)."""
        for topic in topics:
            try:
                message = await self._js.get_last_msg(STATE_STREAM, subject_of(topic))
            except NotFoundError:
                continue  # nothing was ever published there
            except NatsError as error:  # electing, or away again: the next (re)connection fetches it
                log.info("relay %s: state of %s not fetched (%s)", self.mqtt.client_id, topic, error)
                continue
            if message.data:
                self.stats["state_fetched"] += 1
                self._down(topic, message.data)

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- uplink --------------------------------------------------------------------------------------

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
