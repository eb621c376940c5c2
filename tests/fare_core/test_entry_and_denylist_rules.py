"""The two rider rules of issue #15, on both implementations: whom the minimum entry balance applies to,
and what a deny-listed phone gets at an exit from the paid area.

Fares come from the hand-built table (tables.py: A-C off-peak 400, over 4 h inside +500, minimum 200 to
enter) or from tiny.toml compiled (the senior rides free).
"""

from __future__ import annotations

import tomllib
from array import array
from pathlib import Path
from typing import Any

import fare_core
from fare_core import Direction, Flag, GateMode, Reason
from fare_core.compiler import compile_rules
from fare_core.rules import rules_from_data
from fare_core.table_data import DENYLISTED_EXIT_REFUSE, TableData

from .tables import ADULT, BUS, STUDENT, A, B, C, build_table, local
from .test_decide import CARD, TUE, Rider

ENTRY, EXIT = Direction.ENTRY, Direction.EXIT
EXAMPLES = Path(fare_core.__file__).parent / "examples"
SENIOR = 2  # in tiny.toml: adult, student, senior (free), staff
M1, M3 = 1, 3  # tiny.toml metro stations Alpha and Charlie


def tiny(**rules: Any) -> TableData:
    """tiny.toml compiled, with top-level rule keys set as given (validated as a file would be)."""
    with (EXAMPLES / "tiny.toml").open("rb") as file:
        data = tomllib.load(file)
    return compile_rules(rules_from_data({**data, **rules}), 1, created_at=0)


# --- the minimum entry balance, by category ---

def test_free_senior_with_nothing_on_the_phone_enters_and_exits(impl: Any) -> None:
    r = Rider(impl, table=tiny(), category=SENIOR, balance=0)
    entry = r.tap(M1, ENTRY, local(*TUE, 10))
    assert (entry.allowed, entry.reason, entry.fare) == (True, Reason.OK, 0)
    out = r.tap(M3, EXIT, local(*TUE, 10, 30))
    assert (out.allowed, out.fare, out.balance_after) == (True, 0, 0)


def test_adult_below_the_minimum_is_refused(impl: Any) -> None:
    table = tiny()
    low = Rider(impl, table=table, category=ADULT, balance=199).tap(M1, ENTRY, local(*TUE, 10))
    assert (low.allowed, low.reason, low.record) == (False, Reason.INSUFFICIENT_BALANCE, None)
    assert low.display_en == "Insufficient balance ¥1.99 - please top up"
    assert Rider(impl, table=table, category=ADULT, balance=200).tap(M1, ENTRY, local(*TUE, 10)).allowed
    # the student pays half fares, but pays: the minimum is the same
    assert not Rider(impl, table=table, category=STUDENT, balance=199).tap(M1, ENTRY, local(*TUE, 10)).allowed


def test_a_category_the_rule_lists_is_refused_even_when_free(impl: Any) -> None:
    table = tiny(min_entry_categories=["adult", "senior"])
    senior = Rider(impl, table=table, category=SENIOR, balance=0).tap(M1, ENTRY, local(*TUE, 10))
    assert (senior.allowed, senior.reason) == (False, Reason.INSUFFICIENT_BALANCE)
    # the student, not listed, enters with nothing (and is refused at the exit if the fare is not there)
    student = Rider(impl, table=table, category=STUDENT, balance=0)
    assert student.tap(M1, ENTRY, local(*TUE, 10)).allowed
    assert student.tap(M3, EXIT, local(*TUE, 10, 30)).reason == Reason.INSUFFICIENT_BALANCE


def test_minimum_per_category_in_the_table(impl: Any) -> None:
    table = build_table(min_entry_balance=array("I", [200, 0]))
    assert not Rider(impl, table=table, balance=150).tap(A, ENTRY, local(*TUE, 10)).allowed
    assert Rider(impl, table=table, category=STUDENT, balance=150).tap(A, ENTRY, local(*TUE, 10)).allowed
    # a missing-exit charge is still paid in full before the entry: the exemption is from the minimum only
    r = Rider(impl, table=table, category=STUDENT, balance=100, flags=1, entry_station=B,
              entry_time=local(*TUE, 6))
    assert r.tap(A, ENTRY, local(*TUE, 10)).reason == Reason.INSUFFICIENT_BALANCE  # owes 200 for B


# --- a deny-listed phone ---

def inside(impl: Any, table: TableData | None = None, **record: Any) -> Rider:
    """A deny-listed phone whose wallet shows an entry at A at 10:00 (the genuine owner of a clone)."""
    fields = {"flags": 1, "entry_station": A, "entry_time": local(*TUE, 10), **record}
    return Rider(impl, table=table, denied=(CARD,), **fields)


def test_denylisted_phone_inside_is_let_out_charged_and_blocked(impl: Any) -> None:
    r = inside(impl)
    out = r.tap(C, EXIT, local(*TUE, 10, 30))
    # A-C off-peak 400, charged as any exit; the wallet is blocked in the same write
    assert (out.allowed, out.reason, out.fare, out.balance_after) == (
        True, Reason.DENYLISTED_EXIT_CHARGED, 400, 600)
    assert out.flags & Flag.BLOCKED_NOW and out.record is not None
    assert out.display_en == "Phone blocked - fare ¥4.00 - see customer service"
    assert "请到客服中心" in out.display_zh
    rec = r.record
    assert (rec.blocked, rec.entry_open, rec.balance, rec.counter, rec.day_spent) == (
        True, False, 600, 1, 400)
    # and its next entry is refused, nothing written
    again = r.tap(A, ENTRY, local(*TUE, 11))
    assert (again.allowed, again.reason, again.record) == (False, Reason.DENYLISTED, None)


def test_denylisted_phone_inside_is_refused_under_refuse(impl: Any) -> None:
    r = inside(impl, build_table(denylisted_exit=DENYLISTED_EXIT_REFUSE))
    out = r.tap(C, EXIT, local(*TUE, 10, 30))
    assert (out.allowed, out.reason, out.fare, out.balance_after) == (False, Reason.DENYLISTED, 0, 1000)
    assert out.flags & Flag.BLOCKED_NOW
    assert (r.record.blocked, r.record.entry_open) == (True, True)  # as before the rule existed


def test_denylisted_phone_is_refused_at_every_entry(impl: Any) -> None:
    fresh = Rider(impl, denied=(CARD,)).tap(A, ENTRY, local(*TUE, 10))
    assert (fresh.allowed, fresh.reason, bool(fresh.flags & Flag.BLOCKED_NOW)) == (
        False, Reason.DENYLISTED, True)
    # an entry with an entry still open (elsewhere, or long ago) is a new entry: refused
    assert inside(impl).tap(B, ENTRY, local(*TUE, 10, 30)).reason == Reason.DENYLISTED
    assert inside(impl).tap(A, ENTRY, local(*TUE, 18)).reason == Reason.DENYLISTED
    # a bus boarding is an entry, even with a metro entry open
    bus = inside(impl).tap(BUS, ENTRY, local(*TUE, 10, 30))
    assert (bus.allowed, bus.reason, bus.fare) == (False, Reason.DENYLISTED, 0)
    # an exit without an open entry is not a rider inside
    assert Rider(impl, denied=(CARD,)).tap(C, EXIT, local(*TUE, 10)).reason == Reason.DENYLISTED


def test_denylisted_exit_that_cannot_be_paid_is_refused_as_listed(impl: Any) -> None:
    r = inside(impl, balance=300)  # A-C costs 400
    out = r.tap(C, EXIT, local(*TUE, 10, 30))
    assert (out.allowed, out.reason, out.fare) == (False, Reason.DENYLISTED, 0)
    assert out.flags & Flag.BLOCKED_NOW and r.record.blocked and r.record.balance == 300
    # a pending top-up is not applied to a deny-listed phone (its actions wait)
    paid = inside(impl, balance=300).tap(C, EXIT, local(*TUE, 10, 30), topup=500)
    assert (paid.allowed, paid.reason, paid.topup) == (False, Reason.DENYLISTED, 0)
    ok = inside(impl).tap(C, EXIT, local(*TUE, 10, 30), topup=500, unblock=True)
    assert (ok.allowed, ok.topup, ok.balance_after) == (True, 0, 600)
    assert not ok.flags & (Flag.TOPUP_APPLIED | Flag.TOPUP_REFUSED | Flag.UNBLOCKED)


def test_denylisted_exit_is_priced_like_any_exit(impl: Any) -> None:
    # over 4 hours inside: A-C 400 + 500 surcharge, flagged as for anyone
    out = inside(impl).tap(C, EXIT, local(*TUE, 14, 1))
    assert (out.reason, out.fare, bool(out.flags & Flag.OVERSTAY)) == (
        Reason.DENYLISTED_EXIT_CHARGED, 900, True)
    # the daily cap still holds: 900 already spent today, cap 1000
    day = (local(*TUE, 10) + 8 * 3600 - 4 * 3600) // 86400 - 10957
    capped = inside(impl, day_number=day, day_spent=900).tap(C, EXIT, local(*TUE, 10, 30))
    assert (capped.reason, capped.fare, bool(capped.flags & Flag.CAPPED)) == (
        Reason.DENYLISTED_EXIT_CHARGED, 100, True)
    student = inside(impl, category=STUDENT).tap(C, EXIT, local(*TUE, 10, 30))
    assert (student.allowed, student.fare) == (True, 200)


def test_denylisted_wallet_already_blocked_is_still_let_out(impl: Any) -> None:
    # blocked inside under the old rule (or by an earlier table): the rider still gets out, charged
    r = inside(impl, status=1)
    out = r.tap(C, EXIT, local(*TUE, 10, 30))
    assert (out.allowed, out.reason, out.fare) == (True, Reason.DENYLISTED_EXIT_CHARGED, 400)
    assert not out.flags & Flag.BLOCKED_NOW  # it was blocked already
    assert (r.record.blocked, r.record.entry_open) == (True, False)
    # not on the list, a blocked wallet is refused at the exit as before
    unlisted = Rider(impl, status=1, flags=1, entry_station=A, entry_time=local(*TUE, 10))
    assert unlisted.tap(C, EXIT, local(*TUE, 10, 30)).reason == Reason.CARD_BLOCKED


def test_denylisted_phone_at_a_free_exit(impl: Any) -> None:
    r = inside(impl)
    out = r.tap(C, EXIT, local(*TUE, 10, 30), mode=GateMode.FREE_EXIT)
    assert (out.allowed, out.reason, out.fare, bool(out.flags & Flag.BLOCKED_NOW)) == (
        True, Reason.FREE_EXIT, 0, True)
    assert (r.record.blocked, r.record.entry_open) == (True, False)


def test_tiny_rules_deny_list_setting_reaches_decide(impl: Any) -> None:
    for setting, allowed in (("let_out_charged", True), ("refuse", False)):
        table = tiny(deny_list={"exit_with_open_entry": setting})
        r = Rider(impl, table=table, denied=(CARD,), flags=1, entry_station=M1, entry_time=local(*TUE, 10))
        assert r.tap(M3, EXIT, local(*TUE, 10, 30)).allowed is allowed, setting
