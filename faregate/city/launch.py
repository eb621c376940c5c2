"""Starting and ending the city's child processes (brokers, ingest workers, relays) in one way.

Each child runs in a process group (and session) of its own with its output in a log file, so a kill -9
reaches it and whatever it forked, never the test or bench that started it, and `stop()` ends every
child even when a test failed. A signal goes to the group only while the leader is not yet reaped:
until then its id cannot belong to anyone else's group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self


class Launched(ABC):
    """A set of processes used as a context manager: `start()` on entry (and `stop()` if the start
    fails half way: some children may be running), `stop()` on exit."""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()


def open_group(command: list[str], log_path: Path, env: dict[str, str] | None = None, *,
               append: bool = True) -> subprocess.Popen[bytes]:
    """Start `command` in a new session (its own process group), stdout and stderr into `log_path`
    (appended to, or started afresh with `append=False`)."""
    with open(log_path, "ab" if append else "wb") as log:  # the child holds its own copy
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def _signal_group(process: subprocess.Popen[bytes], signum: signal.Signals) -> None:
    if process.returncode is None:  # not reaped: the group id is still this child's
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)


def terminate_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the group, without waiting (to stop several children at once, then wait for each)."""
    _signal_group(process, signal.SIGTERM)


def kill_group(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """kill -9 the group (no shutdown, no flush: a power cut) and reap the leader."""
    _signal_group(process, signal.SIGKILL)
    process.wait(timeout)


def wait_group(process: subprocess.Popen[bytes], timeout: float, kill_wait: float = 10.0) -> None:
    """Wait `timeout` s for the leader to exit; kill -9 the group if it has not."""
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_group(process, kill_wait)


def stop_group(process: subprocess.Popen[bytes], timeout: float, kill_wait: float = 10.0) -> None:
    """SIGTERM (the child saves what it must and exits), kill -9 after `timeout` s."""
    terminate_group(process)
    wait_group(process, timeout, kill_wait)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_port(process: subprocess.Popen[bytes], port: int, timeout: float) -> bool:
    """Until `process` answers on `port`: False if it exited or `timeout` s passed first."""
    deadline = time.monotonic() + timeout
    while not port_open(port):
        if process.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def rss_bytes(pid: int) -> int:
    """Resident memory of one process (VmRSS in /proc, as `ps` reads it); 0 once it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def session_rss_bytes(session: int) -> int:
    """Resident memory of every process in a session (a child of `open_group` and all it started)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()  # after "pid (comm)"
            if int(fields[3]) == session:  # state, ppid, pgrp, session
                total += rss_bytes(int(entry.name))
    return total


@dataclass
class Worker:
    """A child started by `spawn`: its name, its log, its process (a group of its own)."""

    name: str
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """kill -9 the process group: nothing flushed, nothing acknowledged on the way out."""
        kill_group(self.process)

    def terminate(self) -> None:
        terminate_group(self.process)

    def wait_stopped(self, timeout: float = 15.0) -> None:
        wait_group(self.process, timeout)


def spawn(name: str, command: list[str], env: dict[str, str], log: Path, ready: bytes, *, count: int = 1,
          timeout: float = 60.0) -> Worker:
    """Start `command` in a process group of its own and wait until its log holds `ready` `count` times
    (the log starts afresh, so a restart counts only its own lines)."""
    worker = Worker(name, log, open_group(command, log, env, append=False))
    deadline = time.monotonic() + timeout
    while log.read_bytes().count(ready) < count:
        if not worker.alive:
            raise RuntimeError(f"{name} exited:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            worker.kill()
            raise TimeoutError(f"{name} not ready within {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    return worker
