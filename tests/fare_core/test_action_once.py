"""An over-the-air action is written into a wallet once, whichever gates see it (both implementations).

The action list reaches every gate, and the backend retires an action only after a gate reports it:
until then a second gate would apply it again. The wallet's last_action (the id of the last action
written into it) is what stops that: an action id at or below it is not applied again.
"""

from __future__ import annotations

from typing import Any

import pytest

from fare_core import Flag, Reason
from fare_core.record import FIELD_OFFSETS, CardRecord

from .tables import A, C, local
from .test_decide import CARD, ENTRY, EXIT, TUE, Rider

APPLIED = Flag.TOPUP_APPLIED | Flag.UNBLOCKED


def test_a_topup_is_applied_once_and_the_second_gate_charges_normally(impl: Any) -> None:
    r = Rider(impl, balance=1000)
    first = r.tap(A, ENTRY, local(*TUE, 10), topup=500, action_id=7)  # gate 1 applies action 7
    assert (first.allowed, first.topup, first.balance_after) == (True, 500, 1500)
    assert first.flags & Flag.TOPUP_APPLIED and r.record.last_action == 7
    # gate 2 has not yet heard that action 7 is applied: the exit is charged, the top-up not repeated
    out = r.tap(C, EXIT, local(*TUE, 10, 30), topup=500, action_id=7, gate_no=2)
    assert (out.allowed, out.reason, out.fare, out.topup, out.balance_after) == (
        True, Reason.OK, 400, 0, 1100)
    assert out.flags & Flag.ACTION_ALREADY_APPLIED and not out.flags & APPLIED
    assert (r.record.balance, r.record.last_action) == (1100, 7)


def test_a_newer_action_is_applied_and_an_older_one_is_not(impl: Any) -> None:
    r = Rider(impl, balance=1000, last_action=7)
    newer = r.tap(A, ENTRY, local(*TUE, 10), topup=300, action_id=9)
    assert (newer.topup, newer.balance_after, r.record.last_action) == (300, 1300, 9)
    older = r.tap(C, EXIT, local(*TUE, 10, 30), topup=300, action_id=8)  # below 9: already in the wallet
    assert (older.topup, older.fare, older.balance_after) == (0, 400, 900)
    assert older.flags & Flag.ACTION_ALREADY_APPLIED and r.record.last_action == 9


def test_an_unblock_is_applied_once(impl: Any) -> None:
    r = Rider(impl, status=1)
    ok = r.tap(A, ENTRY, local(*TUE, 10), unblock=True, action_id=4)
    assert (ok.allowed, bool(ok.flags & Flag.UNBLOCKED)) == (True, True)
    assert not r.record.blocked and r.record.last_action == 4
    # blocked again afterwards (the wallet says so): the old unblock, still listed at a lagging gate,
    # does not undo the new block; nothing is written
    r.wallet = impl.core.new_wallet(r.record.replace(status=1, counter=r.record.counter + 1), r.sam)
    stale = r.tap(A, ENTRY, local(*TUE, 11), unblock=True, action_id=4)
    assert (stale.allowed, stale.reason, stale.record) == (False, Reason.CARD_BLOCKED, None)
    assert r.record.blocked
    fresh = r.tap(A, ENTRY, local(*TUE, 11, 1), unblock=True, action_id=5)
    assert fresh.allowed and fresh.flags & Flag.UNBLOCKED and r.record.last_action == 5


def test_an_action_written_by_a_denied_tap_is_not_applied_again(impl: Any) -> None:
    r = Rider(impl, balance=300)
    assert r.tap(A, ENTRY, local(*TUE, 10)).allowed
    short = r.tap(C, EXIT, local(*TUE, 10, 30), topup=50, action_id=2)  # 350 < 400: denied, top-up kept
    assert (short.allowed, short.reason, short.topup, short.balance_after) == (
        False, Reason.INSUFFICIENT_BALANCE, 50, 350)
    assert short.record is not None and r.record.last_action == 2
    again = r.tap(C, EXIT, local(*TUE, 10, 31), topup=50, action_id=2, gate_no=2)
    assert (again.allowed, again.topup, again.record, again.balance_after) == (
        False, 0, None, 350)


def test_a_refused_topup_stays_pending(impl: Any) -> None:
    r = Rider(impl, balance=99000)  # the purse maximum is 100000
    out = r.tap(A, ENTRY, local(*TUE, 10), topup=5000, action_id=3)
    assert out.allowed and out.flags & Flag.TOPUP_REFUSED and out.topup == 0
    assert r.record.last_action == 0  # not recorded: applied at a later tap once it fits


def test_without_an_action_id_the_action_is_applied_as_before(impl: Any) -> None:
    r = Rider(impl, balance=1000, last_action=7)
    for balance in (1500, 2000):
        out = r.tap(A, ENTRY, local(*TUE, 10, balance // 100), topup=500)  # no id: no idempotence
        assert out.flags & Flag.TOPUP_APPLIED and out.balance_after == balance
        assert r.record.last_action == 7  # left as it was
        r.tap(A, EXIT, local(*TUE, 10, balance // 100 + 1))


def test_a_denylisted_phone_neither_gets_nor_records_the_action(impl: Any) -> None:
    r = Rider(impl, denied=(CARD,))
    out = r.tap(A, ENTRY, local(*TUE, 10), topup=500, action_id=3)
    assert (out.reason, out.topup) == (Reason.DENYLISTED, 0)
    assert not out.flags & Flag.ACTION_ALREADY_APPLIED
    assert r.record.blocked and r.record.last_action == 0


def test_last_action_lives_in_the_former_padding() -> None:
    # Layout 1 kept bytes 52..55 as zeros: such records read last_action 0 and stay valid.
    assert FIELD_OFFSETS["last_action"] == 52
    body = CardRecord(card_id=CARD, balance=1000).body()
    assert body[52:56] == bytes(4)
    assert CardRecord.from_body(body).last_action == 0
    top = CardRecord(card_id=CARD, last_action=0xFFFFFFFF)
    assert CardRecord.from_body(top.body()).last_action == 0xFFFFFFFF


@pytest.mark.parametrize("action_id", [-1, 2**32])
def test_an_action_id_beyond_32_bits_is_refused(impl: Any, action_id: int) -> None:
    with pytest.raises(ValueError, match="action_id"):
        impl.core.Tap(CARD, A, ENTRY, local(*TUE, 10), topup=500, action_id=action_id)
