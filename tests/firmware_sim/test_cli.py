"""`faregate sim` as a real process: prints its ports, serves them, stops cleanly on a signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from firmware_sim.client import SerialClient
from protocol.serial import GetStatus, Heartbeat, HeartbeatReply, Status

ROOT = Path(__file__).resolve().parents[2]


def _start(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "faregate.cli", "sim", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def _stop(process: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[int, str, str]:
    process.send_signal(sig)
    out, err = process.communicate(timeout=15)
    return process.returncode, out, err


def test_pty_with_link_serves_and_stops_on_sigterm(processes: list[subprocess.Popen[str]],
                                                   tmp_path: Path) -> None:
    link = tmp_path / "gate{gate}"
    process = _start("--link", str(link), "--gates", "2", "--phones", "20", "--baud", "57600")
    processes.append(process)
    assert process.stdout is not None
    lines = [process.stdout.readline(), process.stdout.readline()]
    assert lines[0].startswith(f"gate 0: {tmp_path / 'gate0'} -> /dev/pts/")
    assert lines[1].startswith(f"gate 1: {tmp_path / 'gate1'} -> /dev/pts/")
    for gate in (0, 1):
        with serial.serial_for_url(str(tmp_path / f"gate{gate}"), baudrate=57600, timeout=0.05) as port:
            client = SerialClient(port, baud=57600)
            assert isinstance(client.request(Heartbeat()), HeartbeatReply)
    code, out, _ = _stop(process)
    assert code == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["gates"]["0"]["rx_frames"] == 2  # the client's OpenSession, then its Heartbeat
    assert not (tmp_path / "gate0").exists()  # the link goes with the port


def test_tcp_and_sigint(processes: list[subprocess.Popen[str]]) -> None:
    process = _start("--tcp", "0", "--phones", "5")
    processes.append(process)
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("gate 0: socket://127.0.0.1:")
    url = line.split(": ", 1)[1].strip()
    with serial.serial_for_url(url, timeout=0.05) as port:
        assert isinstance(SerialClient(port).request(GetStatus()), Status)
    code, _, _ = _stop(process, signal.SIGINT)
    assert code == 0


def test_scenario_runs_for_its_duration(processes: list[subprocess.Popen[str]], tmp_path: Path) -> None:
    scenario = tmp_path / "rush.toml"
    scenario.write_text("seed = 3\nduration_s = 1.0\narrivals_per_min = 120\n", encoding="utf-8")
    population = tmp_path / "phones.csv"
    process = _start("--scenario", str(scenario), "--phones", "30", "--save-population", str(population))
    processes.append(process)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert sum(summary["planned_arrivals"].values()) >= 1
    assert len(population.read_text(encoding="utf-8").splitlines()) == 31


@pytest.mark.parametrize(("args", "message"), [
    (["--config", "/nonexistent/device.toml"], "cannot read"),
    (["--population", "/nonexistent/phones.csv"], "cannot read"),
    (["--gates", "0"], "--gates"),
    (["--baud", "0"], "--baud"),
])
def test_bad_arguments_exit_2_with_a_message(processes: list[subprocess.Popen[str]], args: list[str],
                                             message: str) -> None:
    process = _start(*args)
    processes.append(process)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 2
    assert message in err


def test_bad_config_key_is_reported(processes: list[subprocess.Popen[str]], tmp_path: Path) -> None:
    config = tmp_path / "device.toml"
    config.write_text("[reader]\nread_msec = 20\n", encoding="utf-8")
    process = _start("--config", str(config))
    processes.append(process)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 2 and "read_msec" in err
