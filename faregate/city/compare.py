"""The central-broker comparison behind docs/deployment.md ("Central broker"), run for real on loopback:

    python3 -m faregate.city.compare --json [--taps 20000] [--only mosquitto,nats,rabbitmq]

For each engine: simulated gates (MQTT 3.1.1, QoS 1 publishes, one tap a message: live traffic's shape,
each gate's window of taps not yet acknowledged end to end) -> broker(s) -> ingest worker processes ->
PostgreSQL (a schema of its own, dropped at the end). Two runs per engine:

- throughput: every tap journaled before the clock starts; taps/s from the first publish to the last
  tap acknowledged end to end (the backend's Committed), i.e. published -> stored; resident memory of
  every broker process at the end;
- kill: taps fed at a steady pace, one node killed -9 two seconds in (the single Mosquitto is killed and
  started again 3 s later: it has no other node); then the database counted: lost, duplicated, and the
  seconds from the kill until every tap was acknowledged. `gate_republished` counts the tap messages
  the gates had to send again (resend requests, stall replays): what the broker lost or could not
  acknowledge, which the gates' journals made good.

Engines: `mosquitto` (today's single broker, MQTT v5 shared subscription, 1 worker: the baseline),
`nats` (3 nats-server nodes, JetStream R3 stream, 1 and 2 workers on one durable consumer),
`rabbitmq` (3 rabbitmq-server nodes, MQTT plugin, the ingest's persistent session on a quorum queue;
1 worker: RabbitMQ's MQTT has no shared subscriptions, and sharing a quorum queue between workers needs
an AMQP client the backend does not have).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg

from faregate.city.cluster import FailoverUplink, NatsCluster, free_ports, wait_committed
from faregate.city.launch import Launched, kill_group, open_group, rss_bytes, wait_port
from faregate.city.rabbit import RabbitCluster
from faregate.city.workers import IngestWorkers
from faregate.simgate import SimGate
from protocol.mqtt import Topics

PG = "postgresql://postgres@127.0.0.1:5432/test"
PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class Mosquitto(Launched):
    """Today's single broker, our own instance: a free port, its own configuration, no persistence."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_ports(1)[0]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def mqtt_urls(self) -> list[str]:
        return [f"mqtt://127.0.0.1:{self.port}"]

    def start(self, timeout: float = 15.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
                        "max_inflight_messages 0\n")
        log = self.directory / "mosquitto.log"
        self.process = open_group([MOSQUITTO, "-c", str(conf)], log)
        if not wait_port(self.process, self.port, timeout):
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"mosquitto on port {self.port} did not start: {tail}")

    def kill(self) -> None:
        if self.process is not None:
            kill_group(self.process)

    def stop(self) -> None:
        self.kill()

    def rss(self) -> list[int]:
        return [rss_bytes(self.process.pid)] if self.process is not None else []


async def _schema() -> str:
    schema = f"cmp_{uuid.uuid4().hex[:10]}"
    connection = await asyncpg.connect(PG)
    try:
        await connection.execute(f"CREATE SCHEMA {schema}")
    finally:
        await connection.close()
    return schema


async def _drop(schema: str) -> None:
    connection = await asyncpg.connect(PG)
    try:
        await connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await connection.close()


async def _count(schema: str, expected: int) -> dict[str, int]:
    connection = await asyncpg.connect(PG, server_settings={"search_path": schema})
    try:
        total = int(await connection.fetchval("SELECT count(*) FROM taps"))
        distinct = int(await connection.fetchval("SELECT count(DISTINCT tap_id) FROM taps"))
    finally:
        await connection.close()
    return {"stored": distinct, "lost": expected - distinct, "duplicated": total - distinct}


def _gates(count: int) -> list[SimGate]:
    return [SimGate(1 + n // 50, 1 + n % 50, window=200, batch_max=1) for n in range(count)]


def _uplinks(urls: list[str], prefix: str, gates: list[SimGate], downlink_qos: int) -> list[FailoverUplink]:
    return [FailoverUplink(urls[n % len(urls):] + urls[: n % len(urls)], Topics(prefix), gates[n::2],
                           record=False, stall_s=10.0, downlink_qos=downlink_qos) for n in range(2)]


@contextlib.contextmanager
def _engine(kind: str, directory: Path) -> Iterator[Any]:
    if kind == "mosquitto":
        with Mosquitto(directory) as broker:
            yield broker
    elif kind == "nats":
        with NatsCluster(directory) as cluster:
            yield cluster
    else:
        with RabbitCluster(directory) as rabbit:
            yield rabbit


def _workers(kind: str, engine: Any, directory: Path, prefix: str, schema: str, count: int) -> IngestWorkers:
    if kind == "nats":
        return IngestWorkers(directory, engine.ingest_url, engine.mqtt_urls, PG_URL, prefix, count=count,
                             schema=schema, ack_wait_s=5.0)
    if kind == "mosquitto":
        return IngestWorkers(directory, None, engine.mqtt_urls, PG_URL, prefix, count=count, schema=schema,
                             mqtt_version="5", group="faregate")
    return IngestWorkers(directory, None, engine.mqtt_urls[:1], PG_URL, prefix, count=count, schema=schema,
                         mqtt_version="3.1.1", group="")


def _memory(kind: str, engine: Any) -> list[float]:
    if kind == "mosquitto":
        sizes = engine.rss()
    elif kind == "nats":
        sizes = [node.rss_bytes() for node in engine.nodes]
    else:
        sizes = [node.rss_bytes() for node in engine.nodes]
    return [round(size / 1e6, 1) for size in sizes]


def throughput(kind: str, taps: int, workers: int, gates: int = 50) -> dict[str, Any]:
    prefix = f"cmp{uuid.uuid4().hex[:8]}"
    schema = asyncio.run(_schema())
    with tempfile.TemporaryDirectory(prefix=f"fg-{kind}-") as tmp, \
            _engine(kind, Path(tmp) / "broker") as engine:
        try:
            sim = _gates(gates)
            for gate in sim:
                gate.synthetic_taps(taps // gates)
            expected = sum(gate.seq for gate in sim)
            with _workers(kind, engine, Path(tmp) / "workers", prefix, schema, workers):
                uplinks = _uplinks(engine.mqtt_urls, prefix, sim, 0 if kind == "nats" else 1)
                started = time.perf_counter()
                for uplink in uplinks:
                    uplink.start()
                done = wait_committed(uplinks, 300, poll=0.02)
                elapsed = time.perf_counter() - started
                for uplink in uplinks:
                    uplink.close()
                memory = _memory(kind, engine)
            counted = asyncio.run(_count(schema, expected))
        finally:
            asyncio.run(_drop(schema))
    return {"engine": kind, "workers": workers, "taps": expected, "complete": done,
            "taps_per_s": round(expected / elapsed), "seconds": round(elapsed, 2), "broker_rss_mb": memory,
            **counted}


def kill_run(kind: str, taps: int, workers: int, gates: int = 50, feed_s: float = 6.0) -> dict[str, Any]:
    prefix = f"cmp{uuid.uuid4().hex[:8]}"
    schema = asyncio.run(_schema())
    with tempfile.TemporaryDirectory(prefix=f"fg-{kind}-") as tmp, \
            _engine(kind, Path(tmp) / "broker") as engine:
        try:
            sim = _gates(gates)
            per_gate = taps // gates
            with _workers(kind, engine, Path(tmp) / "workers", prefix, schema, workers):
                uplinks = _uplinks(engine.mqtt_urls, prefix, sim, 0 if kind == "nats" else 1)
                for uplink in uplinks:
                    uplink.start()

                def feed() -> None:
                    steps = 30
                    for _ in range(steps):
                        for gate in sim:
                            gate.synthetic_taps(per_gate // steps)
                        time.sleep(feed_s / steps)

                feeder = threading.Thread(target=feed, daemon=True)
                feeder.start()
                time.sleep(2.0)
                killed_at = time.perf_counter()
                victim = _kill(kind, engine)
                feeder.join()
                done = wait_committed(uplinks, 120, poll=0.02)
                recovered = time.perf_counter() - killed_at
                for uplink in uplinks:
                    uplink.close()
                expected = sum(gate.seq for gate in sim)
                sent = sum(uplink.publishes for uplink in uplinks)
            counted = asyncio.run(_count(schema, expected))
        finally:
            asyncio.run(_drop(schema))
    return {"engine": kind, "workers": workers, "killed": victim, "taps": expected, "complete": done,
            "seconds_kill_to_all_acknowledged": round(recovered, 1), "gate_republished": sent - expected,
            **counted}


def _kill(kind: str, engine: Any) -> str:
    if kind == "mosquitto":
        engine.kill()
        time.sleep(3.0)
        engine.start()  # the only node: the gates and the worker wait for it to come back
        return "the single broker (restarted after 3 s)"
    if kind == "nats":
        leader = asyncio.run(_nats_leader(engine))
        node = next(n for n in engine.nodes if n.name == leader)
        engine.kill(node)
        return f"{node.name}: the stream's leader"
    node = engine.nodes[1]
    engine.kill(node)
    return f"{node.name}: a quorum-queue follower (the worker's node holds the leader)"


async def _nats_leader(cluster: NatsCluster) -> str:
    import nats

    from backend.ingest.stream import STREAM

    connection = await nats.connect(cluster.urls)
    try:
        info = await connection.jetstream().stream_info(STREAM)
        assert info.cluster is not None and info.cluster.leader
        return str(info.cluster.leader)
    finally:
        await connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python3 -m faregate.city.compare")
    parser.add_argument("--taps", type=int, default=20_000)
    parser.add_argument("--kill-taps", type=int, default=10_000)
    parser.add_argument("--only", default="mosquitto,nats,rabbitmq")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    for kind in args.only.split(","):
        plans = [1, 2] if kind == "nats" else [1]
        for workers in plans:
            results.append(throughput(kind, args.taps, workers))
            print(json.dumps(results[-1]), flush=True)
        results.append(kill_run(kind, args.kill_taps, plans[-1]))
        print(json.dumps(results[-1]), flush=True)
    if args.json:
        print(json.dumps({"runs": results, "load": os.getloadavg()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
