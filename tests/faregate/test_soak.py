"""`faregate soak`: a short run with every fault kind must end with every invariant at 0; and the
checks themselves must see money the back office does not account for."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backend.config import Settings
from backend.db import make_engine, make_sessionmaker
from backend.migrate import upgrade
from backend.tables import AlarmRow, TapRow
from fare_core import Flag
from faregate.soak import FAULTS
from faregate.soak_checks import INVARIANTS, Handset, Truth, check

CARD = 0x5EED0000000000A1
CLONED = 0x5EED0000000000C1


async def test_the_checks_see_a_charge_and_taps_the_back_office_never_got(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    engine = make_engine(settings)
    try:
        await upgrade(engine, settings)
        truth = Truth(
            # the wallet was charged 300 at counter 0 -> 1, and a second phone was never touched
            handsets=[Handset(CARD, 0, start_balance=1000, start_counter=0, balance=700, counter=1),
                      Handset(CARD + 1, 0, start_balance=500, start_counter=0, balance=500, counter=0),
                      # a clone made at counter 2, after which both forks wrote: an alarm is due
                      Handset(CLONED, 0, start_balance=900, start_counter=0, balance=900, counter=3),
                      Handset(CLONED, 1, start_balance=900, start_counter=2, balance=900, counter=3)],
            journals={"7-1": (3, 3)},  # a gate journaled three taps the back office does not hold
        )
        async with make_sessionmaker(engine)() as session:
            # a genuine phone, never cloned, taken for a clone
            session.add(AlarmRow(created_at=datetime.now(UTC), kind="counter_reused", severity="critical",
                                 gate_id="7-1", card_id=f"{CARD + 1:016x}", tap_id="7-1:2", detail=""))
            # one top-up written into the wallet at two gates: money out of nothing
            for gate, counter in (("8-1", 0), ("8-2", 1)):
                session.add(_topup_tap(gate, CARD + 1, counter, action_id=9))
            await session.flush()
            report = await check(session, truth)
    finally:
        await engine.dispose()
    assert set(report.invariants) == set(INVARIANTS)
    assert report.invariants["card_balance"] == 1 and report.invariants["card_counter"] == 1
    assert report.invariants["revenue"] == 1 and report.details["revenue_off_fen"] == -300
    assert report.invariants["taps_lost"] == 3 + 1  # three seqs, and the counter step 0 -> 1
    assert report.details["counter_steps_missing"] == [{"card": f"{CARD:016x}", "counter": 0}]
    assert report.invariants["suspense"] == 0 and report.invariants["taps_doubled"] == 0
    assert report.invariants["clone_alarms"] == 1
    assert report.details["clones_without_alarm"] == [f"{CLONED:016x}"]
    assert list(report.details["excluded_from_card_checks"]) == [f"{CLONED:016x}"]  # named, not counted
    assert report.invariants["topups_doubled"] == 1
    assert report.details["topups_doubled"] == [{"action": 9, "taps": ["8-1:1", "8-2:2"]}]
    assert report.invariants["false_clone_alarms"] == 1
    assert report.details["false_clone_alarms"] == [f"{CARD + 1:016x}"]
    assert not report.ok


def _topup_tap(gate: str, card: int, counter: int, action_id: int) -> TapRow:
    now = datetime.now(UTC)
    station, gate_no = (int(part) for part in gate.split("-"))
    return TapRow(tap_id=f"{gate}:{counter + 1}", gate_id=gate, station_id=station, gate_no=gate_no,
                  seq=counter + 1, card_id=f"{card:016x}", time=now, direction=0, mode=0, allowed=True,
                  reason=0, flags=int(Flag.TOPUP_APPLIED), fare=0, balance_before=500, balance_after=1500,
                  counter_before=counter, counter_after=counter + 1, wallet_before=b"", fare_table_version=1,
                  denylist_version=0, min_counter=0, action_id=action_id, topup_applied=1000, latency_us=0,
                  received_at=now)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_short_soak_injects_every_fault_and_every_fen_is_accounted_for(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "faregate.cli", "soak", "--duration", "25", "--fault-rate", "1.5",
         "--riders", "30", "--seed", "7", "--json", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its gates and backend are in its process group: none outlives the test
    )
    try:
        out, err = process.communicate(timeout=280)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    trail = tmp_path / "soak.log"  # the soak's own account of each fault and step
    assert out.strip(), err[-3000:] + (trail.read_text(encoding="utf-8")[-3000:] if trail.exists() else "")
    result = json.loads(out.strip().splitlines()[-1])
    missing = [kind for kind in FAULTS if result["faults"][kind] < 1]
    assert not missing, f"fault kinds never injected: {missing}; {result['faults']}"
    assert result["invariants"] == dict.fromkeys(INVARIANTS, 0), json.dumps(result["details"], indent=1)
    assert result["ok"] and process.returncode == 0, err[-3000:]
    assert result["details"]["taps_stored"] == result["details"]["taps_journaled"] > 10
    assert result["details"]["excluded_from_card_checks"]  # the clone is named, not silently skipped
