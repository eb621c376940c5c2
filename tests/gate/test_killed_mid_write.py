"""A gate that dies while its wallet write is on the wire (issue #15, found by the soak).

The gate journals a tap while the phone writes it, to overlap the fsync with the RF write. If the
process dies after the journal append and before the write's answer, nobody knows whether the write
landed. The row must not be published as the confirmed tap it was journaled as: if the write did not
land, the rider's next tap writes from the same counter and the backend takes the genuine rider for a
clone (counter_reused, deny-listed); if it did land and the barrier never opened, the rider was charged
without passing. The gate journals such a row *unsettled* and, at its next start, rewrites it
UNCONFIRMED and keeps the write for the phone's re-tap, before the uplink publishes anything.

The honest test: `faregate gate` as its own process, SIGKILLed by the simulated reader while the
write's answer is held (the reader waits, under the sim lock, until the journal holds the row), then
started again, against the real backend (ingest and processor) through a real broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from backend.config import Settings
from backend.db import make_engine
from backend.tables import AlarmRow, DenyListEntryRow, TapRow
from fare_core import Direction, Flag, Reason, compiler, rules
from fare_core.table_data import TableData
from faregate.station import GateSpec, SimStation
from firmware_sim.config import BarrierConfig, DeviceConfig
from firmware_sim.population import Phone, Population
from firmware_sim.reader import WRITTEN, Presence
from firmware_sim.sim import Sim
from gate.journal import Journal
from gate.runtime import GateRuntime
from gate.serial_link import ReaderLink
from gate.unconfirmed import UnconfirmedWrite
from protocol.serial import ReadWallet, Wallet

from .brokers import Broker
from .stations import WiredStation
from .test_gate_mqtt import backend, register_table, wait_until

EXAMPLES = Path(__file__).resolve().parents[2] / "fare_core" / "examples"
DEVICE = DeviceConfig(barrier=BarrierConfig(travel_ms=40, passage_ms=80))
CARD = 0x5B01
TORN_AT = 20  # bytes of the slot landed when the power goes: the write did not land


@pytest.fixture(scope="module")
def table() -> TableData:
    return compiler.compile_rules(rules.load_rules(EXAMPLES / "tiny.toml"), version=2)


def rider() -> Population:
    return Population([Phone(card_id=CARD, balance=1000)])


def journaled_rows(path: Path) -> list[tuple[int, str | None]]:
    """(seq, unsettled) of the journal's rows, read as another process would."""
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
        try:
            return [(int(s), u) for s, u in db.execute("SELECT seq, unsettled FROM taps ORDER BY seq")]
        except sqlite3.OperationalError:  # the schema is not there yet
            return []


async def stored(settings: Settings) -> tuple[dict[str, TapRow], list[str], list[str]]:
    """The backend's taps by id, the kinds of its alarms about the card, and the card's deny-listings."""
    engine = make_engine(settings)
    card = f"{CARD:016x}"
    try:
        async with engine.connect() as connection:
            taps = {row.tap_id: row for row in (await connection.execute(select(
                TapRow.tap_id, TapRow.allowed, TapRow.reason, TapRow.flags, TapRow.fare,
                TapRow.counter_before, TapRow.counter_after, TapRow.reconciled))).all()}
            alarms = list((await connection.execute(
                select(AlarmRow.kind).where(AlarmRow.card_id == card))).scalars().all())
            denied = list((await connection.execute(
                select(DenyListEntryRow.reason).where(DenyListEntryRow.card_id == card))).scalars().all())
    finally:
        await engine.dispose()
    return taps, alarms, denied  # type: ignore[return-value]


# amqtt leaves the server side of the killed gate's connection to the garbage collector, which may
# run at any point of the test (tests/gate/brokers.py collects it at the broker's stop otherwise)
@pytest.mark.filterwarnings("ignore:unclosed:ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the same, when the
# collector runs inside a finaliser (pytest reports it as unraisable, not as the ResourceWarning)
@pytest.mark.parametrize("landed", [True, False], ids=["write_landed", "write_lost"])
async def test_a_gate_killed_9_mid_write_publishes_the_tap_unconfirmed_and_the_retap_settles_it(
        broker: Broker, tmp_path: Path, table: TableData, landed: bool) -> None:
    async with backend(broker, tmp_path) as settings:
        await register_table(settings, table)
        station = SimStation(tmp_path, [GateSpec(1, 1, "entry")], rider(), table, device=DEVICE,
                             mqtt_url=broker.url, prefix=settings.mqtt_prefix)
        config = station.prepare(0)
        toml = tmp_path / "gate.toml"
        toml.write_text(
            f'station_id = 1\ngate_no = 1\ndirection = "entry"\ndata_dir = "{config.data_dir}"\n'
            f'sam_key_hex = "{config.sam_key_hex}"\n[mqtt]\nurl = "{broker.url}"\n'
            f'prefix = "{settings.mqtt_prefix}"\nstall_s = 2.0\n', encoding="utf-8")
        journal_path = config.data_dir / "journal.db"
        with Sim(DEVICE, rider(), gates=1, links=[tmp_path / "reader"]) as sim:
            command = [sys.executable, "-m", "faregate.cli", "gate", "--config", str(toml), "--serial",
                       sim.url(0), "--log-level", "ERROR"]

            async def start_gate() -> subprocess.Popen[bytes]:
                seen = len(sim.gate(0).records("rx"))
                proc = subprocess.Popen(command)
                # up once it has restored the barrier and display and polled the field (3 requests)
                await asyncio.to_thread(sim.wait_for, lambda: len(sim.gate(0).records("rx")) >= seen + 3, 30)
                return proc

            proc = await start_gate()
            left_unsettled: list[list[tuple[int, str | None]]] = []

            def die_mid_write() -> None:
                """Under the sim lock, the write's answer held: once the tap is in the journal, the
                whole gate loses power, controller and reader (the slot torn unless it had landed)."""
                deadline = time.monotonic() + 10
                while not (rows := journaled_rows(journal_path)) and time.monotonic() < deadline:
                    time.sleep(0.002)
                left_unsettled.append(rows)
                os.kill(proc.pid, signal.SIGKILL)
                sim.gate(0).cut_power(0.5)

            try:
                died = sim.during_write(0, CARD, WRITTEN if landed else TORN_AT, "call", action=die_mid_write)
                first = sim.present(CARD, 0, direction=Direction.ENTRY, patience_s=1.5)
                await asyncio.to_thread(sim.wait, first, 10)
                assert died.is_set() and first.authorised_at is None and first.passed_at is None
            finally:
                proc.send_signal(signal.SIGKILL)
                await asyncio.to_thread(proc.wait, 10)
            # killed after the append, before the write settled: the row is there, marked unsettled
            [[(seq, unsettled)]] = left_unsettled
            assert seq == 1 and unsettled is not None
            write = UnconfirmedWrite.from_row(CARD, 1, 0.0, unsettled)
            assert (write.counter, write.allowed) == (1, True)
            assert sim.record(CARD).counter == (1 if landed else 0)  # the ground truth
            await asyncio.to_thread(sim.wait_for, lambda: sim.gate(0).link.is_open, 10)

            proc = await start_gate()
            try:
                async def unconfirmed_stored() -> bool:
                    return "1-1:1" in (await stored(settings))[0]

                await wait_until(unconfirmed_stored, 30)
                wallet = sim.wallet(CARD)
                again = sim.present(CARD, 0, direction=Direction.ENTRY)
                await asyncio.to_thread(sim.wait, again, 10)
                assert again.passed_at is not None and not again.denied  # the barrier opened

                async def settled() -> bool:
                    taps, _alarms, _denied = await stored(settings)
                    return {"1-1:1", "1-1:2"} <= set(taps) and taps["1-1:1"].reconciled != "unconfirmed"

                await wait_until(settled, 30)
            finally:
                proc.send_signal(signal.SIGKILL)
                await asyncio.to_thread(proc.wait, 10)
            record = sim.record(CARD)

        taps, alarms, denied = await stored(settings)
        assert set(taps) == {"1-1:1", "1-1:2"}
        first_row, retap = taps["1-1:1"], taps["1-1:2"]
        # published UNCONFIRMED, as the gate rewrites a write whose answer was lost
        assert first_row.flags & Flag.UNCONFIRMED and not first_row.allowed
        assert first_row.reason == Reason.READ_FAILED
        assert (first_row.counter_before, first_row.counter_after) == (0, 1)
        if landed:  # the re-tap found the write: RECOVERED, nothing written, charged once
            assert (retap.flags, retap.allowed, retap.fare) == (Flag.RECOVERED, True, 0)
            assert retap.counter_before == retap.counter_after == 1
            assert sim.wallet(CARD) == wallet
            assert (first_row.reconciled, retap.reconciled) == ("unconfirmed_landed", "recovered")
        else:  # decided afresh from the old counter, written once
            assert retap.flags & (Flag.RECOVERED | Flag.UNCONFIRMED) == 0 and retap.allowed
            assert (retap.counter_before, retap.counter_after) == (0, 1)
            assert first_row.reconciled == "unconfirmed_not_landed"
        assert record.counter == 1 and record.balance == 1000  # one entry written, nothing else
        # the backend never saw two confirmed writes from one counter: no clone taken for a rider
        confirmed = [t.counter_before for t in taps.values()
                     if t.allowed and not t.flags & (Flag.UNCONFIRMED | Flag.RECOVERED)]
        assert len(confirmed) == len(set(confirmed))
        assert "counter_reused" not in alarms and denied == []
        with Journal(journal_path) as journal:
            assert journal.unsettled() == [] and journal.unconfirmed_writes() == []


# ------------------------------------------------------------------ the same, in one process


@pytest.mark.parametrize("landed", [True, False], ids=["write_landed", "write_lost"])
async def test_a_restarted_gate_settles_a_row_left_mid_write_before_it_is_final(
        tmp_path: Path, table: TableData, landed: bool) -> None:
    """The gate's power goes while the exit write is on the wire, once the tap is journaled (the
    controller's task is cancelled, the reader's power cut, the write's answer never comes). The
    journal as a new GateRuntime finds it: the row is unsettled and not final, so the uplink cannot
    publish it, until `start` rewrites it UNCONFIRMED; the re-tap then settles it, charged once."""
    specs = [GateSpec(1, 1, "entry"), GateSpec(3, 2, "exit")]
    async with WiredStation(tmp_path, specs, rider(), table, device=DEVICE) as st:
        assert st.sim is not None
        sim = st.sim
        assert (await st.tap(CARD, 0)).passed_at is not None  # entered: counter 1
        gate = st.gates[1]
        loop = asyncio.get_running_loop()
        controller_task = gate.controller._task
        assert controller_task is not None

        def power_lost() -> None:  # under the sim lock, no answer sent: once the row is journaled
            deadline = time.monotonic() + 10
            while not journaled_rows(gate.journal.path) and time.monotonic() < deadline:
                time.sleep(0.002)
            loop.call_soon_threadsafe(controller_task.cancel)
            sim.gate(1).cut_power(0.5)

        died = sim.during_write(1, CARD, WRITTEN if landed else TORN_AT, "call", action=power_lost)
        first = await st.tap(CARD, 1, patience_s=1.5)
        assert died.is_set() and first.authorised_at is None
        await gate.stop()
        assert sim.record(CARD).counter == (2 if landed else 1)  # the ground truth
        await asyncio.to_thread(sim.wait_for, lambda: sim.gate(1).link.is_open, 10)

        gate = GateRuntime(gate.config, gate.link.url)
        [(seq, _payload, _detail)] = gate.journal.unsettled()
        assert seq == 1 and gate.controller.final_seq == 0 and gate.journal.pending() == []
        await gate.start()
        st.gates[1] = gate
        assert gate.controller.final_seq == 1 and gate.journal.unsettled() == []
        [(_seq, payload)] = gate.journal.pending()
        row = json.loads(payload)
        assert row["flags"] & Flag.UNCONFIRMED and not row["allowed"] and row["reason"] == Reason.READ_FAILED
        assert (row["counter_before"], row["counter_after"]) == (1, 2) and row["fare"] > 0
        assert CARD in gate.controller.unconfirmed and len(gate.journal.unconfirmed_writes()) == 1
        assert await gate.link.wait_up(5.0)
        wallet = sim.wallet(CARD)
        again = await st.tap(CARD, 1)
        assert again.passed_at is not None and not again.denied
        [_unconfirmed, (_, retap_payload)] = gate.journal.pending()
        retap = json.loads(retap_payload)
        if landed:
            assert (retap["flags"], retap["allowed"], retap["fare"]) == (Flag.RECOVERED, True, 0)
            assert sim.wallet(CARD) == wallet
        else:
            assert retap["flags"] & (Flag.RECOVERED | Flag.UNCONFIRMED) == 0 and retap["allowed"]
            assert (retap["counter_before"], retap["counter_after"]) == (1, 2)
            assert retap["fare"] == row["fare"]
        record = sim.record(CARD)
        assert (record.counter, record.balance) == (2, 1000 - row["fare"])  # charged once
        assert CARD not in gate.controller.unconfirmed and gate.journal.unconfirmed_writes() == []


# ------------------------------------------------------------------------ the journal on its own


def test_an_unsettled_row_is_never_pending_nor_anything_after_it(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.db") as journal:
        journal.append(1, b"one")
        journal.append(2, b"two", unsettled='{"slot": 0}')
        assert journal.pending() == [(1, b"one")]
        journal.append(3, b"three")
        assert journal.pending() == [(1, b"one")]  # no gap in what the backend sees
        assert journal.unsettled() == [(2, b"two", '{"slot": 0}')]
        journal.settle(2)
        assert [seq for seq, _ in journal.pending()] == [1, 2, 3] and journal.unsettled() == []
        journal.append(4, b"four", unsettled="{}")
        journal.replace(4, b"four refused")  # a rewrite settles the row in the same step
        assert journal.pending(after=3) == [(4, b"four refused")] and journal.unsettled() == []
        journal.append(5, b"five", unsettled="{}")
        journal.replace_unconfirmed(5, b"five unconfirmed", CARD, 1.0, "{}")
        assert journal.pending(after=4) == [(5, b"five unconfirmed")] and journal.unsettled() == []


def test_an_unsettled_row_survives_a_reopen(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.db") as journal:
        journal.append(1, b"one", unsettled='{"slot": 1}')
    with Journal(tmp_path / "j.db") as journal:
        assert journal.unsettled() == [(1, b"one", '{"slot": 1}')] and journal.pending() == []


def test_a_journal_from_before_the_column_opens_with_every_row_settled(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript("CREATE TABLE taps (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL);"
                         "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                         "INSERT INTO taps VALUES (1, x'6f6e65');"
                         "INSERT INTO meta VALUES ('last_seq', '1');")
    with Journal(path) as journal:
        assert journal.pending() == [(1, b"one")] and journal.unsettled() == []
        journal.append(2, b"two", unsettled="{}")
        assert journal.unsettled() == [(2, b"two", "{}")]


# ---------------------------------------------------- a restarted controller and the reader's cache


async def test_a_restarted_controller_is_never_answered_from_the_previous_ones_retry_cache(
        tmp_path: Path) -> None:
    """A gate process killed while its reader stays up (the soak's gate_kill) is started again on the
    same reader. Its first wallet read must show the wallet as it is now, not the answer the reader
    cached for the previous process's request of the same SEQ: a stale wallet is decided from an old
    counter (a genuine rider taken for a clone, or a landed write not recovered)."""
    with Sim(DEVICE, rider(), gates=1, links=[tmp_path / "reader"]) as sim:
        device = sim.gate(0)
        with device.lock:
            device.reader.place(Presence(CARD, 3.0))  # the phone rests on the reader throughout

        async def first_read() -> bytes:
            link = ReaderLink(sim.url(0))
            await link.open()
            try:
                assert await link.wait_up(5.0)
                return bytes((await link.request(ReadWallet(CARD), Wallet)).wallet)
            finally:
                await link.close()

        before = await first_read()
        record = sim.record(CARD)
        with device.lock:  # another gate's write since (the wallet moved on)
            sim.wallets.issue(dataclasses.replace(record, counter=record.counter + 5))
        now = sim.wallet(CARD)
        assert now != before
        assert await first_read() == now
