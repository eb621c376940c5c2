"""The centre's processes beside the brokers: several ingest workers (`faregate backend --no-api
--no-processor --ingest-from ...`) sharing one stream, started one after another (the first applies the
migrations), and the station relays (`faregate relay`). Each runs in its own process group, so a test
can kill -9 one mid-stream and stop the rest even when it failed."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from faregate.city.launch import Launched, Worker, spawn

READY_LINE = b"ingest connected"  # IngestWorker logs it once subscribed, or bound to the durable consumer
RELAY_READY_LINE = b"forwarding into"  # a StationRelay logs it once the cluster and the stream answer

T = TypeVar("T")


@dataclass
class IngestWorkers(Launched):
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
        stream = [] if self.nats_urls is None else [  # the cluster's URLs in FAREGATE_INGEST_FROM
            "--ingest-downlink", self.downlink or ",".join(self.mqtt_urls)]
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
        if self.nats_urls is not None:  # with the backend's password: not on the command line
            env["FAREGATE_INGEST_FROM"] = self.nats_urls
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


def share(stations: list[T], processes: int) -> list[list[T]]:
    """The stations each relay process serves: `processes` of them at most one a station, station i
    to process i % count (the cluster's relay accounts are written from the same shares)."""
    count = max(1, min(processes, len(stations)))
    return [stations[index::count] for index in range(count)]


@dataclass
class StationRelays(Launched):
    """`faregate relay` processes linking the listed station servers to the cluster, the stations shared
    round the `processes` (a deployment runs one beside each station; the bench saves processes)."""

    directory: Path
    station_urls: list[str]
    nats_urls: str | list[str]  # the cluster's URLs; or one for each process (its own account)
    prefix: str
    processes: int = 1
    running: list[Worker] = field(default_factory=list)

    @property
    def process(self) -> Worker | None:
        """The first relay process (tests kill it)."""
        return self.running[0] if self.running else None

    def start(self, timeout: float = 60.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.running = []
        for index, urls in enumerate(share(self.station_urls, self.processes)):
            nats_urls = self.nats_urls if isinstance(self.nats_urls, str) else self.nats_urls[index]
            command = [sys.executable, "-m", "faregate.cli", "relay", "--prefix", self.prefix,
                       "--log-level", "info"]
            # the passwords in the environment, not on a command line every local user can read
            env = dict(os.environ, FAREGATE_RELAY_NATS=nats_urls, FAREGATE_RELAY_STATIONS=",".join(urls))
            self.running.append(spawn(f"station relays {index + 1}", command, env,
                                      self.directory / f"relays-{index + 1}.log", RELAY_READY_LINE,
                                      count=len(urls), timeout=timeout))

    def stop(self) -> None:
        for worker in self.running:
            worker.terminate()
        for worker in self.running:
            worker.wait_stopped()
