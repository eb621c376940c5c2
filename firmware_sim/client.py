"""A reference controller-side client for the protocol, synchronous, over any pyserial port.

It is what the tests and the CLI's self-check use to play the gate controller, and a worked example
of the rules in docs/protocol.md. The transaction rules are protocol/serial/transactions, the same
ones the gate's asyncio link follows: the first request on the port opens a session (OpenSession,
so the device forgets answers cached for an earlier controller whose SEQs this one may reuse; make a
new client for a reopened port), a new SEQ per request (1..255 cycling, from a random start), the
same frame and SEQ
on a resend (after a silent timeout, or at once after a corrupt frame), the first response with the
SEQ is the answer. Events are queued on the side, garbage and bad CRCs skipped by the decoder, a
partial frame abandoned after an idle gap, and SerialException left to the caller (the port was
unplugged: reopen it and resynchronise with GetStatus). NAK BUSY is reported (NakError) unless
`busy_retries` asks for the gate's policy: tests want to see the refusal.
"""

from __future__ import annotations

import collections
import time

import serial

from protocol.serial.framer import FrameDecoder
from protocol.serial.messages import (
    Kind,
    Message,
    Nak,
    NakReason,
    PayloadError,
    SessionOpened,
    kind_of,
    parse,
)
from protocol.serial.timing import DEFAULT_BAUD, FRAME_GAP_S, RETRIES
from protocol.serial.transactions import (
    SESSION_ATTEMPTS,
    SeqCounter,
    Step,
    Transaction,
    Verdict,
    Wake,
    busy_wait,
    new_session,
    session_confirmed,
)


class ClientError(Exception):
    """Base of the client's errors."""


class RequestTimeout(ClientError):
    """No answer after every retry: the device is hung, unplugged or the line is dead."""


class NakError(ClientError):
    """The device refused the request; `reason` says why."""

    def __init__(self, request: Message, reason: NakReason) -> None:
        super().__init__(f"{type(request).__name__} refused: {reason.name}")
        self.request = request
        self.reason = reason


class SerialClient:
    def __init__(self, port: serial.SerialBase, baud: int = DEFAULT_BAUD) -> None:
        self.port = port
        self.baud = baud
        self.decoder = FrameDecoder()
        self.events: collections.deque[tuple[int, Message]] = collections.deque(maxlen=10_000)
        self._responses: dict[int, Message] = {}
        self._seqs = SeqCounter.anywhere()
        self.session: SessionOpened | None = None  # None until the first request opens one
        self.retries_used = 0
        self.ignored_frames = 0
        self._last_byte_at = time.monotonic()

    def next_seq(self) -> int:
        return self._seqs.next()

    def send_raw(self, data: bytes) -> None:
        self.port.write(data)

    def open_session(self, retries: int = RETRIES, timeout: float | None = None) -> SessionOpened:
        """OpenSession, until the device echoes its nonce: from then on every answer is to this
        client's requests, none from a cache an earlier controller left. The first request does it,
        with that request's timeout and retries."""
        for _ in range(SESSION_ATTEMPTS):
            opening = new_session()
            answer = self._request(opening, timeout, retries, 0)
            if session_confirmed(opening, answer):
                assert isinstance(answer, SessionOpened)
                self.session = answer
                return answer
        raise ClientError(f"no session after {SESSION_ATTEMPTS} OpenSession requests")

    def request(self, message: Message, timeout: float | None = None, retries: int = RETRIES,
                busy_retries: int = 0) -> Message:
        """Send `message` and return its response; NakError if refused, RequestTimeout if unanswered.
        Opens the session first if this is the client's first request."""
        if self.session is None:
            self.open_session(retries, timeout)
        return self._request(message, timeout, retries, busy_retries)

    def _request(self, message: Message, timeout: float | None, retries: int,
                 busy_retries: int) -> Message:
        busy = 0
        while True:
            transaction = Transaction(self.next_seq(), message, baud=self.baud, timeout=timeout,
                                      retries=retries)
            self._responses.pop(transaction.seq, None)  # a stale answer to this SEQ's last use
            verdict = self._exchange(transaction)
            answer = transaction.answer
            if verdict is Verdict.OK:
                assert answer is not None
                return answer
            if verdict is Verdict.UNEXPECTED:
                raise ClientError(f"{type(message).__name__} answered by {type(answer).__name__}")
            assert isinstance(answer, Nak)
            busy += verdict is Verdict.BUSY
            wait = busy_wait(busy, busy_retries) if verdict is Verdict.BUSY else None
            if wait is None:
                raise NakError(message, answer.reason)
            time.sleep(wait)

    def _exchange(self, transaction: Transaction) -> Verdict:
        """Send the transaction's frame, and again while the rules say so, until it has an answer."""
        seq = transaction.seq
        while True:
            self.port.write(transaction.data)
            deadline = time.monotonic() + transaction.timeout
            why = Wake.SILENCE
            while (remaining := deadline - time.monotonic()) > 0:
                if self._pump(remaining):
                    why = Wake.CORRUPTION
                response = self._responses.pop(seq, None)
                if response is not None:
                    transaction.take(response)
                    why = Wake.ANSWER
                if why is not Wake.SILENCE:
                    break
            step = transaction.after(why)
            if step is Step.ANSWERED:
                return transaction.verdict()
            if step is Step.GIVE_UP:
                raise RequestTimeout(f"{type(transaction.message).__name__} unanswered after "
                                     f"{transaction.sends} tries")
            self.retries_used += 1

    def next_event(self, kind: type[Message] | None = None, timeout: float = 2.0) -> Message:
        """The oldest queued event (of type `kind`), waiting up to `timeout`; TimeoutError if none."""
        deadline = time.monotonic() + timeout
        while True:
            for index, (_, event) in enumerate(self.events):
                if kind is None or isinstance(event, kind):
                    del self.events[index]
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {kind.__name__ if kind else 'event'} within {timeout} s")
            self._pump(remaining)

    def drain_events(self) -> list[Message]:
        events = [event for _, event in self.events]
        self.events.clear()
        return events

    def poll(self, duration: float) -> None:
        """Read whatever arrives for `duration` seconds (queues events, keeps stray responses)."""
        deadline = time.monotonic() + duration
        while (remaining := deadline - time.monotonic()) > 0:
            self._pump(remaining)

    def _pump(self, budget: float) -> bool:
        """Read once (at most `budget` seconds) and sort whatever frames completed; True if bytes
        were thrown away meanwhile (a corrupt frame: it may have been an answer)."""
        wait = FRAME_GAP_S / 2 if budget >= FRAME_GAP_S / 2 else max(0.001, round(budget, 3))
        if self.port.timeout != wait:  # setting it reconfigures the port (a tcsetattr): only on change
            self.port.timeout = wait
        data = self.port.read(max(1, self.port.in_waiting))
        now = time.monotonic()
        errors = self.decoder.bad_crc + self.decoder.length_errors
        if data:
            self._last_byte_at = now
            frames = self.decoder.feed(data)
        elif self.decoder.pending and now - self._last_byte_at > FRAME_GAP_S:
            frames = self.decoder.expire()
            errors = -1  # a frame was cut short
        else:
            return False
        for frame in frames:
            try:
                message = parse(frame)
            except PayloadError:
                self.ignored_frames += 1
                continue
            kind = kind_of(frame.command)
            if kind is Kind.EVENT:
                self.events.append((frame.seq, message))
            elif kind is Kind.RESPONSE:
                self._responses[frame.seq] = message
            else:
                self.ignored_frames += 1
        return errors != self.decoder.bad_crc + self.decoder.length_errors
