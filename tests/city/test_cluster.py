"""The central level for real: a 3-node nats-server cluster (JetStream R3 + MQTT gateway), simulated gates
publishing QoS 1 to every node, ingest workers as processes pulling one durable consumer into PostgreSQL.
kill -9 a node (the stream's leader) mid-stream: every tap stored exactly once."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import nats
import pytest

from backend.ingest.stream import STREAM
from faregate.city.cluster import FailoverUplink, NatsCluster
from faregate.city.workers import IngestWorkers
from faregate.simgate import SimGate
from protocol.mqtt import Topics
from tests.backend.conftest import require_service

PG = "postgresql://postgres@127.0.0.1:5432/test"
PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def require_nats() -> None:
    if shutil.which("nats-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nats-server is not installed and CI=true")
        pytest.skip("nats-server is not installed")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    require_nats()
    with NatsCluster(tmp_path / "nats") as running:
        yield running


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    require_service("PostgreSQL", 5432)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(PG)
    try:
        await connection.execute(f"CREATE SCHEMA {schema}")
        yield schema
    finally:
        await connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await connection.close()


class Feeder:
    """Journals taps on every gate at a steady pace from its own thread, so a kill lands mid-stream."""

    def __init__(self, gates: list[SimGate], per_gate: int, seconds: float) -> None:
        self.gates, self.per_gate, self.seconds = gates, per_gate, seconds
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        steps = 20
        for _ in range(steps):
            for gate in self.gates:
                gate.synthetic_taps(self.per_gate // steps)
            time.sleep(self.seconds / steps)

    def __enter__(self) -> Feeder:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.thread.join(30)


async def stream_leader(cluster: NatsCluster) -> str:
    connection = await nats.connect(cluster.urls)
    try:
        for _ in range(100):
            try:
                info = await connection.jetstream().stream_info(STREAM)
                if info.cluster is not None and info.cluster.leader:
                    return str(info.cluster.leader)
            except Exception:
                pass
            await asyncio.sleep(0.1)
        raise AssertionError("the uplink stream has no leader")
    finally:
        await connection.close()


async def stored(schema: str) -> tuple[int, int, dict[str, list[int]]]:
    connection = await asyncpg.connect(PG, server_settings={"search_path": schema})
    try:
        total = await connection.fetchval("SELECT count(*) FROM taps")
        distinct = await connection.fetchval("SELECT count(DISTINCT tap_id) FROM taps")
        rows = await connection.fetch("SELECT gate_id, seq FROM taps ORDER BY gate_id, seq")
    finally:
        await connection.close()
    seqs: dict[str, list[int]] = {}
    for row in rows:
        seqs.setdefault(row["gate_id"], []).append(row["seq"])
    return total, distinct, seqs


def run_gates(uplinks: list[FailoverUplink], timeout: float) -> None:
    for uplink in uplinks:
        uplink.start()
    for uplink in uplinks:
        uplink.wait_ready(15)


def wait_committed(uplinks: list[FailoverUplink], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(uplink.all_committed() for uplink in uplinks):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
@pytest.mark.postgres
async def test_a_node_killed_mid_stream_loses_and_doubles_nothing(
    cluster: NatsCluster, pg_schema: str, tmp_path: Path
) -> None:
    prefix = f"city{uuid.uuid4().hex[:8]}"
    topics = Topics(prefix)
    gates = [SimGate(station, gate_no) for station in range(1, 7) for gate_no in range(1, 6)]  # 30 gates
    per_gate = 200
    # one uplink per node, each able to fail over to the next node
    uplinks = [
        FailoverUplink(cluster.mqtt_urls[n:] + cluster.mqtt_urls[:n], topics, gates[n::3], record=False,
                       stall_s=3.0)
        for n in range(3)
    ]
    workers = IngestWorkers(tmp_path / "workers", cluster.ingest_url, cluster.mqtt_urls, PG_URL, prefix,
                            count=2, schema=pg_schema, ack_wait_s=5.0)
    with workers:
        try:
            run_gates(uplinks, 15)
            leader = await stream_leader(cluster)
            with Feeder(gates, per_gate, seconds=4.0):
                await asyncio.sleep(1.5)
                before, _, _ = await stored(pg_schema)
                victim = next(node for node in cluster.nodes if node.name == leader)
                cluster.kill(victim)  # the stream's leader: a new one must be elected mid-stream
            done = await asyncio.to_thread(wait_committed, uplinks, 60)
        finally:
            for uplink in uplinks:
                uplink.close()
        total, distinct, seqs = await stored(pg_schema)
        assert done, [(w.name, w.log.read_text()[-2000:]) for w in workers.workers]
        assert all(worker.alive for worker in workers.workers)
    expected = per_gate * len(gates)
    assert 0 < before < expected  # the node died mid-stream
    assert (total, distinct) == (expected, expected)  # nothing lost, nothing doubled
    assert seqs == {gate.id: list(range(1, per_gate + 1)) for gate in gates}
    assert not victim.alive and sum(uplink.failovers for uplink in uplinks) >= 1
