"""A deny-listed rider inside the paid area is let out at an exit, charged, and the wallet blocked in
the same write (fare_core's `[deny_list] exit_with_open_entry = "let_out_charged"`, the default):
Reason.DENYLISTED_EXIT_CHARGED, an allowed reason, with Flag.BLOCKED_NOW. The back office counts it
as a charged exit, live or as an unconfirmed write that landed, and still tells it from a refusal
that only blocked the wallet (DENYLISTED, also BLOCKED_NOW)."""

from __future__ import annotations

import csv
import io
from typing import Any

from sqlalchemy import select

import fare_core
from backend import tides
from backend.tables import AlarmRow, DenyListEntryRow, TapRow, TripRow
from fare_core import Flag, Reason
from fare_core.reasons import Direction
from faregate.simgate import FareState, SimGate, new_phone
from tests.backend.test_ledger import card, checks, entries, held, unconfirmed
from tests.backend.test_processor import CARD, at, ingest, setup

ENTRY, EXIT = Direction.ENTRY, Direction.EXIT
DAY = tides.ServiceDay(utc_offset_min=480, day_start_min=240)


def listed(*cards: int) -> FareState:
    """What a gate decides with once deny-list version 1 holds `cards`."""
    state = FareState.tiny()
    state.denylist = fare_core.DenyList(list(cards), version=1)
    return state


async def deny_list(sessions: Any, *cards: int) -> None:
    """The back office's deny-list history: the cards listed from version 1 (reconciliation reads it)."""
    async with sessions.begin() as session:
        session.add_all([DenyListEntryRow(card_id=f"{c:016x}", added_version=1, reason="lost")
                         for c in cards])


async def export_rows(sessions: Any) -> list[tuple[str, str, str]]:
    """(transaction_id, fare_action, amount) of the TIDES export."""
    async with sessions() as session:
        text = "".join([chunk async for chunk in tides.fare_transactions_csv(
            session, tides.export_query(), DAY, 1000)])
    return [(r["transaction_id"], r["fare_action"], r["amount"]) for r in csv.DictReader(io.StringIO(text))]


async def trips_of(sessions: Any) -> list[tuple[str, str, str | None, str | None, int]]:
    async with sessions() as session:
        return [(t.card_id, t.state, t.entry_tap_id, t.exit_tap_id, t.fare) for t in (await session.execute(
            select(TripRow).order_by(TripRow.card_id, TripRow.entry_time))).scalars()]


async def test_a_denylisted_rider_inside_exits_charged(migrated: Any) -> None:
    """Listed while inside: the exit lets the rider out for the fare (reason 5, BLOCKED_NOW). The trip
    is complete with that fare, the exit is a `fare` entry and revenue, TIDES exports it as an Exit,
    and reconciliation (listed from version 1) agrees with the gate."""
    sessions, store, processor = await setup(migrated)
    await deny_list(sessions, CARD)
    alpha, delta = SimGate(1), SimGate(4, fare=listed(CARD))
    entry, wallet = alpha.tap(new_phone(CARD, balance=1000), CARD, ENTRY, at(2, 0))
    exit_, wallet = delta.tap(wallet, CARD, EXIT, at(2, 30))
    assert (exit_.allowed, exit_.reason, exit_.fare) == (True, Reason.DENYLISTED_EXIT_CHARGED, 400)
    assert exit_.flags & Flag.BLOCKED_NOW
    await ingest(store, processor, entry, exit_)
    assert await trips_of(sessions) == [(card(0), "complete", entry.tap_id, exit_.tap_id, 400)]
    assert await entries(sessions) == [("opening", entry.tap_id), ("fare", exit_.tap_id)]
    found = await checks(sessions)
    assert found["totals"]["revenue"] == 400 and found["trips"] == [] and found["heads"] == []
    assert found["positions"][card(0)] == held(wallet, CARD) == (600, exit_.counter_after)
    async with sessions() as session:
        assert {t.reconciled for t in (await session.execute(select(TapRow))).scalars()} == {"ok"}
        assert (await session.execute(select(AlarmRow))).scalars().all() == []
    assert await export_rows(sessions) == [(entry.tap_id, "Enter", "0.00"), (exit_.tap_id, "Exit", "4.00")]


async def test_an_unconfirmed_denylisted_exit_that_landed_is_a_charged_exit(migrated: Any) -> None:
    """The same exit, its answer lost (the gate's row: READ_FAILED, UNCONFIRMED, BLOCKED_NOW, fare 400),
    landed as the next tap shows. It closes the trip with its fare, its landing is revenue and TIDES
    exports the Exit. Beside it, an unconfirmed refusal that blocked a listed rider's entry (DENYLISTED,
    BLOCKED_NOW) lands too, and is no passage: no trip, no row."""
    sessions, store, processor = await setup(migrated)
    await deny_list(sessions, CARD, CARD + 1)
    alpha, bravo = SimGate(1), SimGate(2, fare=listed(CARD, CARD + 1))
    delta = SimGate(4, fare=listed(CARD, CARD + 1))
    entry, wallet = alpha.tap(new_phone(CARD, balance=1000), CARD, ENTRY, at(2, 0))
    exit_, wallet = delta.tap(wallet, CARD, EXIT, at(2, 30))
    lost_exit = unconfirmed(delta, exit_)
    refused, other = bravo.tap(new_phone(CARD + 1, balance=1000), CARD + 1, ENTRY, at(2, 10))
    assert (refused.reason, Flag(refused.flags), refused.fare) == (Reason.DENYLISTED, Flag.BLOCKED_NOW, 0)
    lost_refusal = unconfirmed(bravo, refused)
    await ingest(store, processor, entry, lost_exit, lost_refusal)
    assert await trips_of(sessions) == [(card(0), "open", entry.tap_id, None, 0)]  # not known yet
    assert (await checks(sessions))["totals"]["suspense"] == 400
    # each phone taps again (refused: listed, the wallet already blocked): it reads the written counter
    again, wallet = bravo.tap(wallet, CARD, ENTRY, at(3, 0))
    again_other, other = bravo.tap(other, CARD + 1, ENTRY, at(3, 1))
    assert again.counter_before == exit_.counter_after and again_other.counter_before == refused.counter_after
    await ingest(store, processor, again, again_other)
    async with sessions() as session:
        states = {t.tap_id: t.reconciled for t in (await session.execute(select(TapRow))).scalars()}
    assert states[lost_exit.tap_id] == states[lost_refusal.tap_id] == "unconfirmed_landed"
    assert await trips_of(sessions) == [(card(0), "complete", entry.tap_id, lost_exit.tap_id, 400)]
    assert await entries(sessions, card(0)) == [
        ("opening", entry.tap_id), ("unconfirmed", lost_exit.tap_id), ("landed", lost_exit.tap_id)]
    found = await checks(sessions)
    assert (found["totals"]["revenue"], found["totals"]["suspense"]) == (400, 0)
    assert found["trips"] == [] and found["heads"] == [] and found["unbalanced"] == []
    assert found["positions"][card(0)] == held(wallet, CARD) == (600, exit_.counter_after)
    assert found["positions"][card(1)] == held(other, CARD + 1)
    rows = await export_rows(sessions)
    assert (lost_exit.tap_id, "Exit", "4.00") in rows
    assert not [row for row in rows if row[0] == lost_refusal.tap_id]
