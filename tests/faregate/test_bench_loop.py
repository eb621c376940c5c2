"""`faregate bench loop` end to end on a short run, as a gate engineer runs it: one JSON object with
the issue's fields, every tap journaled and charged once, and never faster than the line allows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fare_core import IMPLEMENTATION
from gate.tuning import PM_QOS_CPU_LATENCY

REQUIRED = ("taps", "tap_to_open_ms_p50", "tap_to_open_ms_p99", "tap_to_open_ms_max", "wire_floor_ms",
            "host_overhead_ms_p99", "lost")


def bench_loop(*options: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-m", "faregate.cli", "bench", "loop", "--json", *options],
                          capture_output=True, text=True, timeout=240, check=True)
    result: dict[str, object] = json.loads(done.stdout)
    return result


def assert_honest_and_complete(result: dict[str, object], taps: int) -> None:
    assert all(key in result for key in REQUIRED)
    assert (result["taps"], result["opened"], result["journaled"], result["charged"], result["lost"]) == (
        taps, taps, taps, taps, 0)
    floor = float(result["wire_floor_ms"]) + float(result["device_rf_ms"])  # type: ignore[arg-type]
    assert float(result["tap_to_open_ms_p50"]) >= floor  # type: ignore[arg-type]
    assert 0 <= float(result["host_overhead_ms_p50"]) <= float(result["host_overhead_ms_p99"])  # type: ignore[arg-type]
    assert float(result["tap_to_open_ms_p99"]) <= float(result["tap_to_open_ms_max"])  # type: ignore[arg-type]


def test_bench_loop_reports_every_tap_beside_its_baseline(tmp_path: Path) -> None:
    plot = tmp_path / "loop.svg"
    tuned = []  # root, as in CI: the tuned run a gate engineer makes
    if os.geteuid() == 0:
        tuned = ["--realtime", "--cpu-latency"] if os.path.exists(PM_QOS_CPU_LATENCY) else ["--realtime"]
    result = bench_loop("--taps", "6", "--plot", str(plot), *tuned)
    assert_honest_and_complete(result, 6)
    assert result["core"] == IMPLEMENTATION  # "python" when the CI's second pass forces the twin
    baseline = result["baseline_plain_loop"]
    assert isinstance(baseline, dict) and float(baseline["host_overhead_ms_p99"]) >= 0
    assert result["realtime_priority"] == (50 if tuned else None)
    assert result["cpu_latency_us"] == (0 if "--cpu-latency" in tuned else None)
    if "--cpu-latency" in tuned:
        assert result["cpu_latency_limit_in_force_us"] == 0
    assert plot.read_text(encoding="utf-8").startswith("<svg")


def test_bench_loop_on_the_twin_without_baseline() -> None:
    result = bench_loop("--taps", "4", "--twin", "--no-baseline")
    assert_honest_and_complete(result, 4)
    assert result["core"] == "python"
    assert "baseline_plain_loop" not in result


@pytest.mark.parametrize("options", [["--taps", "0"], ["--baud", "300"], ["--realtime", "0"]])
def test_bench_loop_refuses_bad_options(options: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "faregate.cli", "bench", "loop", *options],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and done.stderr.strip()
