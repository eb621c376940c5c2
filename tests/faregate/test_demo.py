"""`faregate demo` as a newcomer runs it: a real process, embedded broker, SQLite, simulated gates."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest


@pytest.mark.slow
def test_demo_runs_a_station_and_loses_nothing(tmp_path: object) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "faregate.cli", "demo", "--duration", "8", "--riders", "40", "--rate", "4",
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
    # air recharges went through the payment flow: intent, then the provider's signed confirmation
    assert summary["air_recharges"] >= 1
    assert summary["air_recharged_fen"] >= 2000 * summary["air_recharges"]


@pytest.mark.slow
def test_ctrl_c_stops_the_demo_cleanly_with_a_summary(tmp_path: object) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "faregate.cli", "demo", "--duration", "600", "--riders", "20",
         "--stations", "2", "--gates", "1", "--json", "--port", "0", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # wait for the first progress line: traffic is running
            if line.startswith("["):
                break
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["lost"] == 0 and summary["journaled"] == summary["taps"]
