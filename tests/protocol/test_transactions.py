"""Golden tests for the transaction rules (protocol/serial/transactions.py) that the gate's asyncio
link and the simulator's blocking client both follow: each case is a fixed script of what happened
and what the rules must say, so a change to a rule fails here before it reaches either end."""

from __future__ import annotations

import pytest

from protocol.serial import (
    Ack,
    BarrierOpen,
    Boot,
    Direction,
    Frame,
    Heartbeat,
    HeartbeatReply,
    Message,
    Nak,
    NakReason,
    ReadWallet,
    RfStatus,
    Wallet,
    WriteSlot,
)
from protocol.serial.timing import RETRIES
from protocol.serial.transactions import (
    BUSY_RETRIES,
    BUSY_WAIT_S,
    FAST_RETRIES,
    SeqCounter,
    SeqExhausted,
    Step,
    Transaction,
    Verdict,
    Wake,
    busy_wait,
    is_response,
)

S, C, A = Wake.SILENCE, Wake.CORRUPTION, Wake.ANSWER
RESEND, GIVE_UP, ANSWERED = Step.RESEND, Step.GIVE_UP, Step.ANSWERED


def test_the_policy_figures() -> None:
    assert (RETRIES, FAST_RETRIES, BUSY_RETRIES, BUSY_WAIT_S) == (2, 12, 10, 0.05)


# ------------------------------------------------------------------------------------- SEQ
def test_seqs_run_1_to_255_then_wrap_past_0() -> None:
    seqs = SeqCounter()
    assert [seqs.next() for _ in range(257)] == [*range(1, 256), 1, 2]


def test_a_seq_in_flight_is_skipped_and_a_full_house_refused() -> None:
    seqs = SeqCounter(last=254)
    assert seqs.next({255, 1}) == 2  # 255 and 1 are still waiting for their answers
    with pytest.raises(SeqExhausted):
        SeqCounter().next(range(1, 256))


# ------------------------------------------------------------------------------ resend rules
@pytest.mark.parametrize(("wakes", "steps", "sends"), [
    ([S, S, S], [RESEND, RESEND, GIVE_UP], 3),  # 1 + RETRIES sends, then unreachable
    ([C] * 12 + [C], [RESEND] * 12 + [GIVE_UP], 13),  # FAST_RETRIES resends on corruption
    ([C, S, C, S, S], [RESEND, RESEND, RESEND, RESEND, GIVE_UP], 5),  # separate budgets
    ([S, S], [RESEND, RESEND], 3),  # budget not yet spent
])
def test_resend_the_same_frame_until_the_budget_is_spent(wakes: list[Wake], steps: list[Step],
                                                         sends: int) -> None:
    t = Transaction(9, Heartbeat())
    assert [t.after(w) for w in wakes] == steps
    assert t.sends == sends
    assert t.data == bytes.fromhex("a50009012566")  # every send is these bytes: same SEQ, same CRC


def test_retries_are_per_transaction() -> None:
    t = Transaction(1, Heartbeat(), retries=0)
    assert t.after(S) is GIVE_UP and t.sends == 1


@pytest.mark.parametrize("wake", [S, C, A])
def test_an_answer_taken_wins_over_whatever_woke_the_waiter(wake: Wake) -> None:
    """The timer fires and the answer is read in the same instant: take it, do not resend."""
    t = Transaction(3, Heartbeat())
    assert t.take(HeartbeatReply(1, 2))
    assert t.after(wake) is ANSWERED and t.sends == 1 and (t.silent, t.corrupt) == (0, 0)


def test_the_first_response_is_the_answer_and_a_cached_copy_is_ignored() -> None:
    t = Transaction(3, Heartbeat())
    assert t.after(S) is RESEND
    assert t.take(HeartbeatReply(1, 2))
    assert not t.take(HeartbeatReply(9, 9))  # the cache answering the resend
    assert t.answer == HeartbeatReply(1, 2)


def test_only_responses_answer_requests() -> None:
    assert is_response(Frame(5, Ack.CODE, b""))
    assert is_response(Frame(5, Nak.CODE, bytes([Heartbeat.CODE, NakReason.BUSY])))
    assert not is_response(Boot(1, 1, 0, 0, 1).to_frame(5))  # an event: the device's own SEQ
    assert not is_response(Heartbeat().to_frame(5))  # a request is never an answer


# ------------------------------------------------------------------------------------ verdicts
WALLET = Wallet(7, RfStatus.OK, bytes(128))


@pytest.mark.parametrize(("request_", "expect", "answer", "verdict"), [
    (ReadWallet(7), Wallet, WALLET, Verdict.OK),
    (ReadWallet(7), None, WALLET, Verdict.OK),  # expected type from RESPONSE_TO
    (BarrierOpen(Direction.ENTRY), Ack, Ack(BarrierOpen.CODE), Verdict.OK),
    (ReadWallet(7), Wallet, Nak(ReadWallet.CODE, NakReason.BUSY), Verdict.BUSY),
    (ReadWallet(7), Wallet, Nak(ReadWallet.CODE, NakReason.BAD_PAYLOAD), Verdict.REFUSED),
    (ReadWallet(7), Wallet, HeartbeatReply(1, 2), Verdict.UNEXPECTED),
    (ReadWallet(7), None, HeartbeatReply(1, 2), Verdict.UNEXPECTED),
])
def test_verdicts(request_: Message, expect: type[Message] | None, answer: Message,
                  verdict: Verdict) -> None:
    t = Transaction(1, request_, expect)
    t.take(answer)
    assert t.after(A) is ANSWERED
    assert t.verdict() is verdict


def test_busy_asks_again_ten_times_50_ms_apart_then_the_nak_stands() -> None:
    assert [busy_wait(n) for n in range(1, 12)] == [0.05] * 10 + [None]
    assert busy_wait(1, busy_retries=0) is None  # a client that wants to see the refusal


# ------------------------------------------------------------------------------------ timeouts
@pytest.mark.parametrize(("request_", "baud", "seconds"), [
    (Heartbeat(), 115200, 0.061875),
    (BarrierOpen(Direction.ENTRY), 115200, 0.062222),
    (ReadWallet(7), 115200, 0.362569),
    (WriteSlot(7, 1, bytes(64)), 115200, 0.468212),
    (Heartbeat(), 9600, 0.302500),
])
def test_the_wait_before_a_resend(request_: Message, baud: int, seconds: float) -> None:
    assert Transaction(1, request_, baud=baud).timeout == pytest.approx(seconds, abs=1e-6)
    assert Transaction(1, request_, baud=baud, timeout=0.25).timeout == 0.25
