"""The gate controller against the simulated hardware, over real pseudo-terminals (no broker: the
gate works offline and its journal keeps every tap; the MQTT side is tested in test_gate_mqtt.py).

The ground truth is the simulator's wallet bytes: after every scenario, what each wallet holds must
agree with what the gate journaled — no tap charged twice, none charged without a journal row.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from fare_core import DenyList, Flag, Reason, compiler, read_wallet, rules
from fare_core.table_data import TableData
from faregate.station import GateSpec, SimStation
from firmware_sim.config import BarrierConfig, DeviceConfig, FaultsConfig, RatesConfig
from firmware_sim.population import Phone, Population

from .stations import WiredStation

EXAMPLES = Path(__file__).resolve().parents[2] / "fare_core" / "examples"
ENTRY_GATE, EXIT_GATE = 0, 1
SPECS = [GateSpec(1, 1, "entry"), GateSpec(3, 2, "exit")]
FAST = BarrierConfig(travel_ms=40, passage_ms=80)


@pytest.fixture(scope="module")
def table() -> TableData:
    return compiler.compile_rules(rules.load_rules(EXAMPLES / "tiny.toml"), version=3)


def phones(*specs: tuple[int, int], **extra: Any) -> Population:
    return Population([Phone(card_id=card, balance=balance, **extra) for card, balance in specs])


def journal_rows(station: SimStation) -> list[dict[str, Any]]:
    rows = []
    for runtime in station.gates:
        rows += [json.loads(payload) for _seq, payload in runtime.journal.pending(limit=100_000)]
    return rows


def assert_wallets_match_journal(station: SimStation, cards: list[int]) -> None:
    """Every counter a wallet advanced by is a journaled write; every fare journaled is on the wallet.

    A row flagged UNCONFIRMED (the gate could not learn whether its write landed) counts as landed
    exactly when the wallet's counters say so, which is how the backend settles it too.
    """
    assert station.sim is not None
    rows = journal_rows(station)
    for card in cards:
        record, _ = read_wallet(station.sim.wallet(card), card, station.sim.wallets.sam)
        mine = [r for r in rows
                if r["card_id"] == f"{card:016x}" and r["counter_after"] != r["counter_before"]]
        confirmed = [r for r in mine if not r["flags"] & Flag.UNCONFIRMED]
        seen = {r["counter_after"] for r in confirmed}
        landed = [r for r in mine if r["flags"] & Flag.UNCONFIRMED
                  and r["counter_after"] <= record.counter and r["counter_after"] not in seen]
        written = sorted(confirmed + landed, key=lambda r: r["counter_after"])
        assert [r["counter_after"] for r in written] == list(range(1, record.counter + 1)), card
        charged = sum(r["fare"] - r["topup_applied"] for r in written)
        assert station.population[card].balance - charged == record.balance, card


async def test_entry_and_exit_trip(tmp_path: Path, table: TableData) -> None:
    device = DeviceConfig(barrier=FAST)
    async with SimStation(tmp_path, SPECS, phones((0xA1, 1000)), table, device=device) as st:
        entry = await st.tap(0xA1, ENTRY_GATE)
        assert entry.authorised_at is not None and entry.passed_at is not None and not entry.denied
        out = await st.tap(0xA1, EXIT_GATE)
        assert out.passed_at is not None
        assert out.display is not None and "3.00" in out.display[1]  # tiny.toml: 1 -> 3 costs 300
        assert st.sim is not None
        record = st.sim.record(0xA1)
        assert (record.balance, record.counter, record.entry_open) == (700, 2, False)
        rows = journal_rows(st)
        assert [(r["tap_id"], r["reason"], r["fare"]) for r in rows] == [("1-1:1", 0, 0), ("3-2:1", 0, 300)]
        assert_wallets_match_journal(st, [0xA1])


async def test_blocked_phone_and_insufficient_balance_are_refused(tmp_path: Path, table: TableData) -> None:
    blocked = DenyList([0xB1], version=4)
    population = phones((0xB1, 1000), (0xB2, 50))
    async with SimStation(tmp_path, SPECS, population, table, denylist=blocked,
                          device=DeviceConfig(barrier=FAST)) as st:
        denied = await st.tap(0xB1, ENTRY_GATE, patience_s=1.5)
        poor = await st.tap(0xB2, ENTRY_GATE, patience_s=1.5)
        for p in (denied, poor):
            assert p.authorised_at is None and p.denied and p.passed_at is None
        assert denied.display is not None and "blocked" in denied.display[1]
        assert poor.display is not None and "Insufficient" in poor.display[1]
        assert st.sim is not None
        assert st.sim.record(0xB1).blocked  # the deny-listed wallet is marked blocked
        assert st.sim.record(0xB2).balance == 50
        reasons = {r["card_id"]: (r["reason"], r["denylist_version"]) for r in journal_rows(st)}
        assert reasons == {f"{0xB1:016x}": (Reason.DENYLISTED, 4),
                           f"{0xB2:016x}": (Reason.INSUFFICIENT_BALANCE, 4)}
        assert_wallets_match_journal(st, [0xB1, 0xB2])


async def test_two_phones_and_a_far_phone_are_never_charged(tmp_path: Path, table: TableData) -> None:
    population = phones((0xC1, 1000), (0xC2, 1000), (0xC3, 1000))
    async with SimStation(tmp_path, SPECS, population, table, device=DeviceConfig(barrier=FAST)) as st:
        assert st.sim is not None
        first = st.sim.present(0xC1, ENTRY_GATE, walk=False, dwell_s=1.0)
        second = st.sim.present(0xC2, ENTRY_GATE, walk=False, dwell_s=1.0)  # same instant: two phones
        await asyncio.to_thread(st.sim.wait, first, 5)
        await asyncio.to_thread(st.sim.wait, second, 5)
        assert any("One phone at a time" in d[3] for d in first.displays + second.displays)
        # a bystander's phone in a pocket 40 cm away is out of range of distance control
        far = st.sim.pocket(0xC3, ENTRY_GATE, dwell_s=0.6)
        await asyncio.to_thread(st.sim.wait, far, 5)
        for card in (0xC1, 0xC2, 0xC3):
            assert st.sim.record(card).counter == 0 and st.sim.record(card).balance == 1000
        assert [r for r in journal_rows(st) if r["card_id"] == f"{0xC3:016x}"] == []


async def test_pulled_phones_are_charged_once_or_not_at_all(tmp_path: Path, table: TableData) -> None:
    cards = [0xD0 + i for i in range(8)]
    population = phones(*((c, 1000) for c in cards))
    async with SimStation(tmp_path, SPECS, population, table, device=DeviceConfig(barrier=FAST)) as st:
        for i, card in enumerate(cards):  # pulled away at different moments of the read and the write
            await st.tap(card, ENTRY_GATE, dwell_s=0.02 + 0.008 * i, patience_s=1.0)
        assert st.sim is not None
        torn = [w for w in st.sim.wallets.writes if w.torn]
        assert torn, "no write was torn: the dwell times no longer hit the write window"
        assert any(r["reason"] == Reason.READ_FAILED for r in journal_rows(st))
        assert_wallets_match_journal(st, cards)
        # every phone can tap again and is charged as its wallet says, never twice
        for card in cards:
            again = await st.tap(card, EXIT_GATE, patience_s=1.5)
            assert again.display is not None
        assert_wallets_match_journal(st, cards)


async def test_line_noise_causes_no_wrong_charge(tmp_path: Path, table: TableData) -> None:
    noisy = RatesConfig(bit_flip=0.004, drop=0.003, duplicate=0.003)  # 1 % of bytes, both ways
    device = DeviceConfig(barrier=FAST, faults=FaultsConfig(seed=7, to_gate=noisy, to_device=noisy))
    cards = [0xE0 + i for i in range(10)]
    async with SimStation(tmp_path, SPECS, phones(*((c, 2000) for c in cards)), table, device=device) as st:
        for card in cards:
            await st.tap(card, ENTRY_GATE, patience_s=2.0)
            await st.tap(card, EXIT_GATE, patience_s=2.0)
        assert sum(g.link.decoder.bad_crc + g.link.timeouts for g in st.gates) > 0, "noise never hit"
        assert_wallets_match_journal(st, cards)
        rows = journal_rows(st)
        # whatever the noise did, a completed trip costs exactly the tiny.toml fare 1 -> 3
        assert all(r["fare"] in (0, 300) for r in rows)


async def test_unplugged_reader_is_reopened(tmp_path: Path, table: TableData) -> None:
    device = DeviceConfig(barrier=FAST)
    # through fixed paths, as a gate names its port: the re-plugged reader gets a new /dev/pts number
    async with WiredStation(tmp_path, SPECS, phones((0xF1, 1000)), table, device=device) as st:
        assert st.sim is not None
        gate = st.gates[ENTRY_GATE]
        st.sim.unplug(ENTRY_GATE, 0.5)
        for _ in range(100):
            if gate.link.reopens:
                break
            await asyncio.sleep(0.05)
        assert gate.link.reopens >= 1 and gate.link.is_up
        entry = await st.tap(0xF1, ENTRY_GATE)
        assert entry.passed_at is not None
        assert st.sim.record(0xF1).entry_open


async def test_a_reader_silent_at_the_gate_s_start_is_set_up_once_it_answers(
        tmp_path: Path, table: TableData, caplog: pytest.LogCaptureFixture) -> None:
    """A reader still booting (or a gate starved of CPU) leaves every OpenSession of the gate's start
    unanswered. The port is up, so no reopen would come: the gate tries the setup again with back-off
    and, once the reader answers, has its session, barrier and display for the mode, before any phone.
    (The soak once stopped here: a gate that never spoke to its reader after a busy start.)"""
    device = DeviceConfig(barrier=FAST)
    async with SimStation(tmp_path, SPECS, phones((0xF4, 1000)), table, device=device) as st:
        assert st.sim is not None
        await st.gates[ENTRY_GATE].stop()
        reader = st.sim.gate(ENTRY_GATE)
        reader.hang(3.0)  # input lost, nothing sent: all three OpenSessions of the start go unanswered
        since = reader.clock()
        st.gates[ENTRY_GATE] = gate = await st.start_gate(ENTRY_GATE)
        for _ in range(300):
            if gate.link.session is not None and reader.records("rx", since):
                break
            await asyncio.sleep(0.05)
        assert gate.link.session is not None and reader.records("rx", since)  # set up by the gate alone
        assert any("link setup failed" in r.getMessage() and "trying again" in r.getMessage()
                   for r in caplog.records)
        entry = await st.tap(0xF4, ENTRY_GATE)
        assert entry.passed_at is not None


async def test_a_fault_while_the_write_is_on_the_wire_settles_the_write(
        tmp_path: Path, table: TableData, monkeypatch: pytest.MonkeyPatch) -> None:
    """The wallet write goes out before the tap message is built. If building it fails (a bug), the
    write's answer is still awaited, so no request is left holding its SEQ and the gate serves on."""
    device = DeviceConfig(barrier=FAST)
    async with SimStation(tmp_path, SPECS, phones((0xF2, 1000), (0xF3, 1000)), table, device=device) as st:
        gate = st.gates[ENTRY_GATE]
        real = gate.controller._tap_message
        calls = []

        def broken_once(*args: Any) -> Any:
            calls.append(args)
            if len(calls) == 1:
                raise RuntimeError("a bug in the tap message")
            return real(*args)

        monkeypatch.setattr(gate.controller, "_tap_message", broken_once)
        first = await st.tap(0xF2, ENTRY_GATE, patience_s=1.0)
        assert first.authorised_at is None  # no journal row: the barrier stayed shut
        assert gate.link._pending == {}
        second = await st.tap(0xF3, ENTRY_GATE)
        assert second.passed_at is not None
        assert [r["card_id"] for r in journal_rows(st)] == [f"{0xF3:016x}"]
