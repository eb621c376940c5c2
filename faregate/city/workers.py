"""The centre's processes beside the brokers: several ingest workers (`faregate backend --no-api
--no-processor --ingest-from ...`) sharing one stream, started one after another (the first applies the
migrations), and the station relays (`faregate relay`). Each runs in its own process group, so a test
can kill -9 one mid-stream and stop the rest even when it failed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

READY_LINE = b"ingest connected"  # IngestWorker logs it once subscribed, or bound to the durable consumer
RELAY_READY_LINE = b"forwarding into"  # a StationRelay logs it once the cluster and the stream answer


@dataclass
class Worker:
    name: str
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """kill -9 the process group: nothing flushed, nothing acknowledged on the way out."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def terminate(self) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)

    def wait_stopped(self, timeout: float = 15.0) -> None:
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


def spawn(name: str, command: list[str], env: dict[str, str], log: Path, ready: bytes, *, count: int = 1,
          timeout: float = 60.0) -> Worker:
    """Start `command` in a process group of its own and wait until its log holds `ready` `count` times."""
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    worker = Worker(name, log, process)
    deadline = time.monotonic() + timeout
    while log.read_bytes().count(ready) < count:
        if not worker.alive:
            raise RuntimeError(f"{name} exited:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            worker.kill()
            raise TimeoutError(f"{name} not ready within {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    return worker


@dataclass
class IngestWorkers:
    """`count` ingest worker processes on `database_url` (schema optional) pulling from `nats_urls`, or
    without them subscribed to `mqtt_urls[0]` (MQTT `mqtt_version`, shared subscription group `group`)."""

    directory: Path
    nats_urls: str | None
    mqtt_urls: list[str]
    database_url: str
    prefix: str
    count: int = 2
    schema: str | None = None
    ack_wait_s: float | None = None
    downlink: str | None = None  # --ingest-downlink: "nats", or default the MQTT URLs
    mqtt_version: str = "3.1.1"
    group: str = "faregate"
    workers: list[Worker] = field(default_factory=list)

    def command(self) -> list[str]:
        stream = [] if self.nats_urls is None else [
            "--ingest-from", self.nats_urls, "--ingest-downlink", self.downlink or ",".join(self.mqtt_urls)]
        if self.nats_urls is not None and self.ack_wait_s is not None:
            stream += ["--ingest-ack-wait", str(self.ack_wait_s)]
        return [
            sys.executable, "-m", "backend.cli", "--no-api", "--no-processor", *stream,
            "--database", self.database_url, "--mqtt", self.mqtt_urls[0], "--mqtt-version", self.mqtt_version,
            "--prefix", self.prefix, "--log-level", "info",
        ]

    def start(self, timeout: float = 60.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for number in range(1, self.count + 1):
            self.start_one(f"w{number}", timeout)

    def start_one(self, name: str, timeout: float = 60.0) -> Worker:
        env = dict(os.environ)
        env.update(
            FAREGATE_ENVIRONMENT="development",
            FAREGATE_INGEST_CLIENT_ID=f"{self.prefix}-{name}",
            FAREGATE_INGEST_BATCH_WAIT_MS="5",
            FAREGATE_INGEST_GROUP=self.group,
        )
        if self.schema:
            env["FAREGATE_DATABASE_SCHEMA"] = self.schema
        log = self.directory / f"{name}.log"
        worker = spawn(f"ingest worker {name}", self.command(), env, log, READY_LINE, timeout=timeout)
        self.workers.append(worker)
        return worker

    def kill(self, worker: Worker) -> None:
        worker.kill()

    def stop(self) -> None:
        for worker in self.workers:
            worker.terminate()
        for worker in self.workers:
            worker.wait_stopped()

    def __enter__(self) -> IngestWorkers:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()


@dataclass
class StationRelays:
    """One `faregate relay` process forwarding every listed station server's uplink into the stream
    (a deployment runs one beside each station; the bench saves processes)."""

    directory: Path
    station_urls: list[str]
    nats_urls: str
    prefix: str
    process: Worker | None = None

    def start(self, timeout: float = 60.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "faregate.cli", "relay", "--nats", self.nats_urls,
                   "--prefix", self.prefix, "--log-level", "info"]
        for url in self.station_urls:
            command += ["--station", url]
        self.process = spawn("station relays", command, dict(os.environ), self.directory / "relays.log",
                             RELAY_READY_LINE, count=len(self.station_urls), timeout=timeout)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait_stopped()

    def __enter__(self) -> StationRelays:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()
