"""Brokers a gate test can stop and start: the embedded amqtt, and a private Mosquitto process on a
free 127.0.0.1 port (the machine's shared Mosquitto must never be stopped by a test)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import socket
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Protocol

import pytest

from backend.broker import embedded_broker, free_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def require(name: str, available: bool) -> None:
    if not available:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not available and CI=true")
        pytest.skip(f"{name} is not available")


class Broker(Protocol):
    name: str
    url: str
    version: str  # what the backend's ingest speaks to it

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class Amqtt:
    name, version = "amqtt", "3.1.1"

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self._stack: contextlib.AsyncExitStack | None = None

    async def start(self) -> None:
        self._stack = contextlib.AsyncExitStack()
        await self._stack.enter_async_context(embedded_broker(self.port))

    async def stop(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()
            # amqtt leaves the server side of closed connections to the garbage collector: collect them
            # here, where they are known to be amqtt's, not in whichever test runs next.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                gc.collect()


class PrivateMosquitto:
    name, version = "mosquitto", "5"

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self._dir = Path(tempfile.mkdtemp(prefix="faregate-mosquitto-"))
        self._conf = self._dir / "mosquitto.conf"
        self._conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                              "max_queued_messages 100000\n", encoding="utf-8")
        self._proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self._proc = subprocess.Popen([MOSQUITTO, "-c", str(self._conf)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        for _ in range(100):
            if port_open(self.port):
                return
            await asyncio.sleep(0.05)
        raise RuntimeError("private mosquitto did not start")

    async def stop(self) -> None:
        if self._proc is not None:
            proc, self._proc = self._proc, None
            proc.terminate()
            await asyncio.to_thread(proc.wait, 10)

    def cleanup(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)
