"""The ingest's second source: the gates' messages pulled from a NATS JetStream stream (a city's broker
cluster, docs/deployment.md "Central broker"), beside the MQTT shared subscription of backend/mqtt.py.

The gates still speak MQTT 3.1.1 to the cluster's MQTT gateway; nats-server turns `<prefix>/gates/<gate>/taps`
into the subject `<prefix>.gates.<gate>.taps`, which the stream `FAREGATE_UPLINK` (file storage, R3,
work-queue retention) stores. Every ingest worker pulls from ONE durable consumer, so the stream's
messages are shared between them, and acknowledges a message only after the batch holding it is
committed (IngestWorker calls `ack` then, exactly as it acks an MQTT message). A worker killed before its
commit acknowledged nothing: after `ack_wait` the cluster hands those messages to another worker, and the
taps table's unique key stores each tap once whoever stores it first.

This class is only the transport: IngestWorker keeps the whole pipeline (each message authenticated by
its gate's MAC, dead letters, the store, Committed and ResendRequest). What the worker sends the gates
(Committed, retained; ResendRequest) goes either through an ordinary MQTT client to a node's MQTT gateway,
so the gates receive it exactly as from Mosquitto, or (`--ingest-downlink nats`) as a plain NATS publish
on the topic's subject: the gateway hands it to the MQTT subscribers (station bridges, gates) at QoS 0,
not retained, and the cluster writes nothing for it. Through the gateway every retained QoS 1 ack is a
replicated write (the gateway's retained-message stream, and its QoS 1 message stream), one for nearly
every tap; a lost plain ack costs one stall replay of the gate, stored once (docs/deployment.md).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import nats
from nats.errors import ConnectionClosedError, NoServersError
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from protocol.mqtt.address import for_log

from ..config import Settings
from ..mqtt import Delivery, MqttClient

log = logging.getLogger("faregate.ingest.stream")

STREAM = "FAREGATE_UPLINK"
DURABLE = "ingest"
UPLINK_KINDS = ("taps", "status", "request")  # what gates publish; acks and commands go the other way
FETCH_TIMEOUT_S = 1.0
RETRY_S = 1.0
NATS_DOWNLINK = "nats"  # --ingest-downlink nats: acks to the gates as plain NATS publishes


def subjects(prefix: str) -> list[str]:
    """The stream's subjects: every gate's taps, status and requests under the topic prefix."""
    return [f"{subject_of(prefix)}.gates.*.{kind}" for kind in UPLINK_KINDS]


def topic_of(subject: str) -> str:
    """The MQTT topic a subject came from (nats-server maps topic levels to subject tokens)."""
    return subject.replace(".", "/")


def subject_of(topic: str) -> str:
    """The subject nats-server's MQTT gateway gives a topic (our topics hold no dots nor wildcards:
    protocol.mqtt.Topics and the gate ids keep to letters, digits, '-' and '_')."""
    return topic.replace("/", ".")


def stream_config(prefix: str, replicas: int) -> StreamConfig:
    return StreamConfig(
        name=STREAM,
        subjects=subjects(prefix),
        retention=RetentionPolicy.WORK_QUEUE,  # a message leaves the stream once a worker acked it
        storage=StorageType.FILE,
        num_replicas=replicas,
        max_age=7 * 24 * 3600.0,  # a week of backlog if every worker is down
    )


@dataclass(frozen=True)
class StreamSource:
    """Where a worker pulls from instead of subscribing: the cluster's NATS URLs (comma-separated; the
    client fails over between them) and the MQTT gateways its acks to the gates go through, or
    [NATS_DOWNLINK] for plain NATS publishes on the worker's own connection."""

    url: str
    downlink: list[str]
    ack_wait_s: float = 30.0

    def __post_init__(self) -> None:
        nats_servers(self.url)
        if not self.downlink:
            raise ValueError("a stream source needs the MQTT gateway(s) its acks to the gates go through")
        if NATS_DOWNLINK in self.downlink and self.downlink != [NATS_DOWNLINK]:
            raise ValueError("--ingest-downlink takes either 'nats' or the MQTT gateways' URLs, not both")

    @property
    def downlink_over_nats(self) -> bool:
        return self.downlink == [NATS_DOWNLINK]


def split_urls(text: str) -> list[str]:
    """A comma-separated URL list as the command line takes it (blanks and empty items dropped)."""
    return [part.strip() for part in text.split(",") if part.strip()]


async def connect_cluster(servers: list[str], name: str, *, ca_file: str | None = None,
                          **callbacks: Any) -> Any:
    """A nats-py connection to the cluster that fails over between the nodes for ever (its own
    reconnection: 0.5 s between attempts); `callbacks` are nats-py's (disconnected_cb, ...). Its
    errors (a node gone, a refused reconnection) are one log line each, not nats-py's tracebacks.
    tls:// URLs: TLS, the nodes' certificate verified against `ca_file` (else the system's CAs)."""

    async def one_line(error: Exception) -> None:
        log.warning("nats %s: %s", name, error or type(error).__name__)

    callbacks.setdefault("error_cb", one_line)
    if any(server.startswith("tls://") for server in servers):
        callbacks["tls"] = ssl.create_default_context(cafile=ca_file)
    return await nats.connect(servers=servers, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                              connect_timeout=5, inbox_prefix=inbox_prefix(servers), **callbacks)


def inbox_prefix(servers: list[str]) -> str:
    """Where this client takes its replies: `_INBOX_<user>` when it logs in as a user (a cluster that
    gives each relay its own account lets each subscribe to its own replies only), else nats-py's."""
    user = urlsplit(servers[0]).username if servers else None
    return user_inbox(user) if user else "_INBOX"


def user_inbox(user: str) -> str:
    """The reply subjects of a client logged in as `user` (what its account may subscribe to)."""
    return f"_INBOX_{user}"


async def ensure_stream(js: Any, config: StreamConfig) -> None:
    """Make the stream unless it exists (a worker or a relay made it first): then its configuration,
    replicas included, stays as the first one made it."""
    try:  # asked first: an account that may read the stream's description and not make it is enough
        await js.stream_info(config.name)
        return
    except NotFoundError:
        pass
    try:
        await js.add_stream(config)
    except BadRequestError:
        log.debug("stream %s exists", config.name)


def nats_servers(text: str) -> list[str]:
    """The cluster's node URLs from a comma-separated list; ValueError naming what is expected."""
    servers = split_urls(text)
    if not servers or not all(s.startswith(("nats://", "tls://")) for s in servers):
        raise ValueError(f"a NATS cluster is given as nats://host:port[,nats://...], not {for_log(text)!r}")
    return servers


class Downlink:
    """MQTT clients to several of the cluster's gateways (one connection each, clean sessions, their own
    client ids: one id on two nodes would take the session over); a message goes out through the first
    one connected. Retained messages are stored by the cluster (replicated), so any node serves them.

    When none is connected (a node lost, the cluster electing leaders) the clients not connected are made
    afresh at most once a second: a client's own back-off grows to 30 s, far longer than an election."""

    REFRESH_EVERY_S = 1.0

    def __init__(self, settings: Settings, urls: list[str], client_id: str) -> None:
        self.settings = settings
        self.urls = urls
        self.client_id = client_id
        self.clients = [self._client(url) for url in urls]
        self._refreshed = 0.0
        self._closing: set[asyncio.Task[None]] = set()
        self._started = False

    def _client(self, url: str) -> MqttClient:
        name = f"{self.client_id}-{uuid.uuid4().hex[:6]}-down"
        return MqttClient(self.settings, name, url=url, version="3.1.1")

    def start(self) -> None:
        self._started = True
        for client in self.clients:
            client.start()

    async def aclose(self) -> None:
        self._started = False
        await asyncio.gather(*(client.aclose() for client in self.clients), *self._closing,
                             return_exceptions=True)

    def publish_nowait(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> bool:
        if any(client.publish_nowait(topic, payload, qos=qos, retain=retain) for client in self.clients):
            return True
        self._refresh()
        return False

    def _refresh(self) -> None:
        now = time.monotonic()
        if not self._started or now - self._refreshed < self.REFRESH_EVERY_S:
            return
        self._refreshed = now
        for index, client in enumerate(self.clients):
            if client.connected.is_set():
                continue
            closing = asyncio.get_running_loop().create_task(client.aclose())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
            self.clients[index] = self._client(self.urls[index])
            self.clients[index].start()


class JetStreamSource:
    """Delivers the stream's messages to `on_message` as `Delivery` tuples and acks them on request.

    Drop-in for the MqttClient the worker otherwise uses: `start`, `aclose`, `connected`, `ack` and
    `publish_nowait` (the downlink: through `downlink`, MQTT clients to the cluster's gateways, or with
    `downlink=None` as plain NATS publishes on this connection). Acks and plain publishes are written by
    one flusher task as soon as they are asked for, not when the next fetch returns (up to a second).
    """

    def __init__(
        self,
        settings: Settings,
        url: str,
        downlink: Downlink | None,
        *,
        on_message: Callable[[Delivery], None],
        on_ready: Callable[[], None] | None = None,
        replicas: int = 3,
        ack_wait_s: float = 30.0,
        window: int | None = None,
        backlog: Callable[[], int] = lambda: 0,
    ) -> None:
        self.settings = settings
        self.servers = split_urls(url)
        self.downlink = downlink
        self.on_message = on_message
        self.on_ready = on_ready
        self.replicas = replicas
        self.ack_wait_s = ack_wait_s
        self.batch = settings.ingest_batch_size
        # messages delivered and not yet acked at most (the consumer's max_ack_pending is larger: it
        # counts every worker's)
        self.window = window or 2 * settings.ingest_batch_size
        self.backlog = backlog  # messages the worker holds not yet stored
        self.connected = asyncio.Event()
        self._unacked: dict[int, Any] = {}  # our id -> nats Msg
        self._acks: list[Any] = []
        self._outbox: list[tuple[str, bytes]] = []  # plain NATS publishes (subject, payload)
        self._flusher: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._nc: Any = None
        self._closed = False
        self.stats = {"fetched": 0, "acked": 0, "redelivered": 0, "published": 0, "unsent": 0}

    def start(self) -> None:
        if self.downlink is not None:
            self.downlink.start()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="jetstream source")

    async def aclose(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        if self._nc is not None:
            try:
                await self._flush()
                async with asyncio.timeout(2.0):
                    await self._nc.flush()
                await self._nc.close()
            except Exception as error:  # closing: what is not acked is redelivered after ack_wait
                log.debug("closing the NATS connection: %s", error)
        if self.downlink is not None:
            await self.downlink.aclose()

    def ack(self, message: Delivery) -> bool:
        msg = self._unacked.pop(message.mid, None)
        if msg is None:
            return False
        self._acks.append(msg)
        self._wake_flusher()
        return True

    def publish_nowait(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> bool:
        if self.downlink is not None:
            return self.downlink.publish_nowait(topic, payload, qos=qos, retain=retain)
        if not self.connected.is_set():
            return False  # as an MQTT client without a connection: nothing sent, nothing queued
        self._outbox.append((subject_of(topic), payload))
        self._wake_flusher()
        return True

    def _wake_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush(), name="jetstream flush")

    async def _flush(self) -> None:
        """Hand the acks and publishes asked for so far to the client, which writes them at once
        (nats-py's pending buffer, flushed by its own task). On a lost connection they are dropped:
        an unacked message is redelivered after ack_wait, a gate without its ack replays; both are
        stored once."""
        while self._acks or self._outbox:
            acks, self._acks = self._acks, []
            outbox, self._outbox = self._outbox, []
            if self._nc is None:
                self.stats["unsent"] += len(acks) + len(outbox)
                continue
            try:
                for msg in acks:
                    await msg.ack()
                self.stats["acked"] += len(acks)
                for subject, payload in outbox:
                    await self._nc.publish(subject, payload)
                self.stats["published"] += len(outbox)
            except NatsError as error:
                self.stats["unsent"] += len(acks) + len(outbox)
                log.info("acks and acks to gates not sent (%s); redelivered and replayed later", error)

    async def _connect(self) -> Any:
        async def disconnected() -> None:
            self.connected.clear()
            log.warning("NATS connection lost; reconnecting")

        async def reconnected() -> None:
            # the client reconnected by itself (another node): the durable pull subscription goes on
            log.info("NATS reconnected to %s", for_log(self._nc.connected_url.geturl()) if self._nc else "?")
            if self._nc is not None and not self._closed:
                self.connected.set()

        return await connect_cluster(self.servers, self.settings.ingest_client_id,
                                     ca_file=self.settings.nats_ca_file,
                                     disconnected_cb=disconnected, reconnected_cb=reconnected)

    async def _ensure(self, js: Any) -> Any:
        await ensure_stream(js, stream_config(self.settings.mqtt_prefix, self.replicas))
        consumer = ConsumerConfig(
            durable_name=DURABLE,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            max_ack_pending=100_000,
            max_deliver=-1,  # a message is never given up: a database outage can last
        )
        return await js.pull_subscribe(f"{subject_of(self.settings.mqtt_prefix)}.gates.>", durable=DURABLE,
                                       stream=STREAM, config=consumer)

    async def _run(self) -> None:
        while not self._closed:
            try:
                self._nc = await self._connect()
                subscription = await self._ensure(self._nc.jetstream())
                self.connected.set()
                log.info("ingest pulling %s/%s from %s", STREAM, DURABLE, for_log(",".join(self.servers)))
                if self.on_ready is not None:
                    self.on_ready()
                await self._pull(subscription)
            except asyncio.CancelledError:
                raise
            except (NoServersError, OSError, ConnectionClosedError, NotFoundError, NatsTimeout) as error:
                log.warning("JetStream not reachable (%s); retrying", error)
            except Exception:
                log.exception("JetStream source failed; retrying")
            self.connected.clear()
            if self._nc is not None:
                nc, self._nc = self._nc, None
                await asyncio.gather(nc.close(), return_exceptions=True)
            self._unacked.clear()  # their acks cannot be sent on another connection's behalf anyway
            self._acks.clear()
            self._outbox.clear()
            await asyncio.sleep(RETRY_S)

    async def _pull(self, subscription: Any) -> None:
        while not self._closed:
            room = self.window - len(self._unacked)
            if room <= 0 or self.backlog() >= self.batch:
                await asyncio.sleep(0.002)  # the worker is behind: let it store and ack first
                continue
            try:
                messages = await subscription.fetch(min(room, self.batch), timeout=FETCH_TIMEOUT_S)
            except (TimeoutError, NatsTimeout):
                continue
            except NatsError as error:  # a node lost, a leader being elected: the client reconnects itself
                if self._nc is None or self._nc.is_closed:
                    raise
                log.info("fetch failed (%s: %s); pulling again", type(error).__name__, error)
                await asyncio.sleep(0.2)
                continue
            for msg in messages:
                number = next(self._ids)
                self._unacked[number] = msg
                if msg.metadata.num_delivered > 1:
                    self.stats["redelivered"] += 1
                self.stats["fetched"] += 1
                self.on_message(Delivery(topic_of(msg.subject), msg.data, 1, number, False, 0))
