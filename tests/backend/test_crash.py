"""The backend killed (SIGKILL) between receiving a tap and committing it: the tap is stored after restart."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path

from sqlalchemy import func, select

from backend.db import make_engine, make_sessionmaker
from backend.migrate import upgrade
from backend.tables import TapRow
from faregate.simgate import SimGate, SimUplink
from protocol.mqtt import Committed, Topics, encode
from tests.backend.conftest import BrokerInfo, Database, make_settings, make_tap, wait_for

ROOT = Path(__file__).resolve().parents[2]


async def start_backend(
    database: Database, broker: BrokerInfo, prefix: str, client_id: str, batch_wait_ms: int
) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "FAREGATE_INGEST_BATCH_WAIT_MS": str(batch_wait_ms),
        "FAREGATE_INGEST_CLIENT_ID": client_id,
        "FAREGATE_INGEST_GROUP": broker.group,
        "FAREGATE_DATABASE_SCHEMA": database.schema or "",
    }
    if not database.schema:
        env.pop("FAREGATE_DATABASE_SCHEMA")
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "backend.cli",
        "--no-api",
        "--no-processor",
        "--database",
        database.url,
        "--mqtt",
        broker.url,
        "--mqtt-version",
        broker.version,
        "--prefix",
        prefix,
        "--log-level",
        "debug",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def wait_for_line(process: asyncio.subprocess.Process, needle: str, timeout: float = 20.0) -> str:
    assert process.stderr is not None

    async def scan() -> str:
        while True:
            line = (await process.stderr.readline()).decode()  # type: ignore[union-attr]
            if not line:
                raise AssertionError(f"backend exited before logging {needle!r}")
            if needle in line:
                return line

    return await asyncio.wait_for(scan(), timeout)


async def stop(process: asyncio.subprocess.Process, sig: int = signal.SIGTERM) -> None:
    if process.returncode is None:
        process.send_signal(sig)
    try:
        await asyncio.wait_for(process.wait(), 15)
    except TimeoutError:
        process.kill()
        await process.wait()


async def test_killed_between_receive_and_commit_the_tap_is_stored_after_restart(
    database: Database, broker: BrokerInfo
) -> None:
    settings = make_settings(database, broker)
    engine = make_engine(settings)
    await upgrade(engine, settings)
    sessions = make_sessionmaker(engine)
    prefix, client_id = f"crash{uuid.uuid4().hex[:8]}", f"ingest-{uuid.uuid4().hex[:8]}"
    topics = Topics(prefix)

    async def stored() -> int:
        async with sessions() as session:
            return int((await session.execute(select(func.count()).select_from(TapRow))).scalar_one())

    gate = SimUplink(broker.url, topics, [SimGate(12, 3)], version=broker.version)
    gate.start()
    first = second = None
    try:
        await asyncio.to_thread(gate.wait_ready)
        # a batch window of a minute: the tap is received, then waits for its batch to fill
        first = await start_backend(database, broker, prefix, client_id, batch_wait_ms=60_000)
        await wait_for_line(first, "ingest connected")
        await asyncio.sleep(0.5)  # the subscription is acknowledged
        tap = make_tap(1)
        await asyncio.to_thread(gate.publish, topics.taps("12-3"), encode(tap))
        await wait_for_line(first, "batch open with 1 message")
        first.send_signal(signal.SIGKILL)
        await first.wait()
        assert await stored() == 0  # received, never committed, never acked

        second = await start_backend(database, broker, prefix, client_id, batch_wait_ms=5)

        def committed() -> bool:
            return any(
                Committed.model_validate_json(m).through_seq >= 1
                for m in gate.messages(topics.committed("12-3"))
            )

        if broker.name == "amqtt":  # amqtt may drop the unacked QoS 1 message (docs/mqtt.md): a resend
            try:
                await wait_for(committed, timeout=8)
            except AssertionError:
                await asyncio.to_thread(gate.publish, topics.taps("12-3"), encode(tap))
                await wait_for(committed, timeout=15)
        else:  # Mosquitto must redeliver to the persistent session: no resend to fall back on
            await wait_for(committed, timeout=15)
        assert await stored() == 1
    finally:
        gate.close()
        for process in (first, second):
            if process is not None:
                await stop(process)
        await engine.dispose()
