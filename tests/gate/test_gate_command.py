"""`faregate gate` as a person runs it: commissioned offline from a compiled fare table file, it prints
each tap it decides and stops on Ctrl-C without a traceback."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

from fare_core import artefact, compiler, rules
from firmware_sim.config import BarrierConfig, DeviceConfig
from firmware_sim.population import Phone, Population
from firmware_sim.sim import Sim

EXAMPLES = Path(__file__).resolve().parents[2] / "fare_core" / "examples"
DEVICE = DeviceConfig(barrier=BarrierConfig(travel_ms=30, passage_ms=60))
RIDER = 0x7A00_0000_0000_0001


def compiled_table(tmp_path: Path, version: int) -> Path:
    path = tmp_path / f"tiny-v{version}.fgt"
    table = compiler.compile_rules(rules.load_rules(EXAMPLES / "tiny.toml"), version=version)
    path.write_bytes(artefact.pack(table))
    return path


def gate_toml(tmp_path: Path) -> Path:
    """A gate with no broker at all: it decides and journals offline."""
    toml = tmp_path / "gate.toml"
    toml.write_text(f'station_id = 1\ngate_no = 1\ndirection = "entry"\ndata_dir = "{tmp_path / "gate"}"\n'
                    f'sam_key_hex = "{DEVICE.wallets.master_key}"\nmetrics_port = 0\n', encoding="utf-8")
    return toml


def gate_command(toml: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "faregate.cli", "gate", "--config", str(toml), *extra]


async def test_gate_commissioned_from_a_file_prints_each_tap_and_stops_cleanly(tmp_path: Path) -> None:
    toml = gate_toml(tmp_path)
    with Sim(DEVICE, Population([Phone(card_id=RIDER, balance=5000)]), gates=1) as sim:
        command = gate_command(toml, "--serial", sim.url(0), "--fare-table", str(compiled_table(tmp_path, 4)))
        seen = len(sim.gate(0).records("rx"))
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            # up once it has restored the barrier, display and field (3 requests)
            await asyncio.to_thread(sim.wait_for, lambda: len(sim.gate(0).records("rx")) >= seen + 3, 30)
            presented = sim.present(RIDER, 0, patience_s=3.0)
            await asyncio.to_thread(sim.wait, presented, 10)
            assert presented.passed_at is not None
        finally:
            proc.send_signal(signal.SIGINT)
            output, _ = await asyncio.to_thread(proc.communicate, timeout=20)
    console = output.decode()
    assert proc.returncode == 0, console
    assert "fare table version 4" in console and "installed" in console
    assert f"tap {RIDER:016x}: OPEN OK" in console
    assert "Traceback" not in console and "no fare table" not in console


def test_a_file_that_is_not_a_fare_table_is_refused_with_what_to_do(tmp_path: Path) -> None:
    toml = gate_toml(tmp_path)
    rules_file = EXAMPLES / "tiny.toml"  # the source, not the compiled artefact: a common slip
    done = subprocess.run(gate_command(toml, "--serial", "/dev/null", "--fare-table", str(rules_file)),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "is not a compiled fare table" in done.stderr and "faregate fares compile" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_older_table_never_replaces_a_newer_one_the_gate_holds(tmp_path: Path) -> None:
    toml = gate_toml(tmp_path)
    held = tmp_path / "gate" / "faretable.fgt"
    held.parent.mkdir()
    newer = compiled_table(tmp_path, 9).read_bytes()  # a compile stamps its time: keep these bytes
    held.write_bytes(newer)
    older = compiled_table(tmp_path, 4)
    done = subprocess.run(gate_command(toml, "--serial", "/dev/null", "--fare-table", str(older)),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "holds version 9" in done.stderr
    assert held.read_bytes() == newer


def test_mqtt_option_logs_in_with_the_urls_user_and_is_checked_like_the_file() -> None:
    from gate.config import ConfigError, MqttConfig
    from gate.main import with_broker_url

    configured = MqttConfig(url="mqtt://127.0.0.1:1883", username="from-file", password="p")
    login = with_broker_url(configured, "mqtt://109-1:secret@127.0.0.1:1884")
    assert (login.username, login.password, login.host_port) == ("109-1", "secret", ("127.0.0.1", 1884))
    kept = with_broker_url(configured, "mqtt://127.0.0.1:1884")
    assert (kept.username, kept.password) == ("from-file", "p")
    try:
        with_broker_url(configured, "http://127.0.0.1:1884")
    except ConfigError as error:
        assert "mqtt://[user:password@]host:port" in str(error)
    else:
        raise AssertionError("a URL that is not mqtt:// was taken")
