"""The gate's serial link to its reader and gate mechanism: requests answered or timed out, events
queued, the port reopened after an unplug.

The port is opened with pyserial's `serial_for_url`, so a pseudo-terminal, /dev/ttyUSB0 or socket://
all work, and it is read from the event loop with `add_reader` on its file descriptor: no reader
thread, so a byte costs no thread hand-off on the tap path (gates run Linux; POSIX only).

A request goes out with a fresh SEQ; if its answer does not come within the protocol's
`response_timeout` the same frame is resent with the same SEQ (the device answers a repeat from its
cache rather than acting twice), at most `RETRIES` times. Bytes are fed to a FrameDecoder that only
ever returns whole frames with a good CRC, and is reset when the port is reopened: half a frame is
never acted on. An unplug (pyserial raises SerialException / OSError) fails every pending request
with LinkDown and starts reopening with back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import serial

from protocol.serial import Frame, FrameDecoder, Message, Nak, NakReason, UnknownCommand, parse
from protocol.serial.messages import PayloadError
from protocol.serial.timing import DEFAULT_BAUD, FRAME_GAP_S, RETRIES, response_timeout

log = logging.getLogger(__name__)
M = TypeVar("M", bound=Message)

#: Resends triggered by a corrupt frame (cheap: they cost wire time only, never a timeout).
FAST_RETRIES = 12
#: New requests after a NAK BUSY, BUSY_WAIT_S apart (covers the slowest RF operation, 0.4 s).
BUSY_RETRIES = 10
BUSY_WAIT_S = 0.05


class LinkError(Exception):
    """A request to the device did not succeed."""


class LinkDown(LinkError):
    """The port is closed (unplugged, or not yet reopened)."""


class LinkTimeout(LinkError):
    """No answer after every retry."""


class LinkNak(LinkError):
    """The device refused the request."""

    def __init__(self, reason: NakReason, command: int) -> None:
        super().__init__(f"device refused command 0x{command:02x}: {reason.name}")
        self.reason = reason


class _WakeUp:
    """Why a waiting request was woken: its answer came, or it must be resent."""

    def __init__(self, why: str) -> None:
        self.why = why


ANSWERED = _WakeUp("the answer arrived")
SILENT = _WakeUp("response timeout")
CORRUPT = _WakeUp("a corrupt frame arrived: it may have been the answer")


def wake_up(future: asyncio.Future[_WakeUp], why: _WakeUp) -> None:
    if not future.done():
        future.set_result(why)


class _InFlight:
    """One request on the wire: its SEQ, its frame, its answer once read, and the future that wakes
    its waiter (the answer is kept here, not in the future, so an answer that comes just after a
    timer woke the waiter is still taken)."""

    __slots__ = ("answer", "data", "message", "seq", "woken")

    def __init__(self, seq: int, message: Message) -> None:
        self.seq = seq
        self.message = message
        self.data = message.to_bytes(seq)
        self.answer: Message | None = None
        self.woken: asyncio.Future[_WakeUp]


class ReaderLink:
    """One serial port to one device; `events` receives every event frame the device sends."""

    def __init__(self, url: str, baud: int = DEFAULT_BAUD, retries: int = RETRIES,
                 on_state: Callable[[bool], None] | None = None) -> None:
        self.url = url
        self.baud = baud
        self.retries = retries
        self.events: asyncio.Queue[Message] = asyncio.Queue(maxsize=1024)
        self.decoder = FrameDecoder()
        self._on_state = on_state
        #: Called with every event as it is decoded, before it is queued (for state that must be
        #: current while a request is still in flight, such as which phones are in the field).
        self.on_event: Callable[[Message], None] | None = None
        self._port: Any = None
        self._pending: dict[int, _InFlight] = {}
        self._seq = 0
        self._last_rx = 0.0
        self._up = asyncio.Event()
        self._closing = False
        self._reopen_task: asyncio.Task[None] | None = None
        self._expire_handle: asyncio.TimerHandle | None = None
        self._rx_ns = 0
        self.reopens = 0
        self.last_sent_ns = 0  # when the latest request first went out (perf_counter_ns)
        self.last_answer_ns = 0  # when the latest answer's bytes were read
        self.timeouts = 0
        self.bad_frames = 0

    # --------------------------------------------------------------------------- lifecycle
    @property
    def is_up(self) -> bool:
        return self._up.is_set()

    async def open(self) -> None:
        """Open now if the port is there, else keep trying in the background."""
        self._closing = False
        try:
            self._open_port()
        except (serial.SerialException, OSError) as exc:
            log.warning("serial %s not available (%s); retrying", self.url, exc)
            self._schedule_reopen()

    async def wait_up(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._up.wait(), timeout)
        return self.is_up

    async def close(self) -> None:
        self._closing = True
        if self._reopen_task is not None:
            self._reopen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reopen_task
        self._drop_port(LinkDown("link closed"))

    def _open_port(self) -> None:
        port = serial.serial_for_url(self.url, baudrate=self.baud, timeout=0, write_timeout=1.0)
        self._port = port
        self.decoder.reset()
        asyncio.get_running_loop().add_reader(port.fileno(), self._on_readable)
        self._up.set()
        log.info("serial %s open", self.url)
        if self._on_state:
            self._on_state(True)

    def _drop_port(self, error: LinkError) -> None:
        port, self._port = self._port, None
        was_up = self.is_up
        self._up.clear()
        if self._expire_handle is not None:
            self._expire_handle.cancel()
            self._expire_handle = None
        if port is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(port.fileno())
            with contextlib.suppress(Exception):
                port.close()
        self.decoder.reset()
        for flight in self._pending.values():
            if not flight.woken.done():
                flight.woken.set_exception(error)
        self._pending.clear()
        if was_up and self._on_state:
            self._on_state(False)

    def _port_failed(self, exc: BaseException) -> None:
        log.warning("serial %s failed: %s; reopening", self.url, exc)
        self._drop_port(LinkDown(f"serial port failed: {exc}"))
        self._schedule_reopen()

    def _schedule_reopen(self) -> None:
        if self._closing or (self._reopen_task is not None and not self._reopen_task.done()):
            return
        self._reopen_task = asyncio.get_running_loop().create_task(self._reopen_loop())

    async def _reopen_loop(self) -> None:
        delay = 0.05
        while not self._closing:
            await asyncio.sleep(delay)
            try:
                self._open_port()
            except (serial.SerialException, OSError):
                delay = min(delay * 2, 2.0)
                continue
            self.reopens += 1
            return

    # ------------------------------------------------------------------------------ receive
    def _on_readable(self) -> None:
        port = self._port
        if port is None:
            return
        try:
            data = port.read(max(1, port.in_waiting))
        except (serial.SerialException, OSError) as exc:
            self._port_failed(exc)
            return
        if data:
            self.feed(data)

    def feed(self, data: bytes) -> None:
        """Bytes just read from the port: whole frames are dispatched, a partial one waits."""
        self._rx_ns = time.perf_counter_ns()
        self._last_rx = time.monotonic()
        errors = self.decoder.bad_crc + self.decoder.length_errors
        for frame in self.decoder.feed(data):
            self._dispatch(frame)
        if self.decoder.bad_crc + self.decoder.length_errors != errors:
            self._signal_corruption()
        self._arm_expiry()

    def _signal_corruption(self) -> None:
        for flight in self._pending.values():
            wake_up(flight.woken, CORRUPT)

    def _arm_expiry(self) -> None:
        """A partial frame left pending after the line goes quiet is a false START: drop it."""
        if self._expire_handle is not None:
            self._expire_handle.cancel()
            self._expire_handle = None
        if self.decoder.pending:
            self._expire_handle = asyncio.get_running_loop().call_later(FRAME_GAP_S, self._expire)

    def _expire(self) -> None:
        self._expire_handle = None
        if time.monotonic() - self._last_rx >= FRAME_GAP_S:
            for frame in self.decoder.expire():
                self._dispatch(frame)
            self._signal_corruption()  # a frame was cut short: it may have been an answer
        self._arm_expiry()

    def _dispatch(self, frame: Frame) -> None:
        try:
            message = parse(frame)
        except (UnknownCommand, PayloadError) as exc:
            self.bad_frames += 1
            log.warning("ignoring frame 0x%02x from device: %s", frame.command, exc)
            return
        if message.kind.value == "event":
            if self.on_event is not None:
                self.on_event(message)
            try:
                self.events.put_nowait(message)
            except asyncio.QueueFull:
                log.error("event queue full; dropping %r", message)
            return
        flight = self._pending.get(frame.seq)
        if flight is not None and flight.answer is None:  # else a repeat, or nothing in flight: ignored
            self.last_answer_ns = self._rx_ns
            flight.answer = message
            wake_up(flight.woken, ANSWERED)

    # ------------------------------------------------------------------------------ request
    def _next_seq(self) -> int:
        for _ in range(255):
            self._seq = self._seq % 255 + 1  # 1..255; a SEQ in flight is never reused
            if self._seq not in self._pending:
                return self._seq
        raise LinkError("255 requests in flight")

    def request(self, message: Message, expect: type[M], timeout: float | None = None) -> Awaitable[M]:
        """Send `message` now; the awaitable returned gives its `expect` answer, or raises LinkNak,
        LinkTimeout or LinkDown.

        The frame is on the wire when this returns, before any await: a caller can send the wallet
        write and then do other work (journal the tap) while the phone writes. It is resent with the
        same SEQ after a silent `response_timeout`, at most `retries` times, and also at once whenever
        a corrupt frame arrives while waiting (it may have been the answer): the device ignores a
        repeat it is still working on and answers a finished one from its cache, so a resend never
        makes it act twice. Await what this returns: an unawaited request holds its SEQ.
        """
        return self._answer(message, expect, timeout, self._send_new(message))

    def _send_new(self, message: Message) -> _InFlight:
        if self._port is None:
            raise LinkDown(f"serial {self.url} is down")
        flight = _InFlight(self._next_seq(), message)
        self._send(flight)
        self.last_sent_ns = time.perf_counter_ns()
        return flight

    def _send(self, flight: _InFlight) -> None:
        """(Re)send a request's frame; its answer, a timer or a corrupt frame resolves `flight.woken`."""
        flight.woken = asyncio.get_running_loop().create_future()
        self._pending[flight.seq] = flight
        self._write(flight.data)

    async def _answer(self, message: Message, expect: type[M], timeout: float | None,
                      flight: _InFlight) -> M:
        for _attempt in range(BUSY_RETRIES):
            try:
                return await self._await_answer(flight, expect, timeout)
            except LinkNak as exc:
                if exc.reason != NakReason.BUSY:
                    raise
            # The device is still on an RF operation (one a restarted gate never saw finish). A NAK
            # is final for its SEQ: wait, then ask again as a new request.
            await asyncio.sleep(BUSY_WAIT_S)
            flight = self._send_new(message)
        return await self._await_answer(flight, expect, timeout)

    async def _await_answer(self, flight: _InFlight, expect: type[M], timeout: float | None) -> M:
        """Wait on the one future that the answer, a timer or a corrupt frame resolves (no
        asyncio.wait: each of its hand-offs cost an event-loop iteration on the tap path); resend
        while there is no answer."""
        wait = response_timeout(flight.message, self.baud) if timeout is None else timeout
        loop = asyncio.get_running_loop()
        silent, corrupt = 0, 0
        try:
            while True:
                timer = loop.call_later(wait, wake_up, flight.woken, SILENT)
                try:
                    why = await flight.woken
                finally:
                    timer.cancel()
                answer = flight.answer
                if answer is None:
                    if why is SILENT:
                        silent += 1
                        self.timeouts += 1
                    else:
                        corrupt += 1
                    if silent > self.retries or corrupt > FAST_RETRIES:
                        tries = silent + corrupt + 1
                        raise LinkTimeout(f"no answer to {type(flight.message).__name__} after {tries} tries")
                    self._send(flight)
                    continue
                if isinstance(answer, Nak):
                    raise LinkNak(answer.reason, answer.command)
                if not isinstance(answer, expect):
                    raise LinkError(f"expected {expect.__name__}, got {type(answer).__name__}")
                return answer
        finally:
            if self._pending.get(flight.seq) is flight:
                del self._pending[flight.seq]
            if not flight.woken.done():
                flight.woken.cancel()

    def _write(self, data: bytes) -> None:
        port = self._port
        if port is None:
            raise LinkDown(f"serial {self.url} is down")
        try:
            port.write(data)
        except (serial.SerialException, OSError) as exc:
            self._port_failed(exc)
            raise LinkDown(f"write failed: {exc}") from exc
