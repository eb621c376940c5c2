"""Helpers the city tests share (their fixtures are in conftest.py): the PostgreSQL URLs, the nats-server
check, the stream's leader, the taps stored in a schema, gates fed at a steady pace, and waiting."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from collections.abc import Callable

import asyncpg
import nats
import pytest

from backend.ingest.stream import STREAM
from faregate.city.centre import POSTGRES_URL
from faregate.city.cluster import FailoverUplink, NatsCluster
from faregate.simgate import SimGate

PG_URL = POSTGRES_URL  # the backend's (SQLAlchemy) URL
PG = PG_URL.replace("postgresql+asyncpg://", "postgresql://")  # asyncpg's own


def require_nats() -> None:
    if shutil.which("nats-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nats-server is not installed and CI=true")
        pytest.skip("nats-server is not installed")


async def until(predicate: Callable[[], object], timeout: float, what: str, every: float = 0.05) -> None:
    """Poll `predicate` every `every` s until it holds; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(every)


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
        uplink.wait_ready(timeout)


