"""`faregate demo` as a newcomer runs it: a real process, embedded broker, SQLite, simulated gates."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_runs_a_station_and_loses_nothing(tmp_path: object) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gate.cli", "demo", "--duration", "8", "--riders", "40", "--rate", "4",
         "--stations", "2", "--gates", "1", "--json", "--port", "0", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=110,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["gates"] == 4
    assert summary["taps"] > 10 and summary["journaled"] == summary["taps"]
    assert summary["lost"] == 0
    assert summary["revenue_fen"] >= 0 and summary["trips"] > 0
    assert summary["gate_outcomes"].get("ok", 0) > 0
