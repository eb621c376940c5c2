"""Several ingest workers as real processes (`faregate backend --no-api --no-processor --ingest-from ...`)
sharing one stream: started one after another (the first applies the migrations), each its own process
group, so a test can kill -9 one mid-stream and stop the rest even when it failed."""

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


@dataclass
class Worker:
    name: str
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


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
    mqtt_version: str = "3.1.1"
    group: str = "faregate"
    workers: list[Worker] = field(default_factory=list)

    def command(self) -> list[str]:
        stream = [] if self.nats_urls is None else [
            "--ingest-from", self.nats_urls, "--ingest-downlink", ",".join(self.mqtt_urls)]
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
        with open(log, "wb") as out:
            process = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True)
        worker = Worker(name, log, process)
        self.workers.append(worker)
        deadline = time.monotonic() + timeout
        while READY_LINE not in log.read_bytes():
            if not worker.alive:
                raise RuntimeError(f"ingest worker {name} exited:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"ingest worker {name} not pulling within {timeout} s")
            time.sleep(0.1)
        return worker

    def kill(self, worker: Worker) -> None:
        """kill -9 the worker's process group: nothing flushed, nothing acknowledged on the way out."""
        if worker.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.process.pid, signal.SIGKILL)
        worker.process.wait(10)

    def stop(self) -> None:
        for worker in self.workers:
            if worker.alive:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.process.pid, signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill(worker)

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
