"""A reference controller-side client for the protocol, synchronous, over any pyserial port.

It is what the tests and the CLI's self-check use to play the gate controller, and a worked example
of the rules in docs/protocol.md: a new SEQ per request (1..255, cycling), the same SEQ on a retry,
responses matched by SEQ, events queued on the side, garbage and bad CRCs skipped by the decoder,
a partial frame abandoned after an idle gap, and SerialException left to the caller (the port was
unplugged: reopen it and resynchronise with GetStatus).
"""

from __future__ import annotations

import collections
import time

import serial

from protocol.serial.framer import FrameDecoder, encode
from protocol.serial.messages import (
    RESPONSE_TO,
    Kind,
    Message,
    Nak,
    NakReason,
    PayloadError,
    kind_of,
    parse,
)
from protocol.serial.timing import DEFAULT_BAUD, FRAME_GAP_S, RETRIES, response_timeout


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
        self._seq = 0
        self.retries_used = 0
        self.ignored_frames = 0
        self._last_byte_at = time.monotonic()

    def next_seq(self) -> int:
        self._seq = self._seq % 255 + 1
        return self._seq

    def send_raw(self, data: bytes) -> None:
        self.port.write(data)

    def request(self, message: Message, timeout: float | None = None, retries: int = RETRIES) -> Message:
        """Send `message` and return its response; NakError if refused, RequestTimeout if unanswered."""
        seq = self.next_seq()
        data = encode(message.to_frame(seq))
        wait = response_timeout(message, self.baud) if timeout is None else timeout
        self._responses.pop(seq, None)
        for attempt in range(retries + 1):
            if attempt:
                self.retries_used += 1
            self.port.write(data)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                self._pump(deadline - time.monotonic())
                response = self._responses.pop(seq, None)
                if response is None:
                    continue
                if isinstance(response, Nak):
                    raise NakError(message, response.reason)
                expected = RESPONSE_TO.get(type(message))
                if expected is not None and not isinstance(response, expected):
                    self.ignored_frames += 1  # a stale answer that reused this SEQ
                    continue
                return response
        raise RequestTimeout(f"{type(message).__name__} unanswered after {retries + 1} tries")

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

    def _pump(self, budget: float) -> None:
        """Read once (at most `budget` seconds) and sort whatever frames completed."""
        wait = FRAME_GAP_S / 2 if budget >= FRAME_GAP_S / 2 else max(0.001, round(budget, 3))
        if self.port.timeout != wait:  # setting it reconfigures the port (a tcsetattr): only on change
            self.port.timeout = wait
        data = self.port.read(max(1, self.port.in_waiting))
        now = time.monotonic()
        if data:
            self._last_byte_at = now
            frames = self.decoder.feed(data)
        elif self.decoder.pending and now - self._last_byte_at > FRAME_GAP_S:
            frames = self.decoder.expire()
        else:
            return
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
