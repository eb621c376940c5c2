"""Unconfirmed wallet writes resolve to one truth (issue #15, point 3), on the simulated hardware loop.

The exit gate's reader loses power in the middle of a wallet write, so the gate never hears whether
the write landed, and the phone is gone before it could read the wallet back: the tap is journaled
UNCONFIRMED with the barrier shut. The commuter taps again at the same gate. If the write had landed,
the gate journals a RECOVERED tap (nothing written, fare 0) and opens; if not, it decides afresh and
charges once. Across a gate restart between the two taps, the same. The simulator's wallet bytes
are the ground truth: the phone is charged exactly once whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from backend.config import Settings
from backend.db import make_engine
from backend.runtime import serve
from backend.tables import TapRow
from fare_core import DenyList, Direction, Flag, GateMode, Reason, compiler, rules
from fare_core.record import FLAG_ENTRY_OPEN
from fare_core.table_data import TableData
from faregate.station import GateSpec, SimStation
from firmware_sim.config import BarrierConfig, DeviceConfig
from firmware_sim.population import Phone, Population
from firmware_sim.reader import RfOperation
from firmware_sim.sim import Sim
from gate.journal import Journal
from gate.runtime import GateRuntime
from gate.state import Outcome
from gate.unconfirmed import RECOVERY_WINDOW_S, UnconfirmedWrite, UnconfirmedWrites
from protocol.mqtt import Action, ActionListMessage

from .brokers import Broker
from .stations import WiredStation
from .test_gate_e2e import assert_wallets_match_journal

EXAMPLES = Path(__file__).resolve().parents[2] / "fare_core" / "examples"
ENTRY_GATE, EXIT_GATE = 0, 1
SPECS = [GateSpec(1, 1, "entry"), GateSpec(3, 2, "exit")]
DEVICE = DeviceConfig(barrier=BarrierConfig(travel_ms=40, passage_ms=80))
CARD = 0x5A01


@pytest.fixture(scope="module")
def table() -> TableData:
    return compiler.compile_rules(rules.load_rules(EXAMPLES / "tiny.toml"), version=3)


def rider() -> Population:
    return Population([Phone(card_id=CARD, balance=1000)])


def cut_power_during_next_write(sim: Sim, gate: int, card: int, *, after_it_landed: bool,
                                down_s: float = 0.6, phone_leaves: bool = True) -> threading.Event:
    """At `card`'s next wallet write on `gate`, the reader loses power — once the record has landed
    (before its verify answers) or before a byte of it did — and the commuter takes the phone away.
    The gate hears no answer and cannot read the wallet back. Set when it happened."""
    device, cut = sim.gate(gate), threading.Event()
    reader = device.reader

    def power_cut() -> None:  # under the sim lock, at the device time of the write's step
        reader.power_off()  # the write stops where it stands; no answer will come
        device.power_cycle(down_s)  # the port goes away and the device boots afresh
        if phone_leaves:
            sim.withdraw(card, gate)  # the commuter walks off with the phone
        cut.set()

    if after_it_landed:
        landed = reader._write_landed

        def landed_then_cut(op: RfOperation, flaky: bool) -> None:
            landed(op, flaky)
            if op.card_id == card and not cut.is_set():
                power_cut()

        reader._write_landed = landed_then_cut  # type: ignore[method-assign]
    else:
        write = reader.write

        def write_then_cut(card_id: int, slot: int, record: bytes, respond: Any) -> None:
            write(card_id, slot, record, respond)
            if card_id == card and not cut.is_set():
                power_cut()

        reader.write = write_then_cut  # type: ignore[method-assign]
    return cut


def rows(runtime: GateRuntime) -> list[dict[str, Any]]:
    return [json.loads(payload) for _seq, payload in runtime.journal.pending(limit=100_000)]


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)


async def enter_then_exit_unconfirmed(st: SimStation, *, landed: bool) -> dict[str, Any]:
    """The rider enters, then exits with the power cut mid-write; returns the UNCONFIRMED row, once
    the exit gate has journaled it final and its reader is back (a gate with a backend may have handed
    the row over already: then {})."""
    assert st.sim is not None
    entry = await st.tap(CARD, ENTRY_GATE)
    assert entry.passed_at is not None
    cut = cut_power_during_next_write(st.sim, EXIT_GATE, CARD, after_it_landed=landed)
    first = await st.tap(CARD, EXIT_GATE, patience_s=1.5)
    assert cut.is_set() and first.authorised_at is None and first.passed_at is None
    gate = st.gates[EXIT_GATE]
    await wait_until(lambda: gate.journal.last_seq == 1 and gate.controller.final_seq == 1)
    assert CARD in gate.controller.unconfirmed
    await wait_until(lambda: gate.link.reopens >= 1 and gate.link.is_up)  # the reader rebooted
    if gate.uplink is not None:
        return {}
    [row] = rows(gate)
    assert row["flags"] & Flag.UNCONFIRMED and not row["allowed"] and row["reason"] == Reason.READ_FAILED
    assert (row["counter_before"], row["counter_after"]) == (1, 2) and row["fare"] > 0
    return row


def assert_recovered(row: dict[str, Any], seq: int, wallet: bytes) -> None:
    """The RECOVERED tap as docs/ledger.md has it: allowed, fare 0, nothing written, the wallet read."""
    assert row["tap_id"] == f"3-2:{seq}" and row["seq"] == seq
    assert row["card_id"] == f"{CARD:016x}"
    assert (row["station_id"], row["gate_no"], row["direction"]) == (3, 2, Direction.EXIT)
    assert row["flags"] == Flag.RECOVERED
    assert (row["allowed"], row["reason"], row["fare"]) == (True, Reason.OK, 0)
    assert row["wallet_before"] == wallet.hex()
    assert row["counter_before"] == row["counter_after"] == 2
    assert row["action_id"] is None and row["topup_applied"] == 0
    assert isinstance(row["mac"], str) and len(row["mac"]) == 32


async def test_exit_write_landed_answer_lost_the_retap_opens_and_is_journaled_recovered(
        tmp_path: Path, table: TableData) -> None:
    async with WiredStation(tmp_path, SPECS, rider(), table, device=DEVICE) as st:
        assert st.sim is not None
        unconfirmed = await enter_then_exit_unconfirmed(st, landed=True)
        landed = st.sim.record(CARD)  # the ground truth: the exit write is on the phone
        assert (landed.counter, landed.balance) == (2, 1000 - unconfirmed["fare"])
        wallet = st.sim.wallet(CARD)
        again = await st.tap(CARD, EXIT_GATE)
        assert again.authorised_at is not None and again.passed_at is not None and not again.denied
        assert again.display is not None and "Please pass" in again.display[1]
        gate = st.gates[EXIT_GATE]
        unconfirmed_row, recovered = rows(gate)
        assert unconfirmed_row == unconfirmed
        assert_recovered(recovered, 2, wallet)
        assert recovered["balance_before"] == recovered["balance_after"] == landed.balance
        assert st.sim.wallet(CARD) == wallet  # nothing written on the re-tap: charged exactly once
        assert CARD not in gate.controller.unconfirmed and gate.journal.unconfirmed_writes() == []
        assert_wallets_match_journal(st, [CARD])


async def test_the_same_across_a_gate_restart_after_the_backend_took_the_unconfirmed_row(
        tmp_path: Path, table: TableData) -> None:
    """The gate restarts between the two taps (its memory is gone), and the backend had already
    committed the UNCONFIRMED row, so the journal no longer holds it: the re-tap still recovers."""
    async with WiredStation(tmp_path, SPECS, rider(), table, device=DEVICE) as st:
        assert st.sim is not None
        unconfirmed = await enter_then_exit_unconfirmed(st, landed=True)
        gate = st.gates[EXIT_GATE]
        gate.journal.mark_committed(1)  # as the backend's ack does
        assert rows(gate) == []
        await gate.stop()
        st.gates[EXIT_GATE] = gate = await st.start_gate(EXIT_GATE)
        assert CARD in gate.controller.unconfirmed  # rebuilt from the journal
        wallet = st.sim.wallet(CARD)
        again = await st.tap(CARD, EXIT_GATE)
        assert again.passed_at is not None and not again.denied
        [recovered] = rows(gate)
        assert_recovered(recovered, 2, wallet)
        record = st.sim.record(CARD)
        assert (record.counter, record.balance) == (2, 1000 - unconfirmed["fare"])  # charged once
        assert st.sim.wallet(CARD) == wallet
        assert gate.journal.unconfirmed_writes() == []


async def test_a_write_that_did_not_land_is_decided_afresh_after_a_restart_and_charged_once(
        tmp_path: Path, table: TableData) -> None:
    async with WiredStation(tmp_path, SPECS, rider(), table, device=DEVICE) as st:
        assert st.sim is not None
        unconfirmed = await enter_then_exit_unconfirmed(st, landed=False)
        assert st.sim.record(CARD).counter == 1  # nothing of the exit write is on the phone
        gate = st.gates[EXIT_GATE]
        await gate.stop()
        st.gates[EXIT_GATE] = gate = await st.start_gate(EXIT_GATE)
        assert CARD in gate.controller.unconfirmed
        wallet = st.sim.wallet(CARD)
        again = await st.tap(CARD, EXIT_GATE)
        assert again.passed_at is not None and not again.denied
        _unconfirmed, fresh = rows(gate)
        assert fresh["tap_id"] == "3-2:2" and fresh["flags"] & (Flag.RECOVERED | Flag.UNCONFIRMED) == 0
        assert (fresh["allowed"], fresh["reason"], fresh["fare"]) == (True, Reason.OK, unconfirmed["fare"])
        assert (fresh["counter_before"], fresh["counter_after"]) == (1, 2)
        assert fresh["wallet_before"] == wallet.hex()
        record = st.sim.record(CARD)
        assert (record.counter, record.balance) == (2, 1000 - unconfirmed["fare"])  # charged once
        assert CARD not in gate.controller.unconfirmed and gate.journal.unconfirmed_writes() == []
        assert_wallets_match_journal(st, [CARD])


async def test_a_refused_tap_whose_write_landed_is_recovered_refused(tmp_path: Path,
                                                                    table: TableData) -> None:
    """A deny-listed phone's wallet is marked blocked by a write; that write's answer is lost. On the
    re-tap the gate finds the blocked record: RECOVERED, refused as first decided, barrier shut."""
    async with WiredStation(tmp_path, SPECS, rider(), table, device=DEVICE,
                            denylist=DenyList([CARD], version=5)) as st:
        assert st.sim is not None
        cut = cut_power_during_next_write(st.sim, ENTRY_GATE, CARD, after_it_landed=True)
        first = await st.tap(CARD, ENTRY_GATE, patience_s=1.5)
        gate = st.gates[ENTRY_GATE]
        await wait_until(lambda: gate.controller.final_seq == 1 and gate.link.reopens >= 1
                         and gate.link.is_up)
        assert cut.is_set() and first.authorised_at is None and st.sim.record(CARD).blocked
        wallet = st.sim.wallet(CARD)
        again = await st.tap(CARD, ENTRY_GATE, patience_s=1.5)
        assert again.authorised_at is None and again.denied and again.display is not None
        assert "blocked" in again.display[1]
        unconfirmed, recovered = rows(gate)
        assert unconfirmed["flags"] & Flag.UNCONFIRMED and unconfirmed["flags"] & Flag.BLOCKED_NOW
        assert (recovered["flags"], recovered["allowed"], recovered["reason"]) == (
            Flag.RECOVERED, False, Reason.DENYLISTED)
        assert recovered["wallet_before"] == wallet.hex() and recovered["fare"] == 0
        assert recovered["counter_before"] == recovered["counter_after"] == 1
        assert st.sim.wallet(CARD) == wallet


async def test_a_gate_closed_since_records_the_landed_write_but_keeps_the_barrier_shut(
        tmp_path: Path, table: TableData) -> None:
    async with WiredStation(tmp_path, SPECS, rider(), table, device=DEVICE) as st:
        assert st.sim is not None
        await enter_then_exit_unconfirmed(st, landed=True)
        gate = st.gates[EXIT_GATE]
        gate.state.set_mode(GateMode.CLOSED)
        wallet = st.sim.wallet(CARD)
        again = await st.tap(CARD, EXIT_GATE, patience_s=1.5)
        assert again.authorised_at is None and again.denied
        _unconfirmed, recovered = rows(gate)
        assert (recovered["flags"], recovered["allowed"], recovered["reason"]) == (
            Flag.RECOVERED, False, Reason.GATE_CLOSED)
        assert recovered["counter_before"] == recovered["counter_after"] == 2
        assert st.sim.wallet(CARD) == wallet and gate.journal.unconfirmed_writes() == []


def give_topup(runtime: GateRuntime, action_id: int, fen: int) -> None:
    """An OTA top-up for the rider in this gate's action list, as the backend's list delivers it."""
    listed = ActionListMessage(version=1, actions=[Action(action_id=action_id, card_id=CARD, topup=fen)],
                               time=datetime.now(UTC))
    assert runtime.state.apply_actions(listed).outcome is Outcome.APPLIED


async def test_a_topup_whose_write_landed_is_recovered_and_never_applied_again(
        tmp_path: Path, table: TableData) -> None:
    async with WiredStation(tmp_path, SPECS, rider(), table, device=DEVICE) as st:
        assert st.sim is not None
        give_topup(st.gates[EXIT_GATE], 77, 500)
        unconfirmed = await enter_then_exit_unconfirmed(st, landed=True)
        assert (unconfirmed["action_id"], unconfirmed["topup_applied"]) == (77, 500)
        again = await st.tap(CARD, EXIT_GATE)
        assert again.passed_at is not None
        gate = st.gates[EXIT_GATE]
        assert gate.state.action_for(CARD) is None and 77 in gate.state.applied_actions
        assert st.sim.record(CARD).balance == 1000 + 500 - unconfirmed["fare"]
        assert_wallets_match_journal(st, [CARD])


async def test_a_topup_whose_write_cannot_be_told_any_more_is_held_back_at_this_gate(
        tmp_path: Path, table: TableData) -> None:
    """The exit write carrying a top-up landed unconfirmed; the rider then entered at another gate
    (the wallet moved on) and exits here again: this gate cannot tell whether its write landed, so it
    decides afresh without the top-up rather than risk paying it twice."""
    async with WiredStation(tmp_path, SPECS, rider(), table, device=DEVICE) as st:
        assert st.sim is not None
        give_topup(st.gates[EXIT_GATE], 78, 500)
        unconfirmed = await enter_then_exit_unconfirmed(st, landed=True)
        fare = unconfirmed["fare"]
        entry = await st.tap(CARD, ENTRY_GATE)  # counter 3, written by the entry gate
        assert entry.passed_at is not None
        out = await st.tap(CARD, EXIT_GATE)
        assert out.passed_at is not None
        gate = st.gates[EXIT_GATE]
        _unconfirmed, fresh = rows(gate)
        assert fresh["flags"] & (Flag.RECOVERED | Flag.TOPUP_APPLIED) == 0 and fresh["fare"] == fare
        assert (fresh["counter_before"], fresh["counter_after"]) == (3, 4)
        assert (fresh["action_id"], fresh["topup_applied"]) == (None, 0)
        assert 78 in gate.state.applied_actions and gate.state.action_for(CARD) is None
        record = st.sim.record(CARD)
        assert (record.counter, record.balance) == (4, 1000 + 500 - 2 * fare)  # the top-up once
        assert_wallets_match_journal(st, [CARD])


async def test_a_phone_left_on_the_reader_through_the_power_cut_is_recovered_when_it_reboots(
        tmp_path: Path, table: TableData) -> None:
    """The commuter keeps the phone on the reader: the gate cannot read it back while the reader is
    off, and finds it in the field when the reader is back (a FieldChanged and the gate's own poll of
    the field, both served as one tap): one RECOVERED row, the barrier opens, no second charge."""
    async with WiredStation(tmp_path, SPECS, rider(), table, device=DEVICE) as st:
        assert st.sim is not None
        await st.tap(CARD, ENTRY_GATE)
        cut = cut_power_during_next_write(st.sim, EXIT_GATE, CARD, after_it_landed=True, phone_leaves=False)
        exit_ = await st.tap(CARD, EXIT_GATE, patience_s=6.0)
        assert cut.is_set() and exit_.passed_at is not None and not exit_.denied
        gate = st.gates[EXIT_GATE]
        await wait_until(lambda: gate.journal.last_seq == 2 and gate.controller.final_seq == 2)
        unconfirmed, recovered = rows(gate)
        assert unconfirmed["flags"] & Flag.UNCONFIRMED
        assert_recovered(recovered, 2, st.sim.wallet(CARD))
        record = st.sim.record(CARD)
        assert (record.counter, record.balance) == (2, 1000 - unconfirmed["fare"])
        assert_wallets_match_journal(st, [CARD])


async def test_the_same_when_the_gate_process_is_killed_9_between_the_taps(
        tmp_path: Path, table: TableData) -> None:
    """`faregate gate` as its own process, SIGKILLed after journaling the UNCONFIRMED tap and started
    again: the re-tap opens on the landed write, journaled RECOVERED."""
    station = SimStation(tmp_path, SPECS[1:], rider(), table, device=DEVICE)
    config = station.prepare(0)
    toml = tmp_path / "gate.toml"
    toml.write_text(  # no broker listens on port 1: the gate runs offline, its journal keeps the taps
        f'station_id = 3\ngate_no = 2\ndirection = "exit"\ndata_dir = "{config.data_dir}"\n'
        f'sam_key_hex = "{config.sam_key_hex}"\n[mqtt]\nurl = "mqtt://127.0.0.1:1"\n', encoding="utf-8")
    journal_path = config.data_dir / "journal.db"

    def journaled() -> list[dict[str, Any]]:
        if not journal_path.exists():
            return []
        with contextlib.closing(sqlite3.connect(f"file:{journal_path}?mode=ro", uri=True)) as db:
            return [json.loads(p) for (p,) in db.execute("SELECT payload FROM taps ORDER BY seq")]

    with Sim(DEVICE, rider(), gates=1, links=[tmp_path / "reader"]) as sim:
        entered = sim.wallets.record(CARD)[0]
        # the rider entered at station 1 (another gate wrote the entry)
        sim.wallets.issue(dataclasses.replace(entered, counter=1, flags=FLAG_ENTRY_OPEN, entry_station=1,
                                              entry_time=int(time.time()) - 600))
        command = [sys.executable, "-m", "faregate.cli", "gate", "--config", str(toml), "--serial",
                   sim.url(0), "--log-level", "ERROR"]

        async def start_gate() -> subprocess.Popen[bytes]:
            seen = len(sim.gate(0).records("rx"))
            proc = subprocess.Popen(command)
            # up once it has restored the barrier and display and polled the field (3 requests)
            await asyncio.to_thread(sim.wait_for, lambda: len(sim.gate(0).records("rx")) >= seen + 3, 30)
            return proc

        proc = await start_gate()
        try:
            cut = cut_power_during_next_write(sim, 0, CARD, after_it_landed=True)
            first = sim.present(CARD, 0, direction=Direction.EXIT, patience_s=1.5)
            await asyncio.to_thread(sim.wait, first, 10)
            assert cut.is_set() and first.passed_at is None
            await wait_until(lambda: [r["flags"] & Flag.UNCONFIRMED for r in journaled()]
                             == [Flag.UNCONFIRMED])
        finally:
            proc.send_signal(signal.SIGKILL)  # no goodbye, no flush
            await asyncio.to_thread(proc.wait, 10)
        await asyncio.to_thread(sim.wait_for, lambda: sim.gate(0).link.is_open, 10)  # reader rebooted
        wallet = sim.wallet(CARD)
        assert sim.record(CARD).counter == 2  # the exit write landed
        proc = await start_gate()
        try:
            again = sim.present(CARD, 0, direction=Direction.EXIT)
            await asyncio.to_thread(sim.wait, again, 10)
            assert again.passed_at is not None and not again.denied
            await wait_until(lambda: len(journaled()) == 2)
        finally:
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 10)
        unconfirmed, recovered = journaled()
        assert_recovered(recovered, 2, wallet)
        assert sim.wallet(CARD) == wallet  # charged exactly once
        assert sim.record(CARD).balance == 1000 - unconfirmed["fare"]


async def test_the_recovered_tap_reaches_the_backend_like_any_tap(broker: Broker, tmp_path: Path,
                                                                   table: TableData) -> None:
    """Published through a real broker under the gate's MAC and stored by the backend's ingest, after
    the UNCONFIRMED tap it settles (the processor, which posts the ledger, is not run here)."""
    settings = Settings(
        environment="development", database_url=f"sqlite+aiosqlite:///{tmp_path / 'backend.db'}",
        mqtt_url=broker.url, mqtt_version=broker.version,  # type: ignore[arg-type]
        ingest_group="" if broker.version == "3.1.1" else f"g{uuid.uuid4().hex[:8]}",
        mqtt_prefix=f"u{uuid.uuid4().hex[:8]}", ingest_client_id=f"ingest-{uuid.uuid4().hex[:8]}",
        ingest_batch_wait_ms=5)
    stop = asyncio.Event()
    backend = asyncio.create_task(serve(settings, api=False, ingest=True, processor=False, stop=stop,
                                        install_signals=False))
    try:
        async with WiredStation(tmp_path / "gates", SPECS, rider(), table, device=DEVICE,
                                mqtt_url=broker.url, prefix=settings.mqtt_prefix) as st:
            assert st.sim is not None
            await enter_then_exit_unconfirmed(st, landed=True)
            # a patient rider: what is tested is the backend's row, not the gate's speed on a loaded
            # machine (CI saw the default 4 s pass with nothing authorised once)
            again = await st.tap(CARD, EXIT_GATE, patience_s=15.0, timeout=20.0)
            assert again.passed_at is not None
            entry, gate = st.gates  # the backend's acks: every row stored
            await wait_until(lambda: (entry.journal.committed_through, gate.journal.committed_through)
                             == (1, 2), timeout=30)
        engine = make_engine(settings)
        try:
            async with engine.connect() as connection:
                stored = {row.tap_id: row for row in (await connection.execute(
                    select(TapRow.tap_id, TapRow.flags, TapRow.allowed, TapRow.fare, TapRow.counter_before,
                           TapRow.counter_after))).all()}
        finally:
            await engine.dispose()
        assert set(stored) == {"1-1:1", "3-2:1", "3-2:2"}
        assert stored["3-2:1"].flags & Flag.UNCONFIRMED and not stored["3-2:1"].allowed
        recovered = stored["3-2:2"]
        assert (recovered.flags, recovered.allowed, recovered.fare) == (Flag.RECOVERED, True, 0)
        assert recovered.counter_before == recovered.counter_after == 2
    finally:
        stop.set()
        await asyncio.wait_for(backend, 30)


# ------------------------------------------------------------------------ the set on its own


def write(card: int, seq: int, at: float) -> UnconfirmedWrite:
    return UnconfirmedWrite(card, seq, at, 1, bytes(range(64)), 2, True, Reason.OK, 3, None)


def test_the_set_survives_a_reopen_and_drops_what_is_past_the_window(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    now = 1_800_000_000.0
    with Journal(path) as journal:
        for seq in range(1, 5):
            journal.append(seq, b"tap")
        journal.replace_unconfirmed(1, b"stale by the clock", 0xA, now - RECOVERY_WINDOW_S - 1,
                                    write(0xA, 1, 0).detail())
        journal.replace_unconfirmed(2, b"kept", 0xB, now - 60, write(0xB, 2, 0).detail())
        journal.replace_unconfirmed(3, b"kept", (1 << 64) - 1, now + 3600, write(0, 3, 0).detail())
        assert [seq for seq, payload in journal.pending() if payload == b"kept"] == [2, 3]
    with Journal(path) as journal:
        kept = UnconfirmedWrites(journal, clock=lambda: now)
        assert len(kept) == 2 and 0xB in kept and (1 << 64) - 1 in kept and 0xA not in kept
        assert [card for card, *_ in journal.unconfirmed_writes()] == [0xB, (1 << 64) - 1]
        taken = kept.take(0xB)
        assert taken is not None and taken.record == bytes(range(64)) and taken.at == now - 60
        journal.append(5, b"the RECOVERED tap", resolves=0xB)
    with Journal(path) as journal:
        assert [card for card, *_ in journal.unconfirmed_writes()] == [(1 << 64) - 1]
        # a clock stepped back cannot keep an entry for ever: the bound in taps drops it
        assert len(UnconfirmedWrites(journal, clock=lambda: now, window_taps=2)) == 1  # seq 3, 2 taps ago
        journal.append(6, b"one more tap")
        assert len(UnconfirmedWrites(journal, clock=lambda: now, window_taps=2)) == 0
        assert journal.unconfirmed_writes() == []


def test_a_row_already_committed_cannot_be_rewritten_unconfirmed(tmp_path: Path) -> None:
    from gate.journal import JournalError

    with Journal(tmp_path / "j.db") as journal:
        journal.append(1, b"tap")
        journal.mark_committed(1)
        with pytest.raises(JournalError):
            journal.replace_unconfirmed(1, b"late", 0xC, 0.0, write(0xC, 1, 0).detail())
        assert journal.unconfirmed_writes() == []
