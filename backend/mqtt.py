"""The backend's one MQTT client: paho-mqtt 2.x driven by the asyncio event loop (ingest and publisher).

paho rather than aiomqtt because the ingest acknowledges a message only after its database commit
(paho's manual_ack); docs/mqtt.md ("The backend's MQTT client") says why in full.

No network thread: the event loop watches paho's socket (add_reader/add_writer) and a task calls
loop_misc() once a second, the pattern paho documents for external event loops. Only paho's connect()
(name resolution and the TCP handshake, blocking calls) runs in the default executor, so an unreachable
broker never stalls the API sharing this loop. Every connection gets a fresh paho client, discarded whole
when the connection ends: a publish that failed is never sent later behind its caller's back, and a
message id from an old connection is never acknowledged on a new one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import select
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NamedTuple, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from protocol.mqtt.address import NotAnMqttUrl, parse_mqtt_url

from .config import Settings

log = logging.getLogger("faregate.mqtt")

SESSION_EXPIRY_S = 24 * 3600
READ_BURST = 2000  # packets read per readable event at most, so the event loop keeps turning
MISC_EVERY_S = 1.0  # paho's keepalive bookkeeping (loop_misc)
CONNECT_TIMEOUT_S = 10.0  # TCP connect, CONNACK and SUBACK together
BACKOFF_MIN_S = 0.5
# A few backend clients retrying every 5 s cost the broker nothing; a 30 s cap kept the ingest away
# for up to 30 s after the broker came back (bench city --outage measured 29.8 s).
BACKOFF_MAX_S = 5.0


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """mqtt://[user:password@]host[:port] (port 1883 by default); mqtts:// is TLS (port 8883)."""
        try:
            parsed = parse_mqtt_url(url if "://" in url else f"mqtt://{url}")
        except NotAnMqttUrl:
            raise ValueError(
                f"unsupported MQTT URL {url!r} (expected mqtt://host:port or mqtts://)"
            ) from None
        return cls(parsed.host, parsed.port_or_default(), parsed.username, parsed.password, parsed.tls)


class _HandshakeClosingSocket(ssl.SSLSocket):
    """paho leaves a socket whose TLS handshake failed (an untrusted broker) open: close it here."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def make_client(
    settings: Settings,
    client_id: str,
    *,
    manual_ack: bool = False,
    persistent: bool = False,
    url: str | None = None,
    version: str | None = None,
) -> tuple[mqtt.Client, dict[str, Any]]:
    """A configured paho client and the keyword arguments for its connect()."""
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
    if address.tls or settings.mqtt_ca_file:  # the broker's certificate and host name are verified
        context = ssl.create_default_context(cafile=settings.mqtt_ca_file)
        context.sslsocket_class = _HandshakeClosingSocket
        client.tls_set_context(context)
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


class MqttDisconnected(ConnectionError):
    """The connection ended, or the client was closed, before the broker acknowledged."""


class PublishRefused(Exception):
    """The broker answered a publish with an MQTT v5 failure reason (not authorised, quota, ...)."""


class Delivery(NamedTuple):
    """One MQTT message received (not called Message: that is the serial protocol's, issue 11);
    `connection` numbers the connection that delivered it, since only that connection may acknowledge
    it (message ids are per connection). A tuple: the cheapest record to build on the receive path."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    retain: bool
    connection: int



class _Connection:
    """One TCP connection and the paho client made for it."""

    def __init__(self, number: int, client: mqtt.Client, loop: asyncio.AbstractEventLoop) -> None:
        self.number = number
        self.client = client
        self.loop = loop
        self.ready: asyncio.Future[str | None] = loop.create_future()  # None: up; text: why not
        self.lost: asyncio.Future[str] = loop.create_future()
        self.pending: dict[int, asyncio.Future[None]] = {}  # QoS 1 publishes by message id
        self.subscribing: set[int] = set()
        self.session_present = False
        self.up = False  # CONNACK (and SUBACK) received
        self.closed = False
        # the connect() thread and a cancelled caller agree here on who closes the socket
        self.handover = threading.Lock()
        self.opened = False
        self.abandoned = False


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


class MqttClient:
    """An asyncio MQTT client on paho: reconnects with back-off until closed.

    `subscriptions` are made again on every connection and their messages handed to `on_message`
    (called on the event loop, so it must be quick: append to a queue). With `manual_ack` nothing is
    acknowledged until `ack(message)`; with `persistent` the broker keeps the session (and whatever
    was not acknowledged) across reconnections and restarts. `connected` is set while a connection is
    up with its subscriptions acknowledged.
    """

    def __init__(
        self,
        settings: Settings,
        client_id: str,
        *,
        manual_ack: bool = False,
        persistent: bool = False,
        url: str | None = None,
        version: str | None = None,
        subscriptions: Sequence[tuple[str, int]] = (),
        on_message: Callable[[Delivery], None] | None = None,
        on_ready: Callable[[], None] | None = None,
        read_burst: int = READ_BURST,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self.address = BrokerAddress.parse(url or settings.mqtt_url)
        self._options: dict[str, Any] = {
            "manual_ack": manual_ack,
            "persistent": persistent,
            "url": url,
            "version": version,
        }
        self.subscriptions = list(subscriptions)
        self.on_message = on_message
        self.on_ready = on_ready
        self.read_burst = read_burst
        self.connected = asyncio.Event()
        self._current: _Connection | None = None
        self._numbers = itertools.count(1)
        self._runner: asyncio.Task[None] | None = None
        self._up_waiters: set[asyncio.Future[_Connection]] = set()
        self._closed = False

    # --- life cycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Begin connecting in the background (once); needs the running event loop."""
        if self._closed:
            raise MqttDisconnected(f"MQTT client {self.client_id} is closed")
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run(), name=f"mqtt {self.client_id}")

    def close(self) -> None:
        """Stop now (synchronous, idempotent): acknowledgements already given and a DISCONNECT are
        flushed if the socket takes them, the socket closed, pending publishes failed."""
        self._closed = True
        if self._current is not None:
            self._teardown(self._current, "client closed")
        for waiter in self._up_waiters:
            if not waiter.done():
                waiter.set_exception(MqttDisconnected(f"MQTT client {self.client_id} is closed"))
        self._up_waiters.clear()
        if self._runner is not None:
            self._runner.cancel()

    async def aclose(self) -> None:
        """close(), then wait until the connection task has finished."""
        self.close()
        runner = self._runner
        if runner is not None:
            await asyncio.wait({runner})
            if not runner.cancelled() and runner.exception() is not None:
                log.error("MQTT %s: connection task failed", self.client_id, exc_info=runner.exception())

    async def __aenter__(self) -> MqttClient:
        self.start()
        return self

    async def __aexit__(
        self, _type: type[BaseException] | None, _error: BaseException | None, _tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _run(self) -> None:
        """Connect, serve the connection until it is lost, back off, again; until cancelled."""
        delay = BACKOFF_MIN_S
        while True:
            try:
                await self._connection()
                delay = BACKOFF_MIN_S  # it was up: the next attempt comes soon
            except OSError as error:  # refused, unreachable, timed out, disconnected before CONNACK
                log.warning(
                    "MQTT %s: no connection to %s:%d (%s); retrying in %.1f s",
                    self.client_id,
                    self.address.host,
                    self.address.port,
                    error or type(error).__name__,
                    delay,
                )
            except Exception:
                log.exception("MQTT %s: connection failed; retrying in %.1f s", self.client_id, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def _connection(self) -> None:
        loop = asyncio.get_running_loop()
        client, connect_kwargs = make_client(self.settings, self.client_id, **self._options)
        conn = _Connection(next(self._numbers), client, loop)
        client.user_data_set(conn)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect
        self._current = conn
        try:
            await self._open(conn, connect_kwargs)
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                refused = await conn.ready
            if refused is not None:
                raise MqttDisconnected(refused)
            conn.up = True
            self.connected.set()
            for waiter in self._up_waiters:
                _settle(waiter, conn)
            self._up_waiters.clear()
            log.info(
                "MQTT %s: connected to %s:%d (session present: %s)",
                self.client_id,
                self.address.host,
                self.address.port,
                conn.session_present,
            )
            if self.on_ready is not None:
                self.on_ready()
            while not conn.lost.done():
                await asyncio.wait({conn.lost}, timeout=MISC_EVERY_S)
                if not conn.lost.done() and client.loop_misc() != mqtt.MQTT_ERR_SUCCESS:
                    _settle(conn.lost, "keepalive")
            log.warning("MQTT %s: connection lost (%s); reconnecting", self.client_id, conn.lost.result())
        finally:
            self._teardown(conn, "connection closed")

    async def _open(self, conn: _Connection, connect_kwargs: dict[str, Any]) -> None:
        """paho's blocking connect() in the executor, then its socket handed to the event loop."""
        client = conn.client

        def connect() -> None:
            try:
                client.connect(**connect_kwargs)
            except BaseException:
                self._close_socket(client)
                raise
            with conn.handover:
                if conn.abandoned:  # the caller was cancelled meanwhile: nobody else will close it
                    self._close_socket(client)
                else:
                    conn.opened = True

        try:
            await asyncio.to_thread(connect)
        except BaseException:
            with conn.handover:
                conn.abandoned = True
                if conn.opened:
                    self._close_socket(client)
            raise
        sock = client.socket()
        if sock is None:
            raise MqttDisconnected("paho opened no socket")
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        self._on_socket_open(client, conn, sock)
        if client.want_write():
            self._on_socket_register_write(client, conn, sock)

    def _teardown(self, conn: _Connection, why: str) -> None:
        """Close one connection for good; idempotent."""
        if conn.closed:
            return
        conn.closed = True
        if self._current is conn:
            self._current = None
            self.connected.clear()
        client = conn.client
        with conn.handover:
            conn.abandoned = True  # a connect() still in its thread closes its own socket
            if conn.opened:
                if conn.up and client.socket() is not None:
                    client.disconnect()
                    client.loop_write()  # the acks queued so far, then DISCONNECT; paho closes the socket
                sock = client.socket()
                if sock is not None and sock.fileno() >= 0:
                    conn.loop.remove_reader(sock)
                    conn.loop.remove_writer(sock)
                self._close_socket(client)
        _settle(conn.ready, why)
        _settle(conn.lost, why)
        self._fail_pending(conn, why)

    @staticmethod
    def _close_socket(client: mqtt.Client) -> None:
        """Close a client's socket for good, its callbacks detached first so that nothing of a dead
        connection reaches this object again (paho has no public close; safe from the connect thread)."""
        for name in (
            "on_socket_open",
            "on_socket_close",
            "on_socket_register_write",
            "on_socket_unregister_write",
            "on_connect",
            "on_subscribe",
            "on_message",
            "on_publish",
            "on_disconnect",
        ):
            setattr(client, name, None)
        sock = client.socket()
        if sock is not None:
            sock.close()

    def _fail_pending(self, conn: _Connection, why: str) -> None:
        pending, conn.pending = conn.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(MqttDisconnected(f"no PUBACK before the connection ended ({why})"))

    # --- the socket, driven by the event loop ----------------------------------------------------------

    def _on_socket_open(self, _client: mqtt.Client, conn: _Connection, sock: Any) -> None:
        conn.loop.add_reader(sock, self._read, conn, sock)

    def _on_socket_close(self, _client: mqtt.Client, conn: _Connection, sock: Any) -> None:
        conn.loop.remove_reader(sock)
        conn.loop.remove_writer(sock)

    def _on_socket_register_write(self, _client: mqtt.Client, conn: _Connection, sock: Any) -> None:
        conn.loop.add_writer(sock, self._write, conn, sock)

    def _on_socket_unregister_write(self, _client: mqtt.Client, conn: _Connection, sock: Any) -> None:
        conn.loop.remove_writer(sock)

    def _read(self, conn: _Connection, sock: Any) -> None:
        """Read every packet already waiting, up to read_burst (paho's loop_read takes one per call)."""
        client = conn.client
        for _ in range(self.read_burst):
            if client.loop_read() != mqtt.MQTT_ERR_SUCCESS or client.socket() is not sock:
                return
            # TLS: bytes already decrypted into the SSL object are invisible to select()
            pending = getattr(sock, "pending", None)
            if not (pending and pending()) and not select.select([cast(Any, sock)], [], [], 0)[0]:
                return

    def _write(self, conn: _Connection, sock: Any) -> None:
        client = conn.client
        client.loop_write()
        if client.socket() is sock and not client.want_write():
            conn.loop.remove_writer(cast(Any, sock))  # also when paho did not count this registration its own

    # --- paho callbacks (called from _read, _write, loop_misc: always on the event loop) --------------

    def _on_connect(
        self,
        client: mqtt.Client,
        conn: _Connection,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            _settle(conn.ready, f"broker refused the connection: {reason}")
            return
        conn.session_present = bool(flags.session_present)
        if not self.subscriptions:
            _settle(conn.ready, None)
            return
        result, mid = client.subscribe(self.subscriptions)
        if result != mqtt.MQTT_ERR_SUCCESS or mid is None:
            _settle(conn.ready, f"subscribe failed: {mqtt.error_string(result)}")
            return
        conn.subscribing.add(mid)

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        conn: _Connection,
        mid: int,
        reasons: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        refused = [
            f"{topic} ({reason})"
            for (topic, _qos), reason in zip(self.subscriptions, reasons, strict=False)
            if reason.is_failure
        ]
        if refused:  # the connection stays up for the rest; the operator has to fix the broker's ACL
            log.error("MQTT %s: broker refused subscription to %s", self.client_id, ", ".join(refused))
        conn.subscribing.discard(mid)
        if not conn.subscribing:
            _settle(conn.ready, None)

    def _on_message(self, _client: mqtt.Client, conn: _Connection, message: mqtt.MQTTMessage) -> None:
        if self.on_message is None:
            return
        received = Delivery(
            message.topic, bytes(message.payload), message.qos, message.mid, message.retain, conn.number
        )
        try:
            self.on_message(received)
        except Exception:  # paho's packet state must survive a failing handler; the message stays unacked
            log.exception("MQTT %s: message handler failed on %s", self.client_id, received.topic)

    def _on_publish(
        self, _client: mqtt.Client, conn: _Connection, mid: int, reason: ReasonCode, _properties: Properties
    ) -> None:
        future = conn.pending.pop(mid, None)
        if future is None or future.done():
            return
        if reason.is_failure:
            future.set_exception(PublishRefused(f"broker refused the publish: {reason}"))
        else:
            future.set_result(None)

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        conn: _Connection,
        _flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        why = f"disconnected: {reason}"
        _settle(conn.ready, why)
        _settle(conn.lost, why)
        if self._current is conn:
            self.connected.clear()
        self._fail_pending(conn, why)

    # --- what the owner calls ----------------------------------------------------------------------

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, timeout: float = 10.0
    ) -> None:
        """Publish and return once the broker has acknowledged it (QoS 1: its PUBACK; QoS 0: handed
        to paho). Starts the client if needed and waits for a connection within the same `timeout`.

        Raises TimeoutError (no connection, or no PUBACK, in time), MqttDisconnected (the connection
        ended first: the broker may or may not have the message; it is not sent again), PublishRefused.
        """
        self.start()
        future: asyncio.Future[None] | None = None
        conn: _Connection | None = None
        mid = 0
        try:
            async with asyncio.timeout(timeout):
                conn = await self._wait_up()
                info = conn.client.publish(topic, payload, qos=qos, retain=retain)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    raise MqttDisconnected(f"publish on {topic} failed: {mqtt.error_string(info.rc)}")
                if qos == 0:
                    return
                mid = info.mid
                future = conn.loop.create_future()
                conn.pending[mid] = future
                await future
        except TimeoutError:
            what = "no connection to the broker" if future is None else "no PUBACK"
            raise TimeoutError(f"{what} for {topic} within {timeout} s") from None
        finally:
            if conn is not None and future is not None and conn.pending.get(mid) is future:
                del conn.pending[mid]

    def publish_nowait(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> bool:
        """Hand a message to the current connection without waiting for its PUBACK; False (nothing
        sent, nothing queued) when there is no connection."""
        conn = self._current
        if conn is None or not self.connected.is_set():
            return False
        return conn.client.publish(topic, payload, qos=qos, retain=retain).rc == mqtt.MQTT_ERR_SUCCESS

    def is_current(self, message: Delivery) -> bool:
        """Whether the connection that delivered `message` is still up (only it can acknowledge it;
        otherwise a persistent session's broker delivers it again)."""
        conn = self._current  # (a persistent session's queue arrives before `connected` is set)
        return conn is not None and conn.number == message.connection and not conn.closed

    def ack(self, message: Delivery) -> bool:
        """Acknowledge a message received in manual-ack mode. False when the connection that delivered
        it has ended: the broker then redelivers it to a persistent session, never acked twice."""
        if message.qos == 0:
            return True
        conn = self._current
        if conn is None or conn.number != message.connection or not conn.client.is_connected():
            return False
        return conn.client.ack(message.mid, message.qos) == mqtt.MQTT_ERR_SUCCESS

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Start the client if needed and wait until a connection is up (TimeoutError otherwise)."""
        self.start()
        async with asyncio.timeout(timeout):
            await self._wait_up()

    async def _wait_up(self) -> _Connection:
        conn = self._current
        if conn is not None and self.connected.is_set():
            return conn
        if self._closed:
            raise MqttDisconnected(f"MQTT client {self.client_id} is closed")
        waiter: asyncio.Future[_Connection] = asyncio.get_running_loop().create_future()
        self._up_waiters.add(waiter)
        try:
            return await waiter
        finally:
            self._up_waiters.discard(waiter)
            if waiter.done() and not waiter.cancelled():
                waiter.exception()  # retrieved, so a waiter cancelled as it failed logs nothing
