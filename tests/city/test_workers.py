"""Several ingest workers (processes) share the cluster's stream through one durable consumer; kill -9 one
mid-stream: the others carry on, its unacknowledged messages come back to them after ack_wait, and the
taps table's unique key stores every tap exactly once."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from faregate.city.cluster import FailoverUplink, NatsCluster, wait_committed
from faregate.city.workers import IngestWorkers
from faregate.simgate import SimGate
from protocol.mqtt import Topics
from tests.city.citytools import PG_URL, Feeder, run_gates, stored


@pytest.mark.slow
@pytest.mark.postgres
async def test_a_worker_killed_mid_stream_the_others_store_everything_once(
    cluster: NatsCluster, pg_schema: str, tmp_path: Path
) -> None:
    prefix = f"city{uuid.uuid4().hex[:8]}"
    gates = [SimGate(station, gate_no) for station in range(1, 5) for gate_no in range(1, 6)]  # 20 gates
    per_gate = 300
    uplinks = [FailoverUplink(cluster.mqtt_urls[n:] + cluster.mqtt_urls[:n], Topics(prefix), gates[n::2],
                              record=False, stall_s=3.0) for n in range(2)]
    workers = IngestWorkers(tmp_path / "workers", cluster.ingest_url, cluster.mqtt_urls, PG_URL, prefix,
                            count=3, schema=pg_schema, ack_wait_s=3.0)
    with workers:
        try:
            run_gates(uplinks, 15)
            with Feeder(gates, per_gate, seconds=4.0):
                await asyncio.sleep(1.5)
                before, _, _ = await stored(pg_schema)
                victim = workers.workers[0]
                workers.kill(victim)  # kill -9 mid-stream: whatever it held unacknowledged comes back
            done = await asyncio.to_thread(wait_committed, uplinks, 60)
        finally:
            for uplink in uplinks:
                uplink.close()
        total, distinct, seqs = await stored(pg_schema)
        survivors = [worker for worker in workers.workers if worker is not victim]
        assert done, [(w.name, w.log.read_text()[-2000:]) for w in survivors]
        assert all(worker.alive for worker in survivors) and not victim.alive
    expected = per_gate * len(gates)
    assert 0 < before < expected  # the kill came mid-stream
    assert (total, distinct) == (expected, expected)  # nothing lost, nothing doubled
    assert seqs == {gate.id: list(range(1, per_gate + 1)) for gate in gates}
