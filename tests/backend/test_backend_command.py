"""`faregate backend` as a person runs it: a taken port is one line before anything claims to run, the
log has no library noise, and Ctrl-C or SIGTERM ends it without a traceback, even with no broker."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from backend.broker import free_port
from tests.backend.conftest import wait_healthy


def backend_command(tmp_path: Path, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "faregate.cli", "backend", "--port", str(port),
            "--database", f"sqlite+aiosqlite:///{tmp_path / 'backend.db'}", *extra]


def start_backend(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    """A backend on a free port, healthy. free_port() only finds a port free a moment ago: when another
    process takes it first, the backend says so (exit 3) and a new port is tried."""
    for _attempt in range(3):
        port = free_port()
        process = subprocess.Popen(backend_command(tmp_path, port, *extra),
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            wait_healthy(f"http://127.0.0.1:{port}", process)
            return process, port
        except AssertionError:
            if process.poll() != 3:
                process.kill()
                output, _ = process.communicate(timeout=30)
                raise AssertionError(f"backend did not start: {output.decode()[-2000:]}") from None
            process.communicate(timeout=30)
    raise AssertionError("three free ports were taken before the backend could listen")


def test_a_taken_port_is_one_line_before_anything_runs(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        done = subprocess.run(backend_command(tmp_path, port, "--no-ingest", "--no-processor"),
                              capture_output=True, text=True, timeout=60)
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 3
    assert output.count("\n") == 0, output  # one line
    assert f"cannot listen for the API on 127.0.0.1:{port}" in output and "--port" in output
    assert "backend running (" not in output and "Traceback" not in output


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_stops_on_a_signal_without_a_traceback_while_the_broker_is_unreachable(
    tmp_path: Path, how: signal.Signals
) -> None:
    nobody = free_port()  # nothing listens there: the broker is down
    process, _port = start_backend(tmp_path, "--mqtt", f"mqtt://127.0.0.1:{nobody}")
    process.send_signal(how)
    output, _ = process.communicate(timeout=30)
    console = output.decode()
    assert process.returncode == 0, console
    assert "Traceback" not in console and "CancelledError" not in console
    assert "alembic" not in console  # the migrations run, quietly
    assert "backend running" in console


def test_embedded_broker_start_and_stop_are_quiet(tmp_path: Path) -> None:
    process, _port = start_backend(tmp_path, "--embedded-broker", str(free_port()))
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=30)
    console = output.decode()
    assert process.returncode == 0, console
    assert "Traceback" not in console and "alembic" not in console
    assert len(console.splitlines()) <= 8, console  # what it says is what a person needs
