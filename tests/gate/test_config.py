"""Gate configuration: the shipped example loads; every bad value is refused with its name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from faregate.cli import main
from gate.config import TEST_SAM_KEY, ConfigError, load_config, parse_config

EXAMPLE = Path(__file__).resolve().parents[2] / "gate" / "examples" / "gate.toml"


def test_shipped_example_loads() -> None:
    config = load_config(EXAMPLE)
    assert (config.gate_id, config.direction) == ("109-1", "entry")
    assert config.mqtt.host_port == ("127.0.0.1", 1883)


@pytest.mark.parametrize(("raw", "named"), [
    ({"gate_no": 1}, "station_id"),
    ({"station_id": 70000, "gate_no": 1}, "station_id"),
    ({"station_id": 1, "gate_no": 1, "direction": "sideways"}, "direction"),
    ({"station_id": 1, "gate_no": 1, "sam_key_hex": "abc"}, "sam_key_hex"),
    ({"station_id": 1, "gate_no": 1, "mqtt": {"url": "http://x"}}, "mqtt.url"),
    ({"station_id": 1, "gate_no": 1, "mqtt": {"window": 0}}, "mqtt.window"),
    ({"station_id": 1, "gate_no": 1, "mqtt": {"batch_max": 501}}, "mqtt.batch_max"),
    ({"station_id": 1, "gate_no": 1, "realtime_priority": 0}, "realtime_priority"),
    ({"station_id": 1, "gate_no": 1, "realtime_priority": 100}, "realtime_priority"),
    ({"station_id": 1, "gate_no": 1, "cpu_latency_us": -1}, "cpu_latency_us"),
    ({"station_id": 1, "gate_no": 1, "cpu_latency_us": 1_000_001}, "cpu_latency_us"),
    ({"station_id": 1, "gate_no": 1, "colour": "red"}, "colour"),
    ({"station_id": 1, "gate_no": 1, "environment": "production", "sam_key_hex": TEST_SAM_KEY},
     "sam_key_hex"),
])
def test_bad_values_are_named(raw: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        parse_config(raw)


def test_cli_refuses_a_broken_file(tmp_path: Path) -> None:
    bad = tmp_path / "gate.toml"
    bad.write_text("station_id = 'one'\ngate_no = 1\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="station_id"):
        main(["gate", "--config", str(bad), "--serial", "/dev/null"])
    unreadable = tmp_path / "nope.toml"
    with pytest.raises(SystemExit, match=r"nope\.toml"):
        main(["gate", "--config", str(unreadable)])


def in_child(*lines: str) -> tuple[list[str], str]:
    """Run the lines in a fresh interpreter with INFO logging: (its printed words, its log)."""
    script = "\n".join(("import logging, os", "logging.basicConfig(level='INFO')", *lines))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          check=True)
    return done.stdout.split(), done.stderr


def test_realtime_priority_is_applied_or_the_gate_says_why(tmp_path: Path) -> None:
    """In a child process (the test runner itself must not turn real-time). As root, as in CI, the
    policy is SCHED_FIFO at the priority asked; without the right, the gate runs normally and warns."""
    (granted, fifo, priority), log = in_child(
        "from gate.tuning import use_realtime",
        "granted = use_realtime(7)",
        "print(granted, os.sched_getscheduler(0) == os.SCHED_FIFO, os.sched_getparam(0).sched_priority)")
    if os.geteuid() == 0:
        assert (granted, fifo, priority) == ("True", "True", "7")
        assert "SCHED_FIFO, priority 7" in log
    else:
        assert (granted, fifo) == ("False", "False")
        assert "not granted" in log


def test_cpu_latency_limit_is_held_while_open_or_the_gate_says_why(tmp_path: Path) -> None:
    """In a child process, so the limit cannot outlive the check. As root, as in CI, the limit in
    force drops to the one asked while it is held and returns to what it was when released; without
    the right, the gate runs and warns."""
    (granted, before, during, after), log = in_child(
        "from gate.tuning import current_cpu_latency_limit, limit_cpu_latency",
        "before = current_cpu_latency_limit()",
        "limit = limit_cpu_latency(3)",
        "during = current_cpu_latency_limit()",
        "if limit is not None:",
        "    limit.release()",
        "print(limit is not None, before, during, current_cpu_latency_limit())")
    if os.geteuid() == 0 and os.path.exists("/dev/cpu_dma_latency"):
        assert granted == "True"
        assert int(during) == min(3, int(before))  # the lowest request held is the one in force
        assert after == before
        assert "3 µs wake-up latency" in log
    else:
        assert granted == "False"
        assert "not granted" in log


def test_cpu_latency_limit_refuses_a_bad_value() -> None:
    from gate.tuning import CpuLatencyLimit

    with pytest.raises(ValueError, match="cpu latency"):
        CpuLatencyLimit(-5)
