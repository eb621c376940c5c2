"""The gate's serial link to its reader and gate mechanism: requests answered or given up, events
queued, over a SerialTransport (gate/serial_transport.py: the port, its bytes, reopening).

This module is the asyncio driver of the protocol's transaction rules (protocol/serial/transactions:
SEQ allocation, which answer is whose, resend the same frame on silence or corruption, ask again
after NAK BUSY), the same rules firmware_sim's blocking client follows. Each request in flight waits
on one future that its answer, its timer or a corrupt frame resolves: no asyncio.wait, whose
hand-offs cost event-loop iterations on the tap path. When the port goes down every pending request
fails with LinkDown; the transport reopens it with back-off.

Every time the port comes up, the first frame on it is OpenSession, written before anything else can
be; requests made before its SessionOpened arrives wait for it. The device then forgets its retry
cache: a gate process restarted on a reader that stayed powered (SEQs start over) is never answered
with what the reader cached for the previous process. A session that fails (timeout, NAK) fails the
requests waiting on it, and the next request asks for a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from protocol.serial import (
    Frame,
    FrameDecoder,
    Kind,
    Message,
    Nak,
    NakReason,
    OpenSession,
    PayloadError,
    SessionOpened,
    UnknownCommand,
    kind_of,
    parse,
)
from protocol.serial.timing import DEFAULT_BAUD, RETRIES
from protocol.serial.transactions import (
    SESSION_ATTEMPTS,
    SeqCounter,
    SeqExhausted,
    Step,
    Transaction,
    Verdict,
    Wake,
    busy_wait,
    is_response,
    new_session,
    session_confirmed,
)

from .serial_transport import WRITE_STALL_S, LinkDown, LinkError, SerialTransport

__all__ = ["LinkDown", "LinkError", "LinkNak", "LinkTimeout", "ReaderLink"]

log = logging.getLogger(__name__)
M = TypeVar("M", bound=Message)


class LinkTimeout(LinkError):
    """No answer after every retry."""


class LinkNak(LinkError):
    """The device refused the request."""

    def __init__(self, reason: NakReason, command: int) -> None:
        super().__init__(f"device refused command 0x{command:02x}: {reason.name}")
        self.reason = reason


def wake_up(future: asyncio.Future[Wake], why: Wake) -> None:
    if not future.done():
        future.set_result(why)


class _InFlight(Transaction):
    """A transaction and the future that wakes its waiter (the answer itself is kept on the
    transaction, so an answer read just after a timer woke the waiter is still taken)."""

    __slots__ = ("woken",)
    woken: asyncio.Future[Wake]


class ReaderLink:
    """One serial port to one device; `events` receives every event frame the device sends.

    `session=False` leaves OpenSession out: only for tests of the transport and the transaction
    rules against a scripted device (a gate always opens a session)."""

    def __init__(self, url: str, baud: int = DEFAULT_BAUD, retries: int = RETRIES,
                 on_state: Callable[[bool], None] | None = None,
                 stall_s: float = WRITE_STALL_S, session: bool = True) -> None:
        self.url = url
        self.baud = baud
        self.retries = retries
        self.events: asyncio.Queue[Message] = asyncio.Queue(maxsize=1024)
        self.transport = SerialTransport(url, baud, on_frame=self._dispatch, on_corrupt=self._corrupt,
                                         on_state=self._transport_state, stall_s=stall_s)
        self._on_state = on_state
        #: Called with every event as it is decoded, before it is queued (for state that must be
        #: current while a request is still in flight, such as which phones are in the field).
        self.on_event: Callable[[Message], None] | None = None
        self._pending: dict[int, _InFlight] = {}
        self._seqs = SeqCounter.anywhere()
        self._sessions = session
        self._session: asyncio.Task[SessionOpened] | None = None  # this port's OpenSession
        self.session: SessionOpened | None = None  # the open session; None while there is none
        self.last_sent_ns = 0  # when the latest request first went out (perf_counter_ns)
        self.last_answer_ns = 0  # when the latest answer's bytes were read
        self.timeouts = 0
        self.bad_frames = 0

    # --------------------------------------------------------------------------- lifecycle
    @property
    def is_up(self) -> bool:
        return self.transport.is_up

    @property
    def decoder(self) -> FrameDecoder:
        return self.transport.decoder

    @property
    def reopens(self) -> int:
        return self.transport.reopens

    async def open(self) -> None:
        """Open now if the port is there and wait for its session (a failed one is asked for again by
        the next request), else keep trying in the background."""
        self.transport.open()
        if self._session is not None:
            with contextlib.suppress(LinkError):
                await asyncio.shield(self._session)

    async def wait_up(self, timeout: float) -> bool:
        return await self.transport.wait_up(timeout)

    async def close(self) -> None:
        await self.transport.close()

    def feed(self, data: bytes) -> None:
        """Bytes as if just read from the port (tests put line noise on it this way)."""
        self.transport.feed(data)

    def _transport_state(self, down: LinkDown | None) -> None:
        self.session, self._session = None, None
        if down is not None:
            for flight in self._pending.values():
                if not flight.woken.done():
                    flight.woken.set_exception(down)
            self._pending.clear()
        elif self._sessions:
            try:
                self._start_session()  # the first frame on the reopened port, before anyone else's
            except LinkError:  # the port failed at once: it is down again and being reopened
                return
        if self._on_state:
            self._on_state(down is None)

    # ------------------------------------------------------------------------------ session
    def _start_session(self) -> asyncio.Task[SessionOpened]:
        """Write OpenSession now (LinkDown if the port is down) and wait for its answer in a task."""
        opening = new_session()
        flight = self._send_new(opening, SessionOpened, None)
        task = asyncio.get_running_loop().create_task(self._open_session(opening, flight))
        task.add_done_callback(self._session_done)
        self._session = task
        return task

    async def _open_session(self, opening: OpenSession, flight: _InFlight) -> SessionOpened:
        for attempt in range(1, SESSION_ATTEMPTS + 1):
            answer = await self._answer(opening, SessionOpened, None, flight)
            if session_confirmed(opening, answer):
                if self._session is asyncio.current_task():  # not a session of a port since closed
                    self.session = answer
                return answer
            if attempt < SESSION_ATTEMPTS:  # an answer to another OpenSession: ask again
                opening = new_session()
                flight = self._send_new(opening, SessionOpened, None)
        raise LinkError(f"no SessionOpened echoing the nonce after {SESSION_ATTEMPTS} OpenSessions")

    def _session_done(self, task: asyncio.Task[SessionOpened]) -> None:
        if task.cancelled():
            return
        error = task.exception()  # retrieved here: a failure nobody waited on is logged once
        if error is not None:
            if self._session is task:
                self._session = None  # the next request asks for a new session
            level = logging.INFO if isinstance(error, LinkDown) else logging.WARNING  # closed: said already
            log.log(level, "serial %s: no session with the device: %s", self.url, error)

    async def _session_open(self) -> None:
        """Until this port's session is open (asking for one if there is none); raises its failure."""
        task = self._session if self._session is not None else self._start_session()
        await asyncio.shield(task)

    # ------------------------------------------------------------------------------ receive
    def _corrupt(self) -> None:
        for flight in self._pending.values():
            wake_up(flight.woken, Wake.CORRUPTION)

    def _dispatch(self, frame: Frame) -> None:
        try:
            message = parse(frame)
        except (UnknownCommand, PayloadError) as exc:
            self.bad_frames += 1
            log.warning("ignoring frame 0x%02x from device: %s", frame.command, exc)
            return
        if is_response(frame):
            flight = self._pending.get(frame.seq)
            if flight is not None and flight.take(message):  # else a repeat, or stale: ignored
                self.last_answer_ns = self.transport.rx_ns
                wake_up(flight.woken, Wake.ANSWER)
            return
        if kind_of(frame.command) is not Kind.EVENT:  # a request code: the device never sends one
            self.bad_frames += 1
            log.warning("ignoring request frame 0x%02x from device", frame.command)
            return
        if self.on_event is not None:
            self.on_event(message)
        try:
            self.events.put_nowait(message)
        except asyncio.QueueFull:
            log.error("event queue full; dropping %r", message)

    # ------------------------------------------------------------------------------ request
    def request(self, message: Message, expect: type[M], timeout: float | None = None) -> Awaitable[M]:
        """Send `message` now; the awaitable returned gives its `expect` answer, or raises LinkNak,
        LinkTimeout or LinkDown.

        The frame is handed to the port when this returns, before any await (the part a full port
        buffer did not take follows as it drains): a caller can send the wallet write and then do
        other work (journal the tap) while the phone writes. Resends and BUSY retries follow
        protocol/serial/transactions. Await what this returns: an unawaited request holds its SEQ.
        Only while the port's session is being opened (just after it came up) does the frame wait
        for SessionOpened instead.
        """
        if self._sessions and self.session is None:
            return self._after_session(message, expect, timeout)
        return self._answer(message, expect, timeout, self._send_new(message, expect, timeout))

    async def _after_session(self, message: Message, expect: type[M], timeout: float | None) -> M:
        await self._session_open()
        return await self._answer(message, expect, timeout, self._send_new(message, expect, timeout))

    def _send_new(self, message: Message, expect: type[Message], timeout: float | None) -> _InFlight:
        try:
            seq = self._seqs.next(self._pending)
        except SeqExhausted as exc:
            raise LinkError(str(exc)) from None
        flight = _InFlight(seq, message, expect, baud=self.baud, timeout=timeout, retries=self.retries)
        self.transport.write(flight.data)  # before registering: a failed write leaves nothing behind
        self.last_sent_ns = time.perf_counter_ns()
        flight.woken = asyncio.get_running_loop().create_future()
        self._pending[seq] = flight
        return flight

    async def _answer(self, message: Message, expect: type[M], timeout: float | None,
                      flight: _InFlight) -> M:
        busy = 0
        while True:
            answer = await self._await_answer(flight)
            verdict = flight.verdict()
            if verdict is Verdict.OK:
                return answer  # type: ignore[return-value]  # verdict() checked it is an `expect`
            if verdict is Verdict.UNEXPECTED:
                raise LinkError(f"expected {expect.__name__}, got {type(answer).__name__}")
            assert isinstance(answer, Nak)
            busy += verdict is Verdict.BUSY
            wait = busy_wait(busy) if verdict is Verdict.BUSY else None
            if wait is None:
                raise LinkNak(answer.reason, answer.command)
            # The device is still on an RF operation (one a restarted gate never saw finish).
            await asyncio.sleep(wait)
            flight = self._send_new(message, expect, timeout)

    async def _await_answer(self, flight: _InFlight) -> Message:
        """Wait for the transaction's answer, resending its frame while it has none."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                timer = loop.call_later(flight.timeout, wake_up, flight.woken, Wake.SILENCE)
                try:
                    why = await flight.woken
                finally:
                    timer.cancel()
                step = flight.after(why)
                if step is Step.ANSWERED:
                    assert flight.answer is not None
                    return flight.answer
                if why is Wake.SILENCE:
                    self.timeouts += 1
                if step is Step.GIVE_UP:
                    raise LinkTimeout(f"no answer to {type(flight.message).__name__} after "
                                      f"{flight.sends} tries")
                flight.woken = loop.create_future()
                self.transport.write(flight.data)
        finally:
            if self._pending.get(flight.seq) is flight:
                del self._pending[flight.seq]
            woken = flight.woken
            if not woken.done():
                woken.cancel()
            elif not woken.cancelled():
                woken.exception()  # retrieved: a LinkDown set while nobody awaited it is not logged
