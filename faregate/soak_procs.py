"""The processes the soak starts, kills and restarts: gates, the backend, the broker.

Each gate, the backend and the broker (the embedded amqtt) run in a process of their own: a SIGKILL
is then a real crash, nothing is flushed, the journal and the database keep only what was
committed, and a restarted broker keeps nothing (as a broker whose disk was lost). Whatever the soak
starts it stops, also on Ctrl-C and on failure: every process here is started through
`ProcessGroup`, whose `aclose` terminates what still runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import sys
from pathlib import Path

import httpx

from backend.config import Settings
from backend.deploy.accounts import BrokerAccounts
from gate.config import GateConfig

ROOT = Path(__file__).resolve().parents[1]
API = "/api/v1"


def service_port() -> int:
    """A free port below the kernel's ephemeral range, for a service the soak restarts. A port in that
    range, polled while its service is down, can be handed to the polling client as its own local port
    (Linux's TCP self-connect), and the restarted service then cannot bind it."""
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(max(1024, low // 2), low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


class ProcessGroup:
    """Every child process of the soak, so none outlives it."""

    def __init__(self) -> None:
        self.processes: set[asyncio.subprocess.Process] = set()

    async def spawn(self, argv: list[str], log: Path, env: dict[str, str] | None = None
                    ) -> asyncio.subprocess.Process:
        with open(log, "ab") as out:  # the child keeps its own descriptor
            process = await asyncio.create_subprocess_exec(
                *argv, cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out)
        self.processes.add(process)
        return process

    @staticmethod
    async def stop(process: asyncio.subprocess.Process, sig: int = signal.SIGTERM, timeout: float = 15.0
                   ) -> None:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
        try:
            async with asyncio.timeout(timeout):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def aclose(self) -> None:
        await asyncio.gather(*(self.stop(p) for p in self.processes), return_exceptions=True)
        self.processes.clear()


class ChildProcess:
    """One process of the soak's: started through its ProcessGroup, killed (SIGKILL, a crash: nothing
    flushed) or stopped (SIGTERM, then SIGKILL after the group's timeout)."""

    def __init__(self, group: ProcessGroup, log: Path) -> None:
        self.group = group
        self.log = log
        self.process: asyncio.subprocess.Process | None = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def kill(self) -> None:
        if self.process is not None:
            await self.group.stop(self.process, signal.SIGKILL)

    async def stop(self) -> None:
        if self.process is not None:
            await self.group.stop(self.process)


class GateProcess(ChildProcess):
    """One gate controller (faregate.soak_gate) on its simulated reader's port."""

    def __init__(self, group: ProcessGroup, config: GateConfig, serial: str, log: Path) -> None:
        super().__init__(group, log)
        self.config = config.model_copy(update={"serial": serial})
        self.path = config.data_dir / "gate-config.json"
        self.clock_offset_s = 0.0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.alive and self.process is not None else None

    async def start(self, clock_offset_s: float | None = None) -> None:
        if clock_offset_s is not None:
            self.clock_offset_s = clock_offset_s
        self.path.write_text(json.dumps(self.config.model_dump(mode="json")), encoding="utf-8")
        self.process = await self.group.spawn(
            [sys.executable, "-m", "faregate.soak_gate", str(self.path),
             "--clock-offset", str(self.clock_offset_s)], self.log)

class BackendProcess(ChildProcess):
    """`faregate backend` (API, ingest, processor) on the soak's database and broker."""

    def __init__(self, group: ProcessGroup, settings: Settings, port: int, log: Path) -> None:
        super().__init__(group, log)
        self.settings = settings
        self.port = port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{API}"

    async def start(self) -> None:
        s = self.settings
        env = {**os.environ, "FAREGATE_INGEST_GROUP": s.ingest_group,
               "FAREGATE_INGEST_CLIENT_ID": s.ingest_client_id,
               "FAREGATE_INGEST_BATCH_WAIT_MS": str(s.ingest_batch_wait_ms),
               "FAREGATE_MQTT_USERNAME": s.mqtt_username or "",
               "FAREGATE_MQTT_PASSWORD": s.mqtt_password or ""}
        self.process = await self.group.spawn(
            [sys.executable, "-m", "backend.cli", "--database", s.database_url, "--mqtt", s.mqtt_url,
             "--mqtt-version", s.mqtt_version, "--prefix", s.mqtt_prefix, "--port", str(self.port),
             "--log-level", "warning"], self.log, env)

    async def wait_ready(self, timeout: float = 60.0) -> str:
        """Log in as the operator once the API answers; returns the bearer token."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with httpx.AsyncClient(base_url=self.base_url, timeout=10) as client:
            while True:
                if self.process is not None and self.process.returncode is not None:
                    raise RuntimeError(f"the backend exited ({self.process.returncode}); see {self.log}")
                with contextlib.suppress(httpx.TransportError):
                    response = await client.post("/login", json={"username": self.settings.admin_username,
                                                                 "password": self.settings.admin_password})
                    if response.status_code == 200:
                        return str(response.json()["access_token"])
                if loop.time() > deadline:
                    raise RuntimeError(f"the backend API did not come up in {timeout} s; see {self.log}")
                await asyncio.sleep(0.2)

class BrokerProcess(ChildProcess):
    """The embedded amqtt broker in a process of its own (faregate.soak_broker) on a fixed port, which
    the soak kills and starts again: a restarted broker keeps no session and no retained message."""

    def __init__(self, group: ProcessGroup, port: int, accounts: BrokerAccounts, prefix: str,
                 data_dir: Path) -> None:
        super().__init__(group, data_dir / "broker.log")
        self.port = port
        self.accounts = accounts
        self.prefix = prefix
        self.credentials = data_dir / "broker-credentials"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 30.0) -> None:
        """Start it and wait until it takes connections."""
        if self.alive:
            return
        self.accounts.write(self.credentials)
        self.process = await self.group.spawn(
            [sys.executable, "-m", "faregate.soak_broker", str(self.port), str(self.credentials), self.prefix,
             "--backend-user", self.accounts.backend_user], self.log)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.process.returncode is not None:
                raise RuntimeError(f"the broker exited ({self.process.returncode}); see {self.log}")
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                return
            if loop.time() > deadline:
                raise RuntimeError(f"the broker did not listen within {timeout} s; see {self.log}")
            await asyncio.sleep(0.05)
