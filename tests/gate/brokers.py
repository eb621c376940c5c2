"""Brokers a gate test can stop and start: the embedded amqtt, and a private Mosquitto process on a
free 127.0.0.1 port (the machine's shared Mosquitto must never be stopped by a test), open or with the
shipped configuration (accounts, ACL, persistence, queue limits)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Protocol

import pytest

from backend.broker import embedded_broker, free_port
from backend.deploy.accounts import BrokerAccounts
from backend.deploy.mosquitto_config import write_config

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
        # open: these tests are about MQTT behaviour; tests/backend/test_broker_auth.py attacks the login
        await self._stack.enter_async_context(embedded_broker(self.port, allow_anonymous=True))

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


class ShippedMosquitto(PrivateMosquitto):
    """A private Mosquitto on the shipped mosquitto.conf (backend/deploy): login required, the per-gate
    ACL, persistence on (so a restart keeps retained messages and the ingest's session), its queue
    limits. `url` logs in as the backend account, which may use any prefix here ('+' in the ACL)."""

    name = "mosquitto-shipped"

    def __init__(self, gates: list[str] | None = None) -> None:
        super().__init__()
        self.accounts = BrokerAccounts.generate(gates or [])
        write_config(self._dir, "shipped", self.accounts.gates, self.accounts.backend_user,
                     self.accounts.backend_password, dict(self.accounts.passwords), port=self.port,
                     run_as=getpass.getuser(), acl_prefix="+")
        self._conf = self._dir / "mosquitto.conf"
        self.url = self.url_for(self.accounts.backend_user)

    def start_blocking(self) -> None:
        """start() for a synchronous (session) fixture, which may run while an event loop does."""
        self._proc = subprocess.Popen([MOSQUITTO, "-c", str(self._conf)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not port_open(self.port):
            if time.monotonic() > deadline or self._proc.poll() is not None:
                raise RuntimeError("shipped mosquitto did not start")
            time.sleep(0.05)

    def stop_blocking(self) -> None:
        if self._proc is not None:
            proc, self._proc = self._proc, None
            proc.terminate()
            proc.wait(10)

    def url_for(self, user: str) -> str:
        return f"mqtt://{user}:{self.accounts.passwords[user]}@127.0.0.1:{self.port}"
