"""The controller's side of a request and its answer, as rules without I/O.

The gate (asyncio) and the simulator's reference client (blocking) move bytes differently but must
agree on what those bytes mean, so the rules live here once:

- `new_session` / `session_confirmed`: on every (re)open of the port the controller's first request
  is OpenSession (a random nonce), and nothing else is sent until SessionOpened echoes that nonce.
  The device then forgets its retry cache and the answers it still owed to earlier requests: a
  restarted controller, whose SEQs start over, is never answered from the previous process's cache.
  That is the guarantee; the random first SEQ below only makes a collision with an old firmware's
  cache (one without sessions) unlikely.
- `SeqCounter`: every new request gets a new SEQ, 1..255 cycling, never one still in flight (the
  device caches its last 16 answers by SEQ, so a reused SEQ could be answered from that cache
  within a session). `SeqCounter.anywhere()` starts at a random SEQ.
- `Transaction`: one request under one SEQ. The first response carrying its SEQ is its answer; a
  later copy (the cache answering a resend) is ignored. Without an answer the *same frame* is resent
  after a silent `response_timeout` (at most `retries` times) and at once after a corrupt frame (it
  may have been the answer; at most `fast_retries` times): the device ignores a repeat it is still
  working on and answers a finished one from its cache, so a resend never makes it act twice. An
  answer read in the same instant as a timeout wins over the timeout.
- `busy_wait`: a NAK is final for its SEQ; after NAK BUSY (an RF operation still running) the
  request is asked again as a new transaction, BUSY_WAIT_S later, at most BUSY_RETRIES times.

docs/protocol.md ("Requests, responses, timeouts and retries") is the prose of the same rules.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Container

from .framer import Frame
from .messages import RESPONSE_TO, Kind, Message, Nak, NakReason, OpenSession, SessionOpened, kind_of
from .timing import DEFAULT_BAUD, RETRIES, response_timeout

#: Resends triggered by a corrupt frame (cheap: they cost wire time only, never a timeout).
FAST_RETRIES = 12
#: New requests after a NAK BUSY, BUSY_WAIT_S apart (covers the slowest RF operation, 0.4 s).
BUSY_RETRIES = 10
BUSY_WAIT_S = 0.05
SEQ_MAX = 255
#: OpenSessions asked before giving up when each is answered by something else than its SessionOpened.
SESSION_ATTEMPTS = 3


class SeqExhausted(Exception):
    """Every SEQ is held by a request in flight."""


class SeqCounter:
    """SEQs for new requests: 1..255 cycling (0 is never used), skipping those still in flight."""

    __slots__ = ("last",)

    def __init__(self, last: int = 0) -> None:
        self.last = last

    @classmethod
    def anywhere(cls) -> SeqCounter:
        """A counter whose first SEQ is random (1..255): a new process does not replay the last
        one's SEQs. Defence in depth only; OpenSession is what clears the device's cache."""
        return cls(last=secrets.randbelow(SEQ_MAX))

    def next(self, in_flight: Container[int] = ()) -> int:
        for _ in range(SEQ_MAX):
            self.last = self.last % SEQ_MAX + 1
            if self.last not in in_flight:
                return self.last
        raise SeqExhausted(f"{SEQ_MAX} requests in flight")


class Wake(enum.Enum):
    """What a waiting request was woken by."""

    ANSWER = "the answer arrived"
    SILENCE = "response timeout"
    CORRUPTION = "a corrupt frame arrived: it may have been the answer"


class Step(enum.Enum):
    """What to do once woken."""

    ANSWERED = "read the verdict"
    RESEND = "resend the same frame, same SEQ"
    GIVE_UP = "no answer after every retry"


class Verdict(enum.Enum):
    """What the answer means for the request."""

    OK = "the expected response"
    REFUSED = "a NAK: final for this SEQ"
    BUSY = "NAK BUSY: ask again as a new request (busy_wait)"
    UNEXPECTED = "a response of another type"


def new_session() -> OpenSession:
    """The first request after the port (re)opens, with a fresh random nonce."""
    return OpenSession(secrets.randbits(32))


def session_confirmed(request: OpenSession, answer: Message | None) -> bool:
    """True if `answer` opens the session `request` asked for (SessionOpened echoing its nonce);
    anything else (a NAK, a stale answer) leaves the session closed: ask again with a new one."""
    return isinstance(answer, SessionOpened) and answer.nonce == request.nonce


def is_response(frame: Frame) -> bool:
    """Responses carry the SEQ of a request; events carry the device's own and answer nothing."""
    return kind_of(frame.command) is Kind.RESPONSE


def busy_wait(busy_naks: int, busy_retries: int = BUSY_RETRIES) -> float | None:
    """After the `busy_naks`-th NAK BUSY to one request: seconds to wait before asking again with a
    new SEQ, or None when the NAK stands."""
    return BUSY_WAIT_S if busy_naks <= busy_retries else None


class Transaction:
    """One request under one SEQ, from its first send to its answer or giving up."""

    __slots__ = ("_timeout", "answer", "baud", "corrupt", "data", "expect", "fast_retries", "message",
                 "resends", "retries", "seq", "silent")

    def __init__(self, seq: int, message: Message, expect: type[Message] | None = None, *,
                 baud: int = DEFAULT_BAUD, timeout: float | None = None, retries: int = RETRIES,
                 fast_retries: int = FAST_RETRIES) -> None:
        self.seq = seq
        self.message = message
        self.expect = RESPONSE_TO.get(type(message)) if expect is None else expect
        self.data = message.to_bytes(seq)  # what goes on the wire, first time and every resend
        self.baud = baud
        self._timeout = timeout
        self.retries = retries
        self.fast_retries = fast_retries
        self.answer: Message | None = None
        self.silent = 0  # wake-ups by a timeout without an answer
        self.corrupt = 0  # wake-ups by a corrupt frame without an answer
        self.resends = 0

    @property
    def timeout(self) -> float:
        """How long to wait for the answer before resending (worked out when first waited on, so
        not between a caller's request and its frame reaching the wire)."""
        if self._timeout is None:
            self._timeout = response_timeout(self.message, self.baud)
        return self._timeout

    @property
    def sends(self) -> int:
        """How many times the frame went out (counting a resend once Step.RESEND was returned)."""
        return 1 + self.resends

    def take(self, message: Message) -> bool:
        """A response with this SEQ was read: True if it is the answer, False for a later copy."""
        if self.answer is not None:
            return False
        self.answer = message
        return True

    def after(self, wake: Wake) -> Step:
        """Woken: an answer taken in the meantime wins whatever the wake-up was; else resend while
        the budget for this kind of wake-up lasts."""
        if self.answer is not None:
            return Step.ANSWERED
        if wake is Wake.SILENCE:
            self.silent += 1
        elif wake is Wake.CORRUPTION:
            self.corrupt += 1
        if self.silent > self.retries or self.corrupt > self.fast_retries:
            return Step.GIVE_UP
        self.resends += 1
        return Step.RESEND

    def verdict(self) -> Verdict:
        """What the answer taken means (call after Step.ANSWERED)."""
        answer = self.answer
        if isinstance(answer, Nak):
            return Verdict.BUSY if answer.reason == NakReason.BUSY else Verdict.REFUSED
        if self.expect is not None and not isinstance(answer, self.expect):
            return Verdict.UNEXPECTED
        return Verdict.OK
