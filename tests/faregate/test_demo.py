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
    # every count is defined once and the totals add up
    assert summary["allowed"] + summary["denied"] == summary["taps"]
    assert sum(summary["allowed_by_reason"].values()) == summary["allowed"] > 0
    assert sum(summary["denied_by_reason"].values()) == summary["denied"]
    assert sum(summary["trips_by_state"].values()) == summary["trips"] > 0
    assert summary["recovered"] <= summary["taps"]
    assert set(summary["not_journaled"]) <= {"wallet_unreadable", "two_phones"}
    assert summary["revenue_fen"] >= 0 and summary["suspense_fen"] >= 0 and summary["undelivered_fen"] >= 0
    # air recharges went through the payment flow: intent, then the provider's signed confirmation
    assert summary["air_recharges"] >= 1
    assert summary["air_recharged_fen"] >= 2000 * summary["air_recharges"]


def test_the_readable_summary_explains_its_terms_and_shows_yuan() -> None:
    from faregate.demo import describe

    summary = {"gates": 4, "journaled": 12, "taps": 12, "lost": 0, "allowed": 10, "denied": 2,
               "allowed_by_reason": {"ok": 10}, "denied_by_reason": {"no_entry": 2}, "recovered": 1,
               "not_journaled": {"wallet_unreadable": 3}, "trips": 5, "trips_by_state": {"complete": 5},
               "revenue_fen": 1234, "suspense_fen": 0, "undelivered_fen": 2000, "air_recharges": 1,
               "air_recharged_fen": 2000}
    text = describe(summary)
    assert "¥12.34" in text and "¥20.00" in text and "1234" not in text
    for term in ("journaled", "stored", "lost", "not journaled", "suspense", "on its way"):
        assert term in text
    assert "must be 0" in text


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
