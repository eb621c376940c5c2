"""The central level for real: a 3-node nats-server cluster (JetStream R3 + MQTT gateway), simulated gates
publishing QoS 1 to every node, ingest workers as processes pulling one durable consumer into PostgreSQL.
kill -9 a node (the stream's leader) mid-stream: every tap stored exactly once."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from faregate.city.cluster import FailoverUplink, NatsCluster, wait_committed
from faregate.city.workers import IngestWorkers
from faregate.simgate import SimGate
from protocol.mqtt import Topics
from tests.city.citytools import PG_URL, Feeder, run_gates, stored, stream_leader


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
