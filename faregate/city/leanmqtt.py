"""A lean MQTT 3.1.1 client for the city simulator: thousands of gate connections in a few processes.

Why not aiomqtt, which gate/ and backend/ use: the city bench measures a block's way to the last of
2,000 gates that share two cores with the whole city, so what the simulator itself spends on a message
delays every gate behind it in its process. Measured here (400 connections in one process, one QoS 1
message to each, idle machine): aiomqtt about 110 us a message (paho's parsing, aiomqtt's Message and a
cross-thread wake-up for every write), gmqtt about 60 us (one run of a throwaway script, not kept),
this client about 15 us; benchmarks/test_city_client_bench.py measures this client beside aiomqtt in
the same run (medians 9.6 and 68 ms, 9.4 and 57 ms for the 400). Profiled in the
2,000-gate bench, the client library was most of the simulating processes' time and those processes
a third of the machine.

It does only what a gate does: CONNECT with a login, a will and a keepalive; SUBSCRIBE and UNSUBSCRIBE;
PUBLISH at QoS 0 or 1 both ways (its own awaited until PUBACKed, the broker's answered with a PUBACK at
once); PINGREQ while quiet; DISCONNECT. No QoS 2, no MQTT 5, no persistence (a gate's journal is its
persistence) and no reconnection: the caller connects again, as CityGate does. Every message the
broker sends is handed to `on_message(topic, payload)` synchronously, in order, from the socket's read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

CONNECT, CONNACK, PUBLISH, PUBACK = 0x10, 0x20, 0x30, 0x40
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 0x82, 0x90, 0xA2, 0xB0
PINGREQ, PINGRESP, DISCONNECT = b"\xc0\x00", 0xD0, b"\xe0\x00"
MAX_REMAINING = 268_435_455  # the largest remaining length MQTT can encode

CONNACK_REASONS = {1: "unacceptable protocol version", 2: "client id rejected", 3: "server unavailable",
                   4: "bad user name or password", 5: "not authorised"}


class LinkError(ConnectionError):
    """The connection is refused, lost or broke the protocol; connect again."""


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def _length(n: int) -> bytes:
    """MQTT's variable-length remaining length."""
    if not 0 <= n <= MAX_REMAINING:
        raise ValueError(f"packet of {n} bytes is past MQTT's limit")
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) > 0xFFFF:
        raise ValueError("MQTT string longer than 65,535 bytes")
    return struct.pack("!H", len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _length(len(body)) + body


class LeanMqtt(asyncio.Protocol):
    """One connection. `await LeanMqtt.open(...)` returns it connected (CONNACK accepted)."""

    def __init__(self, on_message: Callable[[str, bytes], None], keepalive: int) -> None:
        self.on_message = on_message
        self.keepalive = keepalive
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        loop = asyncio.get_running_loop()
        self._connack: asyncio.Future[int] = loop.create_future()
        self._lost: asyncio.Future[None] = loop.create_future()
        self._acks: dict[int, asyncio.Future[bytes] | None] = {}  # packet id -> waiter (None: not awaited)
        self._next_id = 0
        self._heard = time.monotonic()
        self._ping: asyncio.TimerHandle | None = None

    @classmethod
    async def open(cls, host: str, port: int, *, client_id: str, on_message: Callable[[str, bytes], None],
                   username: str | None = None, password: str | None = None, will: Will | None = None,
                   keepalive: int = 30, clean_session: bool = True, timeout: float = 10.0) -> LeanMqtt:
        loop = asyncio.get_running_loop()
        link: LeanMqtt | None = None
        try:
            async with asyncio.timeout(timeout):
                _, link = await loop.create_connection(lambda: cls(on_message, keepalive), host, port)
                link._send(link._connect_packet(client_id, username, password, will, clean_session))
                code = await asyncio.shield(link._connack)
        except (TimeoutError, OSError) as exc:
            error = LinkError(f"no CONNACK from {host}:{port} in {timeout} s" if isinstance(exc, TimeoutError)
                              else f"cannot connect to {host}:{port}: {exc}")
            if link is not None:
                link._abort(error)
            raise error from exc
        if code:
            link.close()
            raise LinkError(f"connection refused: {CONNACK_REASONS.get(code, f'code {code}')}")
        link._schedule_ping()
        return link

    # ---------------------------------------------------------------------------------- sending
    def _connect_packet(self, client_id: str, username: str | None, password: str | None, will: Will | None,
                        clean_session: bool) -> bytes:
        flags = 0x02 if clean_session else 0
        payload = _string(client_id)
        if will is not None:
            flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
            payload += _string(will.topic) + _string(will.payload)
        if username is not None:
            flags |= 0x80
            payload += _string(username)
            if password is not None:
                flags |= 0x40
                payload += _string(password)
        header = _string("MQTT") + bytes((4, flags)) + struct.pack("!H", self.keepalive)
        return _packet(CONNECT, header + payload)

    def _send(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise LinkError("connection closed")
        self._transport.write(data)

    def _packet_id(self, waiter: asyncio.Future[bytes] | None) -> int:
        if self._transport is None or self._transport.is_closing():  # before an id is taken, not after
            raise LinkError("connection closed")
        for _ in range(0xFFFF):
            self._next_id = self._next_id % 0xFFFF + 1
            if self._next_id not in self._acks:
                self._acks[self._next_id] = waiter
                return self._next_id
        raise LinkError("65,535 packets awaiting their acknowledgement")

    def publish_nowait(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Hand a PUBLISH to the socket now; its PUBACK is not waited for."""
        self._publish(topic, payload, qos, retain, None)

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish; at QoS 1 return once the broker has PUBACKed it."""
        waiter = asyncio.get_running_loop().create_future() if qos == 1 else None
        self._publish(topic, payload, qos, retain, waiter)
        if waiter is not None:
            await self._wait(waiter)

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool,
                 waiter: asyncio.Future[bytes] | None) -> None:
        if qos not in (0, 1):
            raise ValueError("QoS 0 or 1")
        head = _string(topic)
        if qos:
            head += struct.pack("!H", self._packet_id(waiter))
        self._send(_packet(PUBLISH | (qos << 1) | (1 if retain else 0), head + payload))

    def subscribe_nowait(self, filters: list[tuple[str, int]]) -> None:
        self._subscribe(filters, None)

    async def subscribe(self, filters: list[tuple[str, int]]) -> list[int]:
        """Subscribe; returns the granted QoS of each filter (0x80: refused by the broker)."""
        waiter: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._subscribe(filters, waiter)
        return list(await self._wait(waiter))

    def _subscribe(self, filters: list[tuple[str, int]], waiter: asyncio.Future[bytes] | None) -> None:
        body = struct.pack("!H", self._packet_id(waiter))
        body += b"".join(_string(topic) + bytes((qos,)) for topic, qos in filters)
        self._send(_packet(SUBSCRIBE, body))

    def unsubscribe_nowait(self, topics: list[str]) -> None:
        body = struct.pack("!H", self._packet_id(None)) + b"".join(_string(t) for t in topics)
        self._send(_packet(UNSUBSCRIBE, body))

    async def _wait(self, waiter: asyncio.Future[bytes]) -> bytes:
        lost: asyncio.Future[Any] = self._lost
        try:
            done, _ = await asyncio.wait({waiter, lost}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            waiter.cancel()  # nobody will read its answer
            raise
        if waiter in done:
            return waiter.result()
        raise LinkError("connection lost before the broker's acknowledgement")

    async def wait_closed(self) -> None:
        """Until the connection is gone; raises LinkError saying why (a clean close() returns)."""
        await asyncio.shield(self._lost)

    def close(self) -> None:
        """DISCONNECT (the broker drops the will) and close."""
        if not self._lost.done():
            self._lost.set_result(None)
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(DISCONNECT)
            self._transport.close()

    # ------------------------------------------------------------------------------- keepalive
    def _schedule_ping(self) -> None:
        if self.keepalive:
            self._ping = asyncio.get_running_loop().call_later(self.keepalive / 2, self._keep_alive)

    def _keep_alive(self) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        if time.monotonic() - self._heard > self.keepalive * 1.5:
            self._abort(LinkError(f"nothing from the broker for {self.keepalive * 1.5:.0f} s"))
            return
        self._transport.write(PINGREQ)
        self._schedule_ping()

    # -------------------------------------------------------------------------------- receiving
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._ping is not None:
            self._ping.cancel()
        error = LinkError(f"connection lost: {exc}" if exc else "connection closed")
        for future in (self._connack, self._lost):
            if not future.done():
                future.set_exception(error)
        with contextlib.suppress(asyncio.InvalidStateError):
            self._lost.exception()  # retrieved: a lost link nobody waits on is not an error to report
            self._connack.exception()
        for waiter in self._acks.values():
            if waiter is not None and not waiter.done():
                waiter.set_exception(error)
                waiter.exception()  # retrieved: its awaiter, if still there, gets it all the same
        self._acks.clear()

    def _abort(self, error: LinkError) -> None:
        log.debug("lean mqtt: %s", error)
        if not self._lost.done():
            self._lost.set_exception(error)
            self._lost.exception()
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        self._heard = time.monotonic()
        buffer = self._buffer
        buffer += data
        at, size = 0, len(buffer)
        while size - at >= 2:
            length, shift, i, complete = 0, 0, at + 1, False
            while i < size:
                digit = buffer[i]
                i += 1
                length |= (digit & 0x7F) << shift
                if not digit & 0x80:
                    complete = True
                    break
                shift += 7
                if shift > 21:
                    self._abort(LinkError("malformed remaining length from the broker"))
                    return
            if not complete or i + length > size:
                break
            first, body = buffer[at], bytes(buffer[i : i + length])
            at = i + length
            try:
                self._handle(first, body)
            except LinkError as exc:
                self._abort(exc)
                return
        del buffer[:at]

    def _handle(self, first: int, body: bytes) -> None:
        kind = first & 0xF0
        if kind == PUBLISH:
            qos = (first >> 1) & 0x03
            end = 2 + int.from_bytes(body[:2])
            try:
                topic = body[2:end].decode()
            except UnicodeDecodeError as exc:
                raise LinkError("a topic that is not UTF-8") from exc
            if qos == 1:
                self._transport.write(b"\x40\x02" + body[end : end + 2])  # type: ignore[union-attr]
                end += 2
            elif qos:
                raise LinkError("QoS 2 from the broker, which this client never subscribes at")
            try:
                self.on_message(topic, body[end:])
            except Exception:  # one bad handler call never stops the connection
                log.exception("lean mqtt: handling a message on %s", topic)
        elif kind in (PUBACK, SUBACK, UNSUBACK):
            waiter = self._acks.pop(int.from_bytes(body[:2]), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(body[2:])
        elif kind == CONNACK:
            if not self._connack.done():
                self._connack.set_result(body[1] if len(body) >= 2 else 255)
        elif kind != PINGRESP:
            raise LinkError(f"unexpected packet type {first:#x} from the broker")
