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

The relay holds no secret: taps carry their gate's MAC end to end, and everything it hands down is
signed by the backend and checked by the gate. It holds the backend's public key(s), and hands down no
state message (deny-list snapshot and reference, fare table, action list, a gate's command) that is not
signed by one, nor one older than it already handed down on that topic: the station keeps those retained
for every gate that connects, and a forgery there, which the gates would refuse, would stand in for the
genuine state until the backend next published it (an old genuine snapshot replayed, without the phones
blocked since). At the station it logs in as RELAY_USER, which may read the gates' uplink topics and
write their downlink topics, nothing else (faregate/city/station.py writes that ACL).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

from nats.errors import BadSubjectError, MaxPayloadError
from nats.errors import Error as NatsError
from nats.js.errors import APIError, NotFoundError

from protocol.mqtt import (
    ActionListMessage,
    DenyListSnapshotMessage,
    DenyListSnapshotRef,
    FareTableMessage,
    GateCommand,
    RetainedState,
    Topics,
    Verifier,
    state_version,
)
from protocol.mqtt.address import for_log
from protocol.mqtt.auth import AuthError, public_key_of

from .config import Settings
from .ingest.stream import (
    STREAM,
    connect_cluster,
    ensure_stream,
    nats_servers,
    stream_config,
    subject_of,
    topic_of,
)
from .mqtt import Delivery, MqttClient
from .state_stream import STATE_STREAM, state_stream_config, state_topics

log = logging.getLogger("faregate.relay")

RELAY_USER = "faregate-relay"  # the relay's account at its station server
# publishes awaiting the stream's acknowledgement at once, from one queue. One lane a gate (to keep a
# gate's order) was tried: its one 2,000-gate bench run stored 161 taps/s of 400 against 368-398 for this
# shape, not yet understood (a publish timing out holds its gate's later messages behind it). So a
# gate's messages may reach the stream out of order during a failover; the ingest stores by tap id and
# asks for what it misses (ResendRequest).
IN_FLIGHT = 128
# JetStream API answers no retry changes: a bad request, a message over the stream's limits
PERMANENT_API_CODES = frozenset({400, 413})
PUBLISH_TIMEOUT_S = 5.0  # a leader election takes a few seconds; past this the publish is tried again
RETRY_MIN_S, RETRY_MAX_S = 0.2, 5.0


class StationRelay:
    """Forwards one station server's taps, statuses and requests into the stream, and the centre's
    messages for its gates down to the station.

    `station_url`: the station's Mosquitto (with RELAY_USER's credentials); `nats_url`: the cluster's
    nodes, comma-separated (nats-py fails over between them)."""

    def __init__(self, settings: Settings, station_url: str, nats_url: str, *,
                 client_id: str = RELAY_USER, replicas: int = 3, verifier: Verifier | None = None) -> None:
        self.settings = settings
        # the backend's public key(s): what it keeps at the station as state must be signed by one
        self.verifier = verifier or Verifier([public_key_of(bytes.fromhex(settings.downlink_signing_key))])
        self.servers = nats_servers(nats_url)
        self.replicas = replicas
        self.topics = topics = Topics(settings.mqtt_prefix)
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue()
        self.mqtt = MqttClient(
            settings, client_id, url=station_url, version="3.1.1", manual_ack=True, persistent=True,
            subscriptions=[(topics.all_taps, 1), (topics.all_status, 1), (topics.all_requests, 1)],
            on_message=self._on_uplink, on_ready=self._station_ready,
        )
        self.gates: set[str] = set()  # learnt from their uplink
        self._subscribed: set[str] = set()  # gates whose downlink subjects are subscribed
        self._nc: Any = None
        self._js: Any = None
        self._ready = asyncio.Event()  # a NATS connection and the streams are there
        self._closing = False
        self._said_ready = False
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._catching_up: asyncio.Task[None] | None = None
        self._subscribing: asyncio.Task[None] | None = None
        self.stats = {"forwarded": 0, "retried": 0, "refused": 0, "unacked_at_station": 0, "stale": 0,
                      "down": 0, "down_dropped": 0, "state_fetched": 0, "state_stale": 0, "forged": 0,
                      "replayed": 0}
        self._handed_down: dict[str, int] = {}  # the newest version of each state topic handed down
        self._state_models: dict[str, type[RetainedState]] = {
            topics.denylist_snapshot: DenyListSnapshotMessage,
            topics.denylist_snapshot_ref: DenyListSnapshotRef,
            topics.fare_table: FareTableMessage,
            topics.actions: ActionListMessage,
        }

    @property
    def connected(self) -> bool:
        return self.mqtt.connected.is_set() and self._ready.is_set()

    async def start(self) -> None:
        """Connect to the cluster (retrying until it answers), make sure the streams exist, then take
        the station's messages."""
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._connect(), name="relay nats"))
        self._tasks += [loop.create_task(self._forwarder(), name=f"relay {n}") for n in range(IN_FLIGHT)]
        self.mqtt.start()

    async def aclose(self) -> None:
        self._closing = True  # nothing new is spawned from here
        await self.mqtt.aclose()  # what was not acknowledged stays in the station's session
        for task in [*self._tasks, *self._background]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._background, return_exceptions=True)
        if self._nc is not None:
            await asyncio.gather(self._nc.close(), return_exceptions=True)

    async def _connect(self) -> None:
        delay = RETRY_MIN_S
        while True:
            try:
                self._nc = await connect_cluster(self.servers, self.mqtt.client_id,
                                                 ca_file=self.settings.nats_ca_file,
                                                 reconnected_cb=self._reconnected,
                                                 disconnected_cb=self._disconnected)
                self._js = self._nc.jetstream(timeout=PUBLISH_TIMEOUT_S)
                await ensure_stream(self._js, stream_config(self.settings.mqtt_prefix, self.replicas))
                await ensure_stream(self._js, state_stream_config(self.topics, self.replicas))
                for topic in [self.topics.denylist_delta, *state_topics(self.topics)]:
                    await self._nc.subscribe(subject_of(topic), cb=self._on_downlink)
                self._ready.set()
                await self._subscribe_new_gates()  # those learnt meanwhile too
                self._catch_up()
                self._say_ready()
                return
            except (NatsError, OSError) as error:
                log.warning("relay %s: cluster not reachable (%s); retrying in %.1f s",
                            self.mqtt.client_id, error, delay)
                if self._nc is not None:
                    await asyncio.gather(self._nc.close(), return_exceptions=True)
                    self._nc = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    def _say_ready(self) -> None:
        """The line a launcher waits for: both sides up, the station's session subscribed."""
        if self.connected and not self._said_ready:
            self._said_ready = True
            log.info("relay %s: forwarding into %s on %s", self.mqtt.client_id, STREAM,
                     for_log(",".join(self.servers)))

    # --- downlink ------------------------------------------------------------------------------------

    def _on_uplink(self, message: Delivery) -> None:
        gate = Topics.gate_of(message.topic)
        if gate not in self.gates:
            self.gates.add(gate)
            if self._ready.is_set() and (self._subscribing is None or self._subscribing.done()):
                self._subscribing = self._spawn(self._subscribe_new_gates(fetch=True))
        self._queue.put_nowait(message)

    async def _subscribe_new_gates(self, *, fetch: bool = False) -> None:
        """Subscribe the downlink of every gate learnt and not yet subscribed, until none is left (one
        task at a time: a station's retained statuses teach a relay a hundred gates at once)."""
        while unsubscribed := self.gates - self._subscribed:
            gate = min(unsubscribed)
            self._subscribed.add(gate)
            try:
                for topic in (self.topics.committed(gate), self.topics.resend(gate),
                              self.topics.command(gate)):
                    await self._nc.subscribe(subject_of(topic), cb=self._on_downlink)
            except NatsError as error:  # not subscribed: the gate's next message tries again
                self._subscribed.discard(gate)
                self.gates.discard(gate)
                log.warning("relay %s: gate %s's downlink not subscribed (%s)", self.mqtt.client_id, gate,
                            error)
                continue
            if fetch:
                await self._fetch_state([self.topics.command(gate)])

    async def _on_downlink(self, msg: Any) -> None:
        self._down(topic_of(msg.subject), msg.data, live=True)

    def _down(self, topic: str, payload: bytes, *, live: bool = False) -> None:
        if not payload:  # an empty retained publish would clear the station's state: never ours to send
            self.stats["down_dropped"] += 1
            return
        if not self._genuine_and_current(topic, payload, live=live):
            return
        if self.mqtt.publish_nowait(topic, payload, qos=1, retain=self.topics.retained(topic)):
            self.stats["down"] += 1
        else:  # the station is away: what is state is fetched again when it is back
            self.stats["down_dropped"] += 1

    def _genuine_and_current(self, topic: str, payload: bytes, *, live: bool) -> bool:
        """False, counted and logged, for a state message (the deny-list snapshot and its reference, the
        fare table, the action list, a gate's command) not signed by the backend, or older than one this
        relay handed down on its topic. The station keeps those retained for every gate that connects, so
        a forgery handed down would stand in for the genuine state until the backend next published it:
        the gates would refuse it, and go without; and an old genuine snapshot replayed would be what a
        new gate starts from, without the phones blocked since (until a delta or catch-up repairs it).
        Acks and deltas are checked by the gates alone (a forged one replaces nothing for long); checking
        them here would cost the relay a signature check on every tap's ack."""
        model = self._state_models.get(topic)
        if model is None and topic.rsplit("/", 1)[-1] == "command":
            model = GateCommand
        if model is None:
            return True
        try:
            message = model.model_validate_json(payload)
            self.verifier.check(message)
            if isinstance(message, GateCommand) and message.gate_id != Topics.gate_of(topic):
                raise AuthError(f"a command for {message.gate_id} on another gate's topic")
        except (ValueError, AuthError) as error:  # pydantic's ValidationError is a ValueError
            self.stats["forged"] += 1
            log.warning("relay %s: %s not handed down, not the backend's (%s)", self.mqtt.client_id, topic,
                        str(error).splitlines()[0])
            return False
        version, newest = state_version(message), self._handed_down.get(topic, 0)
        if version < newest:  # the same one again (a catch-up's fetch) is harmless: the gates ignore it
            if not live:  # fetched from a stream that lags what came live: expected, not an attack
                self.stats["state_stale"] += 1
                return False
            self.stats["replayed"] += 1
            log.warning("relay %s: %s version %d not handed down, %d was", self.mqtt.client_id, topic,
                        version, newest)
            return False
        self._handed_down[topic] = version
        return True

    async def _disconnected(self) -> None:
        self._ready.clear()

    async def _reconnected(self) -> None:
        """nats-py re-made the subscriptions on another node; what was published meanwhile is fetched."""
        self._ready.set()
        self._catch_up()

    def _station_ready(self) -> None:
        if self._ready.is_set():
            self._catch_up()
        self._say_ready()

    def _catch_up(self) -> None:
        """Fetch every state topic again, in one task that retries until each is answered; a catch-up
        already running is replaced (it fetched what may be older)."""
        if self._catching_up is not None:
            self._catching_up.cancel()
        topics = state_topics(self.topics) + [self.topics.command(g) for g in sorted(self.gates)]
        self._catching_up = self._spawn(self._fetch_state(topics, retry=True))

    async def _fetch_state(self, topics: list[str], *, retry: bool = False) -> None:
        """The last message of each state topic, from FAREGATE_STATE, handed down (retained) unless one
        newer came live meanwhile (the stream may lag the live path: `_genuine_and_current` counts it
        stale)."""
        pending, delay = list(topics), RETRY_MIN_S
        while pending:
            failed = []
            for topic in pending:
                try:
                    message = await self._js.get_last_msg(STATE_STREAM, subject_of(topic))
                except NotFoundError:
                    continue  # nothing was ever published there
                except NatsError as error:  # electing, or away: tried again below
                    log.warning("relay %s: state of %s not fetched yet (%s)", self.mqtt.client_id, topic,
                                error)
                    failed.append(topic)
                    continue
                self.stats["state_fetched"] += 1
                self._down(topic, message.data)
            if not retry:
                return
            pending = failed
            if pending:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    def _spawn(self, work: Any) -> asyncio.Task[None] | None:
        if self._closing:
            work.close()
            return None
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("relay %s: background work failed", self.mqtt.client_id, exc_info=task.exception())

    # --- uplink --------------------------------------------------------------------------------------

    async def _forwarder(self) -> None:
        while True:
            message = await self._queue.get()
            if not self.mqtt.is_current(message):
                self.stats["stale"] += 1  # from a station connection that is gone: it comes again
                continue
            try:
                await self._ready.wait()
                stored = await self._publish(message)
            except Exception:  # never let one message stop the forwarder
                log.exception("relay %s: forwarding %s failed", self.mqtt.client_id, message.topic)
                continue
            if not stored:
                self.stats["refused"] += 1  # never storable: dropped at the station, the gate replays
            if self.mqtt.ack(message):
                self.stats["forwarded"] += int(stored)
            else:  # that connection is gone: the station delivers it again, stored once by tap id
                self.stats["unacked_at_station"] += 1

    async def _publish(self, message: Delivery) -> bool:
        """Publish into the stream until it acknowledges (True), or the cluster refuses the message
        itself (False: too large, a bad subject, a 400/413 answer), which no retry would change."""
        subject = subject_of(message.topic)
        delay = RETRY_MIN_S
        for attempt in itertools.count():
            try:
                await self._js.publish(subject, message.payload, timeout=PUBLISH_TIMEOUT_S, stream=STREAM)
                return True
            except NatsError as error:
                if isinstance(error, (MaxPayloadError, BadSubjectError)) or (
                        isinstance(error, APIError) and error.code in PERMANENT_API_CODES):
                    log.warning("relay %s: %s refused (%s); dropped", self.mqtt.client_id, subject, error)
                    return False
                # no leader yet, a node lost, a timeout: the stream may hold it; said once in ten
                self.stats["retried"] += 1
                if attempt % 10 == 0:
                    log.warning("relay %s: publish on %s not acknowledged (%s: %s); trying again",
                                self.mqtt.client_id, subject, type(error).__name__, error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
        raise AssertionError("unreachable")
