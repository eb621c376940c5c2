"""The stream is not trusted either: a tap published straight onto the cluster's subject (no MQTT, no
gate) goes through the same pipeline as one from MQTT: its gate's MAC is checked, a forgery is
dead-lettered and alarmed, never stored; a genuine tap beside it is stored."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import nats
import pytest
from sqlalchemy import select

from backend.db import make_engine, make_sessionmaker
from backend.ingest.stream import StreamSource
from backend.ingest.worker import IngestWorker
from backend.migrate import upgrade
from backend.tables import AlarmRow, DeadLetterRow, TapRow
from faregate.city.cluster import NatsCluster
from faregate.simgate import tap_payload
from tests.backend.conftest import Database, make_settings


@pytest.mark.security
async def test_a_forged_tap_put_straight_on_the_stream_is_dead_lettered(cluster: NatsCluster,
                                                                        tmp_path: Path) -> None:
    prefix = f"city{uuid.uuid4().hex[:8]}"
    settings = make_settings(Database("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'fg.db'}", None),
                             mqtt_prefix=prefix, mqtt_url=cluster.mqtt_urls[0], mqtt_version="3.1.1")
    engine = make_engine(settings)
    await upgrade(engine, settings)
    sessions = make_sessionmaker(engine)
    worker = IngestWorker(settings, sessions, stream=StreamSource(cluster.ingest_url, cluster.mqtt_urls))
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    connection = await nats.connect(cluster.urls)
    try:
        async with asyncio.timeout(20):
            await worker.connected.wait()
        genuine = tap_payload(5, 1, 1)
        forged = tap_payload(5, 1, 2, key=b"\x00" * 32)  # a well-formed tap under the wrong key
        for payload in (forged, genuine):
            await connection.jetstream().publish(f"{prefix}.gates.5-1.taps", payload)
        async with asyncio.timeout(20):
            while worker.stats["stored"] + worker.stats["dead_lettered"] < 2:
                await asyncio.sleep(0.05)
        async with sessions() as session:
            taps = (await session.execute(select(TapRow.tap_id))).scalars().all()
            reasons = (await session.execute(select(DeadLetterRow.reason))).scalars().all()
            alarms = (await session.execute(select(AlarmRow.kind))).scalars().all()
        assert taps == ["5-1:1"]
        assert len(reasons) == 1 and reasons[0].startswith("forged")
        assert alarms == ["tap_forged"]
    finally:
        await connection.close()
        stop.set()
        await running
        await engine.dispose()
