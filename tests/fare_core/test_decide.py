"""decide(), hand-worked: every rule of the fare table and every reason code, on both implementations.

The fares are worked out by hand from the table in tables.py; each test says the arithmetic.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from fare_core import Direction, Flag, GateMode, Reason
from fare_core.record import SLOT_SIZE, CardRecord

from .tables import ADULT, BUS, STUDENT, A, B, C, build_table, local

MASTER = bytes(range(16))
CARD = 0x0123456789ABCDEF
TUE = (2026, 11, 24)  # a Tuesday
ENTRY, EXIT = Direction.ENTRY, Direction.EXIT


class Rider:
    """One phone's wallet, tapped through decide() with the implementation under test."""

    def __init__(self, impl: Any, table: Any = None, denied: tuple[int, ...] = (), **record: Any) -> None:
        self.core = impl.core
        self.sam = impl.core.Sam(MASTER)
        self.table = impl.core.FareTable(table or build_table())
        self.denylist = impl.denylist.DenyList(denied, version=1)
        fields = {"card_id": CARD, "category": ADULT, "balance": 1000, **record}
        self.wallet = impl.core.new_wallet(CardRecord(**fields), self.sam)

    @property
    def record(self) -> CardRecord:
        return self.core.read_wallet(self.wallet, CARD, self.sam)[0]

    def tap(self, station: int, direction: int, when: int, **extra: Any) -> Any:
        tap = self.core.Tap(CARD, station, direction, when, **extra)
        decision = self.core.decide(self.wallet, tap, self.table, self.denylist, self.sam)
        if decision.record is not None:
            self.wallet = self.core.apply_write(self.wallet, decision.slot, decision.record)
        return decision

    def trip(self, origin: int, dest: int, entry: int, exit_: int) -> Any:
        first = self.tap(origin, ENTRY, entry)
        assert first.allowed, first
        return self.tap(dest, EXIT, exit_)


def test_offpeak_trip_charges_matrix_fare_and_advances_counter(impl: Any) -> None:
    r = Rider(impl)
    entry = r.tap(A, ENTRY, local(*TUE, 10, 0))
    assert (entry.reason, entry.fare, entry.counter, entry.slot) == (Reason.OK, 0, 1, 1)
    assert r.record.entry_open and r.record.entry_station == A
    out = r.tap(C, EXIT, local(*TUE, 10, 30))
    # A-C off-peak adult = 400; 1000 - 400 = 600
    assert (out.allowed, out.reason, out.fare, out.balance_before, out.balance_after) == (
        True, Reason.OK, 400, 1000, 600)
    assert (out.counter, out.slot) == (2, 0)
    rec = r.record
    assert (rec.balance, rec.counter, rec.entry_open) == (600, 2, False)
    assert (rec.day_spent, rec.last_station) == (400, C)


def test_band_is_chosen_by_entry_time(impl: Any) -> None:
    # entered 08:00 (peak) and left 09:30 (off-peak): the leg starts in the peak, A-C peak = 500
    assert Rider(impl).trip(A, C, local(*TUE, 8, 0), local(*TUE, 9, 30)).fare == 500
    # 07:29 is still off-peak, 07:30 is peak
    assert Rider(impl).trip(A, B, local(*TUE, 7, 29), local(*TUE, 7, 50)).fare == 200
    assert Rider(impl).trip(A, B, local(*TUE, 7, 30), local(*TUE, 7, 50)).fare == 300
    # Sunday 08:00 is off-peak
    assert Rider(impl).trip(A, B, local(2026, 11, 22, 8, 0), local(2026, 11, 22, 8, 20)).fare == 200


def test_student_category_pays_half(impl: Any) -> None:
    # A-C off-peak 400, student half = 200
    assert Rider(impl, category=STUDENT).trip(A, C, local(*TUE, 10), local(*TUE, 10, 40)).fare == 200


def test_same_station_exit_inside_window_is_free_then_charged(impl: Any) -> None:
    quick = Rider(impl).trip(A, A, local(*TUE, 10), local(*TUE, 10, 4))
    assert (quick.fare, bool(quick.flags & Flag.SAME_STATION)) == (0, True)
    # after the 5-minute window the diagonal fare applies: 200 off-peak
    late = Rider(impl).trip(A, A, local(*TUE, 10), local(*TUE, 10, 6))
    assert (late.fare, bool(late.flags & Flag.SAME_STATION)) == (200, False)


def test_anti_passback_refuses_second_entry_at_same_station(impl: Any) -> None:
    r = Rider(impl)
    assert r.tap(A, ENTRY, local(*TUE, 10)).allowed
    again = r.tap(A, ENTRY, local(*TUE, 10, 1))
    assert (again.allowed, again.reason, again.record, again.slot) == (False, Reason.ALREADY_INSIDE, None, -1)
    assert r.record.counter == 1


def test_missing_exit_charged_at_next_entry(impl: Any) -> None:
    r = Rider(impl)
    assert r.tap(A, ENTRY, local(*TUE, 10)).allowed
    # never exited; the next day enters at B: charged the maximum fare from A (peak A-C = 500)
    nxt = r.tap(B, ENTRY, local(2026, 11, 25, 9))
    assert (nxt.allowed, nxt.reason, nxt.fare, nxt.balance_after) == (
        True, Reason.MISSING_EXIT_CHARGED, 500, 500)
    assert nxt.flags & Flag.MISSING_EXIT
    assert (r.record.entry_station, r.record.entry_open) == (B, True)
    # re-entering the same station after the anti-passback window also counts as a missing exit
    r2 = Rider(impl)
    r2.tap(B, ENTRY, local(*TUE, 10))
    assert r2.tap(B, ENTRY, local(*TUE, 10, 30)).reason == Reason.MISSING_EXIT_CHARGED


def test_exit_without_entry_is_refused(impl: Any) -> None:
    out = Rider(impl).tap(C, EXIT, local(*TUE, 10))
    assert (out.allowed, out.reason, out.fare, out.record) == (False, Reason.NO_ENTRY, 0, None)


def test_insufficient_balance_at_entry_and_at_exit(impl: Any) -> None:
    low = Rider(impl, balance=150).tap(A, ENTRY, local(*TUE, 10))  # minimum to enter is 200
    assert (low.allowed, low.reason, low.record) == (False, Reason.INSUFFICIENT_BALANCE, None)
    r = Rider(impl, balance=300)
    out = r.trip(A, C, local(*TUE, 10), local(*TUE, 10, 30))  # 400 > 300
    assert (out.allowed, out.reason, out.record, out.balance_after) == (
        False, Reason.INSUFFICIENT_BALANCE, None, 300)
    # a top-up waiting in the action list lets the same exit through, and is written even so
    paid = r.tap(C, EXIT, local(*TUE, 10, 31), topup=500)
    assert (paid.allowed, paid.fare, paid.topup, paid.balance_after) == (True, 400, 500, 400)


def test_denylisted_phone_is_blocked_on_the_wallet(impl: Any) -> None:
    r = Rider(impl, denied=(CARD,))
    first = r.tap(A, ENTRY, local(*TUE, 10))
    assert (first.allowed, first.reason, first.fare) == (False, Reason.DENYLISTED, 0)
    assert first.flags & Flag.BLOCKED_NOW and first.record is not None
    assert r.record.blocked and r.record.balance == 1000
    second = r.tap(A, ENTRY, local(*TUE, 10, 1))
    assert (second.reason, second.record) == (Reason.DENYLISTED, None)
    # taken off the list, the wallet itself still says blocked...
    r.denylist = impl.denylist.DenyList((), version=2)
    assert r.tap(A, ENTRY, local(*TUE, 10, 2)).reason == Reason.CARD_BLOCKED
    # ...until the action list's unblock reaches it
    ok = r.tap(A, ENTRY, local(*TUE, 10, 3), unblock=True)
    assert (ok.allowed, bool(ok.flags & Flag.UNBLOCKED)) == (True, True)
    assert not r.record.blocked


def test_bad_mac_and_torn_slot(impl: Any) -> None:
    r = Rider(impl)
    r.tap(A, ENTRY, local(*TUE, 10))  # slot 1 now holds counter 1, slot 0 counter 0
    forged = bytearray(r.wallet)
    forged[SLOT_SIZE + 12] ^= 0x40  # raise the balance in the newest slot: MAC no longer matches
    out = impl.core.decide(bytes(forged), impl.core.Tap(CARD, C, EXIT, local(*TUE, 10, 30)), r.table,
                           r.denylist, r.sam)
    # the forged slot is ignored; the older slot (no entry) is in force
    assert out.reason == Reason.NO_ENTRY and out.counter == 0
    forged[12] ^= 0x40  # both slots bad
    out = impl.core.decide(bytes(forged), impl.core.Tap(CARD, C, EXIT, local(*TUE, 10, 30)), r.table,
                           r.denylist, r.sam)
    assert (out.allowed, out.reason) == (False, Reason.BAD_MAC)
    # the right MAC under another master key is still a bad MAC
    other = impl.core.Sam(bytes(16))
    out = impl.core.decide(r.wallet, impl.core.Tap(CARD, C, EXIT, local(*TUE, 10, 30)), r.table,
                           r.denylist, other)
    assert out.reason == Reason.BAD_MAC


def test_counter_backwards_and_expiry(impl: Any) -> None:
    r = Rider(impl, counter=41)
    assert r.tap(A, ENTRY, local(*TUE, 10), min_counter=42).reason == Reason.COUNTER_BACKWARDS
    assert r.tap(A, ENTRY, local(*TUE, 10), min_counter=41).allowed
    day = (local(*TUE, 10) + 8 * 3600 - 4 * 3600) // 86400 - 10957  # service day of the tap
    assert Rider(impl, expiry_day=day).tap(A, ENTRY, local(*TUE, 10)).allowed
    assert Rider(impl, expiry_day=day - 1).tap(A, ENTRY, local(*TUE, 10)).reason == Reason.EXPIRED


def test_daily_cap(impl: Any) -> None:
    r = Rider(impl, balance=5000)
    fares = [r.trip(A, C, local(*TUE, h), local(*TUE, h, 30)).fare for h in (10, 12, 14, 16)]
    # 400 + 400 + 200 (cap 1000 reached) + 0
    assert fares == [400, 400, 200, 0]
    assert r.record.day_spent == 1000 and r.record.balance == 4000
    # the service day starts at 04:00: 03:00 next morning is still Tuesday's day, 05:00 is not
    assert r.trip(A, B, local(2026, 11, 25, 3), local(2026, 11, 25, 3, 20)).reason == Reason.CAP_REACHED
    assert r.trip(A, B, local(2026, 11, 25, 5), local(2026, 11, 25, 5, 20)).fare == 200


def test_monthly_discount_after_threshold(impl: Any) -> None:
    month = (2026 - 2000) * 12 + 10  # November 2026
    spent = Rider(impl, month_number=month, month_spent=10000)
    out = spent.trip(A, C, local(*TUE, 10), local(*TUE, 10, 30))
    assert (out.fare, bool(out.flags & Flag.MONTHLY_DISCOUNT)) == (320, True)  # 400 - 20%
    # spending from October does not count in November
    old = Rider(impl, month_number=month - 1, month_spent=10000)
    assert old.trip(A, C, local(*TUE, 10), local(*TUE, 10, 30)).fare == 400
    assert spent.record.month_spent == 10320


def test_overstay_surcharge(impl: Any) -> None:
    out = Rider(impl).trip(A, C, local(*TUE, 10), local(*TUE, 14, 1))
    # A-C 400 + 500 for more than 4 hours inside
    assert (out.reason, out.fare, bool(out.flags & Flag.OVERSTAY)) == (Reason.OVERSTAY_SURCHARGE, 900, True)


def test_bus_flat_fare_and_transfers(impl: Any) -> None:
    r = Rider(impl, balance=2000)
    bus = r.tap(BUS, ENTRY, local(*TUE, 10))
    assert (bus.fare, bus.balance_after) == (200, 1800)
    # metro entered 30 min after the bus: 100 off A-C (400) = 300
    out = r.trip(A, C, local(*TUE, 10, 30), local(*TUE, 11))
    assert (out.fare, bool(out.flags & Flag.TRANSFER)) == (300, True)
    assert r.record.transfers_used == 1
    # back on a bus 10 min after leaving the metro: 200 - 100
    again = r.tap(BUS, ENTRY, local(*TUE, 11, 10))
    assert (again.fare, r.record.transfers_used) == (100, 2)
    # the journey has used its 2 transfers: the next metro leg pays in full
    assert r.trip(A, B, local(*TUE, 11, 20), local(*TUE, 11, 40)).fare == 200
    assert r.record.transfers_used == 0
    # outside the 90-minute window: no discount
    late = Rider(impl)
    late.tap(BUS, ENTRY, local(*TUE, 10))
    assert late.trip(A, B, local(*TUE, 11, 31), local(*TUE, 11, 50)).fare == 200
    assert Rider(impl, category=STUDENT).tap(BUS, ENTRY, local(*TUE, 10)).fare == 100


def test_topup_is_applied_or_refused_at_the_purse_maximum(impl: Any) -> None:
    r = Rider(impl, balance=1000)
    out = r.tap(A, ENTRY, local(*TUE, 10), topup=5000)
    assert (out.topup, out.balance_after, bool(out.flags & Flag.TOPUP_APPLIED)) == (5000, 6000, True)
    full = Rider(impl, balance=99000).tap(A, ENTRY, local(*TUE, 10), topup=5000)  # max purse 100000
    assert (full.allowed, full.topup, full.balance_after, bool(full.flags & Flag.TOPUP_REFUSED)) == (
        True, 0, 99000, True)


def test_gate_modes(impl: Any) -> None:
    r = Rider(impl)
    assert r.tap(A, ENTRY, local(*TUE, 10), mode=GateMode.CLOSED).reason == Reason.GATE_CLOSED
    assert r.tap(A, ENTRY, local(*TUE, 10), mode=GateMode.FREE_EXIT).reason == Reason.GATE_CLOSED
    r.tap(A, ENTRY, local(*TUE, 10))
    out = r.tap(C, EXIT, local(*TUE, 10, 20), mode=GateMode.FREE_EXIT)
    assert (out.allowed, out.reason, out.fare, r.record.entry_open) == (True, Reason.FREE_EXIT, 0, False)


def test_unknown_station_and_category(impl: Any) -> None:
    assert Rider(impl).tap(999, ENTRY, local(*TUE, 10)).reason == Reason.UNKNOWN_STATION
    assert Rider(impl, category=3).tap(A, ENTRY, local(*TUE, 10)).reason == Reason.WRONG_CATEGORY


def test_display_text_in_chinese_and_english(impl: Any) -> None:
    out = Rider(impl).trip(A, C, local(*TUE, 10), local(*TUE, 10, 30))
    assert out.display_en == "Fare ¥4.00  Balance ¥6.00"
    assert out.display_zh == "扣费 4.00 元 余额 6.00 元"
    denied = Rider(impl, balance=150).tap(A, ENTRY, local(*TUE, 10))
    assert "1.50" in denied.display_en and "余额不足" in denied.display_zh


def test_torn_write_leaves_old_or_new_record_and_never_charges_twice(impl: Any) -> None:
    r = Rider(impl)
    r.tap(A, ENTRY, local(*TUE, 10))
    before = r.wallet
    out = r.core.decide(before, r.core.Tap(CARD, C, EXIT, local(*TUE, 10, 30)), r.table, r.denylist, r.sam)
    old = r.record
    new = CardRecord.from_body(out.record)
    for k in range(SLOT_SIZE + 1):
        torn = r.core.apply_write(before, out.slot, out.record, torn_at=k)
        got, _slot = r.core.read_wallet(torn, CARD, r.sam)
        assert got in (old, new)
        if got == old:  # the write did not land: tapping again charges once, from the old record
            again = r.core.decide(torn, r.core.Tap(CARD, C, EXIT, local(*TUE, 10, 31)), r.table,
                                  r.denylist, r.sam)
            assert (again.fare, again.balance_after) == (400, 600)
    assert r.core.read_wallet(r.core.apply_write(before, out.slot, out.record, torn_at=SLOT_SIZE),
                              CARD, r.sam)[0] == new


def test_invalid_inputs_raise_clear_errors(impl: Any) -> None:
    core = impl.core
    with pytest.raises(ValueError, match="direction"):
        core.Tap(CARD, A, 2, local(*TUE, 10))
    with pytest.raises(ValueError, match="time"):
        core.Tap(CARD, A, ENTRY, 1000)
    with pytest.raises(ValueError, match="card_id"):
        core.Tap(-1, A, ENTRY, local(*TUE, 10))
    r = Rider(impl)
    from fare_core import FareTableError, WalletError

    with pytest.raises(WalletError):
        core.decide(r.wallet[:100], core.Tap(CARD, A, ENTRY, local(*TUE, 10)), r.table, r.denylist, r.sam)
    with pytest.raises(FareTableError, match="fares"):
        core.FareTable(dataclasses.replace(build_table(), fares=build_table().fares[:-1]))
    with pytest.raises(ValueError, match="master key"):
        core.Sam(b"short")
