"""The TIDES fare_transactions export, validated with `frictionless` against the vendored TIDES schema."""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import frictionless
import httpx
import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import fare_core
from backend import tides
from backend.api.main import create_app
from backend.ingest.store import RawMessage, TapStore
from backend.processor import Processor
from backend.tables import ActionRow, FareTableRow, LedgerEntryRow, PostingRow, TapRow
from fare_core import DEVELOPMENT_SAM_KEY
from fare_core.reasons import Direction, Flag, Reason
from faregate.simgate import SimGate, new_phone, tiny_artefact
from protocol.mqtt import TapMessage, Topics, encode, with_mac
from tests.backend.conftest import BrokerInfo, Database, make_settings
from tests.backend.test_api import ADMIN, Api

SCHEMA = Path(__file__).parents[1] / "fixtures" / "tides" / "fare_transactions.schema.json"  # vendored
CARD = "00000000000000a1"
DAY = tides.ServiceDay(utc_offset_min=480, day_start_min=240)  # Guangzhou, the day starts at 04:00
START = datetime(2026, 11, 22, 1, 0, tzinfo=UTC)  # 09:00 local


def schema() -> frictionless.Schema:
    return frictionless.Schema.from_descriptor(json.loads(SCHEMA.read_text()))


def validate(text: str) -> frictionless.Report:
    """Validate CSV text as a TIDES fare_transactions table (types, enums, required, unique key)."""
    return frictionless.Resource(data=text.encode(), format="csv", schema=schema()).validate()


def errors(report: frictionless.Report) -> list[tuple[str, str]]:
    return [(error.type, error.note) for task in report.tasks for error in task.errors]


@pytest.fixture
async def sessions(migrated: Any) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """A database brought to the latest schema by the migrations, as the backend runs it."""
    _database, _engine, made = migrated
    yield made


class Ledger:
    """Taps and the ledger entries docs/ledger.md says the processor posts for them."""

    def __init__(self) -> None:
        self.rows: list[Any] = []
        self.seq = 0
        self.counter = 1
        self.balance = 1000

    def tap(self, minutes: float, direction: Direction = Direction.ENTRY, *, fare: int = 0, flags: int = 0,
            allowed: bool = True, reason: Reason = Reason.OK, topup: int = 0, action: str | None = None,
            writes: bool = True, station: int = 1, lands: bool = True) -> str:
        """A tap at START + minutes; `topup` fen delivered by an action of kind `action`."""
        self.seq += 1
        tap_id = f"{station}-1:{self.seq}"
        action_id = None
        if action is not None:
            action_id = 1000 + self.seq
            self.rows.append(ActionRow(id=action_id, card_id=CARD, kind=action, topup=topup, state="applied",
                                       created_at=START))
        before, after = self.balance, self.balance + topup - fare
        counter_after = self.counter + 1 if writes else self.counter
        self.rows.append(TapRow(
            tap_id=tap_id, gate_id=f"{station}-1", station_id=station, gate_no=1, seq=self.seq, card_id=CARD,
            time=START + timedelta(minutes=minutes), direction=direction, mode=0, allowed=allowed,
            reason=reason, flags=flags | (Flag.TOPUP_APPLIED if topup else 0), fare=fare,
            balance_before=before, balance_after=after, counter_before=self.counter,
            counter_after=counter_after, wallet_before=b"", fare_table_version=1, denylist_version=0,
            min_counter=0, action_id=action_id, topup_applied=topup, latency_us=100, received_at=START))
        if lands:
            self.balance, self.counter = after, counter_after
        if flags & Flag.UNCONFIRMED:
            return tap_id  # posted and resolved by unconfirmed()
        if topup:
            self.entry(action or "topup", tap_id, minutes, undelivered=-topup, **{f"wallet:{CARD}": topup})
        if fare:
            kind = "missing_exit" if flags & Flag.MISSING_EXIT else "fare"
            self.entry(kind, tap_id, minutes, **{f"wallet:{CARD}": -fare, "revenue:metro:2026-11-22": fare})
        return tap_id

    def unconfirmed(self, minutes: float, direction: Direction, *, fare: int = 0, topup: int = 0,
                    action: str | None = None, resolve: str | None) -> str:
        """A tap the gate journaled UNCONFIRMED (barrier shut, the values the write would make), posted
        to suspense, then resolved by a later link as `landed`, `voided`, or not yet (None)."""
        tap_id = self.tap(minutes, direction, fare=fare, flags=Flag.UNCONFIRMED, allowed=False,
                          reason=Reason.READ_FAILED, topup=topup, action=action, lands=resolve == "landed")
        tap = next(row for row in self.rows if isinstance(row, TapRow) and row.tap_id == tap_id)
        tap.reconciled = {"landed": "unconfirmed_landed", "voided": "unconfirmed_not_landed"}.get(
            resolve or "", "unconfirmed")
        tap.trip_id = self.seq if resolve == "landed" else None  # the processor counts it in a trip
        change = topup - fare
        self.entry("unconfirmed", tap_id, minutes, suspense=-change, **{f"wallet:{CARD}": change})
        if resolve == "landed":
            legs = {"suspense": change, "undelivered": -topup, "revenue:metro:2026-11-22": fare}
            self.entry("landed", tap_id, minutes + 1, **{k: v for k, v in legs.items() if v})
        elif resolve == "voided":
            self.entry("voided", tap_id, minutes + 1, suspense=change, **{f"wallet:{CARD}": -change})
        return tap_id

    def entry(self, kind: str, tap_id: str, minutes: float, **postings: int) -> None:
        assert sum(postings.values()) == 0, postings
        entry = LedgerEntryRow(kind=kind, card_id=CARD, tap_id=tap_id, detail="", recorded_at=START,
                               time=START + timedelta(minutes=minutes))
        self.rows.append((entry, postings))

    async def store(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        async with sessions.begin() as session:
            for row in self.rows:
                if isinstance(row, tuple):
                    entry, postings = row
                    session.add(entry)
                    await session.flush()
                    session.add_all([PostingRow(entry_id=entry.id, account=account, amount=amount)
                                     for account, amount in postings.items()])
                else:
                    session.add(row)
                    await session.flush()


async def export(sessions: async_sessionmaker[AsyncSession], **filters: Any) -> str:
    async with sessions() as session:
        query = tides.export_query()
        if "since" in filters:
            query = query.where(TapRow.time >= filters["since"])
        return "".join([chunk async for chunk in tides.fare_transactions_csv(session, query, DAY, 10_000)])


def table(text: str) -> list[tuple[str, ...]]:
    keys = ("transaction_id", "fare_action", "amount", "fare_capped", "num_riders", "balance")
    return [tuple(row[k] for k in keys) for row in csv.DictReader(io.StringIO(text))]


async def test_every_money_movement_and_passage_in_the_schema_order(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    ledger = Ledger()
    ledger.tap(0)  # metro entry
    ledger.tap(30, Direction.EXIT, fare=300, topup=1000, action="topup", station=4)  # top-up, then fare
    ledger.tap(40, station=50, fare=100, flags=Flag.TRANSFER)  # bus, metro->bus discount: charged
    ledger.tap(60, station=50, fare=0, flags=Flag.TRANSFER | Flag.CAPPED)  # capped, not a transfer
    ledger.tap(70, station=50, fare=0, flags=Flag.TRANSFER)  # a transfer the rule made free
    ledger.tap(80, station=50, fare=0, flags=Flag.CAPPED)  # capped bus boarding
    ledger.tap(90, allowed=False, reason=Reason.INSUFFICIENT_BALANCE, writes=False)  # refused: no row
    ledger.tap(100, allowed=False, reason=Reason.CARD_BLOCKED, topup=500, action="refund")  # refused, paid
    ledger.tap(110, topup=200, action="adjustment")  # metro entry with an operator's adjustment
    ledger.tap(150, Direction.EXIT, fare=0, flags=Flag.TRANSFER, station=4)  # a free transfer exit
    ledger.tap(160, topup=300, action="transfer")  # a lost phone's balance arrives on this one
    ledger.unconfirmed(170, Direction.EXIT, fare=400, resolve="landed")  # a power cut after the write
    recovered = ledger.tap(171, Direction.EXIT, flags=Flag.RECOVERED, writes=False)  # the re-tap: no row
    ledger.tap(200, station=2)
    ledger.unconfirmed(230, Direction.EXIT, fare=200, resolve="voided")  # the write did not land
    ledger.tap(231, Direction.EXIT, fare=200, station=3)  # the retry
    ledger.tap(300, station=3, fare=0)
    ledger.unconfirmed(320, Direction.EXIT, fare=200, topup=1000, action="topup", resolve="landed")
    ledger.tap(400, station=1, flags=Flag.MISSING_EXIT, fare=500)  # charged for a trip left open
    ledger.unconfirmed(420, Direction.EXIT, fare=200, resolve=None)  # not resolved yet: in suspense
    await ledger.store(sessions)

    text = await export(sessions)

    report = validate(text)
    assert errors(report) == [] and report.valid
    header = next(csv.reader(io.StringIO(text)))
    assert header == [field.name for field in schema().fields] == list(tides.FIELDS)
    assert table(text) == [
        ("1-1:1", "Enter", "0.00", "false", "1", "10.00"),
        ("4-1:2:topup", "Add", "10.00", "false", "0", "20.00"),
        ("4-1:2", "Exit", "3.00", "false", "1", "17.00"),
        ("50-1:3", "Enter", "1.00", "false", "1", "16.00"),
        ("50-1:4", "Enter", "0.00", "true", "1", "16.00"),
        ("50-1:5", "Transfer entrance", "0.00", "false", "1", "16.00"),
        ("50-1:6", "Enter", "0.00", "true", "1", "16.00"),
        ("1-1:8:refund", "Adjust", "5.00", "false", "0", "21.00"),
        ("1-1:9:adjustment", "Adjust", "2.00", "false", "0", "23.00"),
        ("1-1:9", "Enter", "0.00", "false", "1", "23.00"),
        ("4-1:10", "Transfer exit", "0.00", "false", "1", "23.00"),
        ("1-1:11:transfer", "Combine", "3.00", "false", "0", "26.00"),
        ("1-1:11", "Enter", "0.00", "false", "1", "26.00"),
        ("1-1:12", "Exit", "4.00", "false", "1", "22.00"),  # unconfirmed, landed: present once
        ("2-1:14", "Enter", "0.00", "false", "1", "22.00"),
        ("3-1:16", "Exit", "2.00", "false", "1", "20.00"),
        ("3-1:17", "Enter", "0.00", "false", "1", "20.00"),
        ("1-1:18:topup", "Add", "10.00", "false", "0", "30.00"),  # landed with its top-up
        ("1-1:18", "Exit", "2.00", "false", "1", "28.00"),
        ("1-1:19", "Enter", "5.00", "false", "1", "23.00"),
    ]
    assert recovered not in text
    rows = list(csv.DictReader(io.StringIO(text)))
    # the balance column follows the wallet: each row adds its credit or takes its fare
    fen = [int(Decimal(r["balance"]) * 100) for r in rows]
    for previous, row, after in zip(fen, rows[1:], fen[1:], strict=False):
        credit = row["fare_action"] in ("Add", "Adjust", "Combine")
        assert after == previous + (1 if credit else -1) * int(Decimal(row["amount"]) * 100), row
    assert all(r["currency_type"] == "CNY" and r["token_id"] == CARD for r in rows)
    assert {r["service_date"] for r in rows} == {"2026-11-22"}


async def test_the_validation_can_fail(sessions: async_sessionmaker[AsyncSession]) -> None:
    """The same check refuses what TIDES does not allow: an action outside its enum, a column moved,
    a required value missing, a transaction id twice."""
    ledger = Ledger()
    ledger.tap(0)
    ledger.tap(30, Direction.EXIT, fare=300, station=4)
    await ledger.store(sessions)
    text = await export(sessions)
    assert validate(text).valid
    header, first, second = text.splitlines()
    assert "constraint-error" in dict(errors(validate(text.replace("Enter", "Board"))))
    moved = ",".join(reversed(header.split(",")))
    assert "incorrect-label" in dict(errors(validate("\n".join([moved, first, second]))))
    missing = first.replace(",false,", ",,", 1)
    assert "constraint-error" in dict(errors(validate("\n".join([header, missing, second]))))
    assert "primary-key" in dict(errors(validate("\n".join([header, first, first]))))


async def test_service_date_starts_at_four_local(sessions: async_sessionmaker[AsyncSession]) -> None:
    ledger = Ledger()
    ledger.tap(18 * 60 + 59)  # 19:59 UTC = 03:59 local on the 23rd: still the 22nd's service day
    ledger.tap(19 * 60 + 1, Direction.EXIT, fare=200, station=2)  # 04:01 local: the 23rd's
    await ledger.store(sessions)
    rows = list(csv.DictReader(io.StringIO(await export(sessions))))
    assert [(r["service_date"], r["event_timestamp"]) for r in rows] == [
        ("2026-11-22", "2026-11-22T19:59:00Z"),
        ("2026-11-23", "2026-11-22T20:01:00Z"),
    ]


async def test_a_large_export_streams_in_bounded_memory(sessions: async_sessionmaker[AsyncSession]) -> None:
    """Four times the taps, about the same peak memory: the rows are fetched from a cursor a few
    hundred at a time and written out in pieces, never all held at once (fetching them whole, this
    test measured 5.8 MB for 8,000 taps and 22.5 MB for 32,000; streamed, 1.3 MB for both)."""

    async def add(first: int, last: int) -> None:
        rows = [
            {"tap_id": f"1-1:{i}", "gate_id": "1-1", "station_id": 1, "gate_no": 1, "seq": i,
             "card_id": f"{i:016x}", "time": START + timedelta(seconds=i), "direction": i % 2, "mode": 0,
             "allowed": True, "reason": 0, "flags": 0, "fare": 200 * (i % 2), "balance_before": 1000,
             "balance_after": 1000 - 200 * (i % 2), "counter_before": 1, "counter_after": 2,
             "wallet_before": bytes(128), "fare_table_version": 1, "denylist_version": 0, "min_counter": 0,
             "action_id": None, "topup_applied": 0, "latency_us": 1, "received_at": START}
            for i in range(first, last)
        ]
        async with sessions.begin() as session:
            await session.execute(insert(TapRow), rows)

    async def peak() -> tuple[int, int, int]:
        async with sessions() as session:
            tracemalloc.start()
            try:
                size = pieces = 0
                async for piece in tides.fare_transactions_csv(session, tides.export_query(), DAY, 10**6):
                    size, pieces = size + len(piece), pieces + 1
                return size, pieces, tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()

    await add(0, 4000)
    await peak()  # the first export compiles and caches its statement
    small = await peak()
    await add(4000, 16000)
    large = await peak()
    assert large[0] > 3.9 * small[0] and large[0] > 1_900_000  # four times the CSV, about 2 MB
    assert large[1] > 25  # written in pieces of about 64 KiB, as the client reads them
    assert large[2] < 1.5 * small[2], (small, large)


# --- the same export over taps made by fare_core and posted by the real processor ---------------------

ADULT, STUDENT = 0xA1, 0x51


def at(hour: int, minute: int = 0, second: int = 0) -> datetime:
    """2026-11-24 (a Tuesday), UTC: 02:00 is 10:00 in Guangzhou, off-peak."""
    return datetime(2026, 11, 24, hour, minute, second, tzinfo=UTC)


def unconfirmed(tap: TapMessage, gate: SimGate) -> TapMessage:
    """The row a gate journals when the write's answer was lost: refused, UNCONFIRMED, its MAC again."""
    rewritten = tap.model_copy(
        update={"allowed": False, "reason": Reason.READ_FAILED, "flags": tap.flags | Flag.UNCONFIRMED})
    return with_mac(rewritten, gate.mac_key)


def recovered(gate: SimGate, wallet: bytes, card: int, when: datetime, direction: Direction) -> TapMessage:
    """The gate's RECOVERED re-tap (gate/controller.py): the landed wallet read, nothing written."""
    record, _slot = fare_core.read_wallet(wallet, card, fare_core.Sam(DEVELOPMENT_SAM_KEY))
    tap, _ = gate.tap(wallet, card, direction, when, allowed=True, reason=Reason.OK,
                      flags=int(Flag.RECOVERED), fare=0, balance_before=record.balance,
                      balance_after=record.balance, counter_before=record.counter,
                      counter_after=record.counter, action_id=None, topup_applied=0)
    return tap


async def test_the_export_of_taps_the_processor_posted(migrated: Any) -> None:
    """Through fare_core and the real processor: an action of each kind delivered, a transfer the rule
    made free, one it only discounted, capped legs (one also a transfer), an unconfirmed exit that
    landed (with the adjustment it delivered) and its RECOVERED re-tap, one that did not land, one not
    resolved yet."""
    database, _engine, sessions = migrated
    async with sessions.begin() as session:
        session.add(FareTableRow(version=1, name="tiny", rules="", artefact=tiny_artefact(),
                                 checksum="00" * 32, created_at=START, activate_at=START))
        actions = {kind: ActionRow(card_id=f"{card:016x}", kind=kind, topup=amount, state="pending",
                                   created_at=START)
                   for kind, card, amount in (("topup", ADULT, 1000), ("transfer", ADULT, 700),
                                              ("refund", STUDENT, 300), ("adjustment", STUDENT, 200))}
        session.add_all(actions.values())
    alpha, bravo, charlie, delta, bus = (SimGate(n) for n in (1, 2, 3, 4, 50))
    sam = fare_core.Sam(DEVELOPMENT_SAM_KEY)
    adult = new_phone(ADULT, balance=5000)
    student = fare_core.new_wallet(fare_core.CardRecord(card_id=STUDENT, category=1, balance=3000, counter=1),
                                   sam)
    taps: list[TapMessage] = []

    def ride(gate: SimGate, wallet: bytes, card: int, direction: Direction, when: datetime,
             action: str | None = None) -> bytes:
        extra: dict[str, Any] = {}
        if action is not None:
            extra = {"topup": actions[action].topup, "action_id": actions[action].id}
        tap, wallet = gate.tap(wallet, card, direction, when, **extra)
        taps.append(tap)
        return wallet

    adult = ride(alpha, adult, ADULT, Direction.ENTRY, at(2, 0), "topup")
    adult = ride(delta, adult, ADULT, Direction.EXIT, at(2, 30))  # A-D 400
    adult = ride(bus, adult, ADULT, Direction.ENTRY, at(2, 40))  # metro->bus: 200 - 100
    adult = ride(alpha, adult, ADULT, Direction.ENTRY, at(3, 0))
    adult = ride(delta, adult, ADULT, Direction.EXIT, at(3, 30))  # 400: 900 today
    adult = ride(bus, adult, ADULT, Direction.ENTRY, at(3, 40))  # 100: the cap of 1000 reached
    adult = ride(alpha, adult, ADULT, Direction.ENTRY, at(4, 10))
    adult = ride(delta, adult, ADULT, Direction.EXIT, at(4, 40))  # capped to 0
    adult = ride(bus, adult, ADULT, Direction.ENTRY, at(4, 50))  # a transfer, and capped to 0
    adult = ride(bravo, adult, ADULT, Direction.ENTRY, at(5, 10), "transfer")

    student = ride(alpha, student, STUDENT, Direction.ENTRY, at(2, 1))
    student = ride(delta, student, STUDENT, Direction.EXIT, at(2, 31))  # 400 at half price
    student = ride(bus, student, STUDENT, Direction.ENTRY, at(2, 41))  # 100 - 100: a free transfer
    student = ride(alpha, student, STUDENT, Direction.ENTRY, at(3, 1), "refund")
    adjustment = actions["adjustment"]  # delivered by the exit whose answer is lost: posted when it lands
    lost_answer, landed = charlie.tap(student, STUDENT, Direction.EXIT, at(3, 31), topup=adjustment.topup,
                                      action_id=adjustment.id)  # A-C 300, half
    taps += [unconfirmed(lost_answer, charlie), recovered(charlie, landed, STUDENT, at(3, 31, 20),
                                                            Direction.EXIT)]
    student = ride(charlie, landed, STUDENT, Direction.ENTRY, at(3, 50))
    not_landed, _ = bravo.tap(student, STUDENT, Direction.EXIT, at(4, 10))
    taps.append(unconfirmed(not_landed, bravo))
    student = ride(bravo, student, STUDENT, Direction.EXIT, at(4, 11))  # the retry: C-B 200, half
    pending, _ = alpha.tap(student, STUDENT, Direction.ENTRY, at(5, 0))
    taps.append(unconfirmed(pending, alpha))

    store, processor = TapStore(sessions), Processor(make_settings(database), sessions)
    await store.store([RawMessage(Topics("t").taps(t.gate_id), encode(t)) for t in taps])
    while await processor.run_once():
        pass

    text = await export(sessions)

    report = validate(text)
    assert errors(report) == [] and report.valid
    assert next(csv.reader(io.StringIO(text))) == [field.name for field in schema().fields]
    rows = list(csv.DictReader(io.StringIO(text)))
    by_card = {card: [(r["transaction_id"], r["fare_action"], r["amount"], r["fare_capped"], r["balance"])
                      for r in rows if r["token_id"] == f"{card:016x}"] for card in (ADULT, STUDENT)}
    assert by_card[ADULT] == [
        ("1-1:1:topup", "Add", "10.00", "false", "60.00"),
        ("1-1:1", "Enter", "0.00", "false", "60.00"),
        ("4-1:1", "Exit", "4.00", "false", "56.00"),
        ("50-1:1", "Enter", "1.00", "false", "55.00"),  # a discounted transfer is charged: Enter
        ("1-1:2", "Enter", "0.00", "false", "55.00"),
        ("4-1:2", "Exit", "4.00", "false", "51.00"),
        ("50-1:2", "Enter", "1.00", "false", "50.00"),
        ("1-1:3", "Enter", "0.00", "false", "50.00"),
        ("4-1:3", "Exit", "0.00", "true", "50.00"),
        ("50-1:3", "Enter", "0.00", "true", "50.00"),  # capped, though also a transfer: not free by it
        ("2-1:1:transfer", "Combine", "7.00", "false", "57.00"),
        ("2-1:1", "Enter", "0.00", "false", "57.00"),
    ]
    assert by_card[STUDENT] == [
        ("1-1:4", "Enter", "0.00", "false", "30.00"),
        ("4-1:4", "Exit", "2.00", "false", "28.00"),
        ("50-1:4", "Transfer entrance", "0.00", "false", "28.00"),  # the transfer rule made it free
        ("1-1:5:refund", "Adjust", "3.00", "false", "31.00"),
        ("1-1:5", "Enter", "0.00", "false", "31.00"),
        ("3-1:1:adjustment", "Adjust", "2.00", "false", "33.00"),  # in the landed entry's legs
        ("3-1:1", "Exit", "1.50", "false", "31.50"),  # unconfirmed, landed: once, not its re-tap 3-1:2
        ("3-1:3", "Enter", "0.00", "false", "31.50"),
        ("2-1:3", "Exit", "1.00", "false", "30.50"),  # the retry of 2-1:2, which did not land
    ]  # 1-1:6, unconfirmed and not resolved yet, is not there
    stored = {tap.tap_id: tap for tap in await stored_taps(sessions)}
    assert Flag(stored["50-1:3"].flags) & (Flag.TRANSFER | Flag.CAPPED) == Flag.TRANSFER | Flag.CAPPED
    assert stored["50-1:1"].flags & Flag.TRANSFER and stored["50-1:4"].flags & Flag.TRANSFER
    assert (stored["3-1:1"].reconciled, stored["2-1:2"].reconciled, stored["1-1:6"].reconciled) == (
        "unconfirmed_landed", "unconfirmed_not_landed", "unconfirmed")
    # the last balance of each card is the wallet's own
    for card, wallet in ((ADULT, adult), (STUDENT, student)):
        record, _slot = fare_core.read_wallet(wallet, card, sam)
        assert int(Decimal(by_card[card][-1][-1]) * 100) == record.balance


async def stored_taps(sessions: async_sessionmaker[AsyncSession]) -> list[TapRow]:
    async with sessions() as session:
        return list((await session.execute(select(TapRow))).scalars())


# --- the route ------------------------------------------------------------------------------------------


@pytest.fixture
async def api(database: Database, broker: BrokerInfo) -> AsyncIterator[Api]:
    """The app in-process, as tests/backend/test_api.py runs it."""
    settings = make_settings(database, broker)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield Api(client, app, settings)


@pytest.mark.security
async def test_the_route_answers_operators_only_and_within_the_window(api: Api) -> None:
    """No token or a forged one: 401. A viewer gets the taps of the window asked, as a valid table."""
    admin = await api.login(**ADMIN)
    viewer = await api.account(admin, "vera", "viewer")
    gate, wallet, taps = SimGate(1), new_phone(ADULT), []
    delta = SimGate(4)
    for day in (24, 25):
        entry, wallet = gate.tap(wallet, ADULT, Direction.ENTRY, datetime(2026, 11, day, 2, tzinfo=UTC))
        exit_, wallet = delta.tap(wallet, ADULT, Direction.EXIT, datetime(2026, 11, day, 2, 30, tzinfo=UTC))
        taps += [entry, exit_]
    messages = [RawMessage(api.topics.taps(t.gate_id), encode(t)) for t in taps]
    await TapStore(api.app.state.sessions).store(messages)
    url = "/api/v1/taps/export/tides.csv"
    assert (await api.client.get(url)).status_code == 401
    assert (await api.client.get(url, headers={"Authorization": "Bearer forged"})).status_code == 401
    window = {"since": "2026-11-25T00:00:00Z", "until": "2026-11-26T00:00:00Z"}
    response = await api.client.get(url, headers=viewer, params=window)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert 'filename="fare_transactions.csv"' in response.headers["content-disposition"]
    assert validate(response.text).valid
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [(r["transaction_id"], r["fare_action"], r["amount"], r["service_date"]) for r in rows] == [
        ("1-1:2", "Enter", "0.00", "2026-11-25"),
        ("4-1:2", "Exit", "4.00", "2026-11-25"),
    ]
