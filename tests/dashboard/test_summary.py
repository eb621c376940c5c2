"""The board's summary against stored taps, on SQLite and on PostgreSQL: the figures are what the taps say."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.api.main import create_app
from backend.config import Settings
from backend.dashboard import mount
from backend.ingest.store import tap_row
from backend.tables import TapRow
from fare_core.reasons import Direction, GateMode, Reason
from protocol.mqtt import TapMessage, tap_id

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def settings(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Settings]:
    common: dict[str, Any] = {"environment": "development", "mqtt_prefix": f"dash{uuid.uuid4().hex[:8]}"}
    if request.param == "sqlite":
        yield Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 's.db'}", **common)
        return
    if not _port_open(5432):
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL is not running on 127.0.0.1:5432 and CI=true")
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    import asyncpg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(POSTGRES)
    try:
        await connection.execute(f"CREATE SCHEMA {schema}")
        yield Settings(database_url="postgresql+asyncpg://postgres@127.0.0.1:5432/test",
                       database_schema=schema, **common)
    finally:
        await connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await connection.close()


def tap(seq: int, time: datetime, *, gate_no: int = 1, allowed: bool = True, reason: Reason = Reason.OK,
        fare: int = 0, latency_us: int = 1000) -> dict[str, Any]:
    message = TapMessage(
        tap_id=tap_id(9, gate_no, seq), station_id=9, gate_no=gate_no, seq=seq, card_id=0xABC0 + seq,
        time=time, direction=Direction.ENTRY, mode=GateMode.NORMAL, allowed=allowed, reason=reason, flags=0,
        fare=fare, balance_before=5000, balance_after=5000 - fare, counter_before=1, counter_after=2,
        wallet_before="00" * 128, fare_table_version=1, denylist_version=0, min_counter=0,
        latency_us=latency_us)
    return tap_row(message, received_at=time + timedelta(milliseconds=seq))


async def test_summary_counts_what_the_taps_say(settings: Settings) -> None:
    app = create_app(settings)
    mount(app)
    now = datetime.now(UTC).replace(microsecond=0)  # a tap time is whole seconds
    async with app.router.lifespan_context(app):
        async with app.state.sessions.begin() as session:
            session.add_all([
                TapRow(**tap(1, now - timedelta(seconds=50), fare=300, latency_us=1000)),
                TapRow(**tap(2, now - timedelta(seconds=40), fare=250, latency_us=3000)),
                TapRow(**tap(3, now - timedelta(seconds=30), gate_no=2, allowed=False,
                             reason=Reason.DENYLISTED)),
                TapRow(**tap(4, now - timedelta(seconds=20), gate_no=2, allowed=False,
                             reason=Reason.INSUFFICIENT_BALANCE)),
                TapRow(**tap(5, now - timedelta(seconds=10), gate_no=2, allowed=False,
                             reason=Reason.DENYLISTED)),
                TapRow(**tap(6, now - timedelta(days=3), fare=999)),  # an earlier service day
            ])
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            login = await client.post("/api/v1/login", json={"username": settings.admin_username,
                                                             "password": settings.admin_password})
            headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
            body = (await client.get("/dashboard/api/summary", params={"minutes": 5}, headers=headers)).json()
    assert (body["taps_today"], body["denied_today"], body["revenue_today_fen"]) == (5, 3, 550)
    assert body["denials_today"] == {"DENYLISTED": 2, "INSUFFICIENT_BALANCE": 1}
    per_minute = body["per_minute"]
    assert len(per_minute) == 5
    assert (sum(m["allowed"] for m in per_minute), sum(m["denied"] for m in per_minute)) == (2, 3)
    gates = {g["gate_id"]: g for g in body["gates"]}
    assert set(gates) == {"9-1", "9-2"}
    assert (gates["9-1"]["taps"], gates["9-1"]["fen"], gates["9-1"]["mean_latency_us"]) == (2, 550, 2000)
    assert (gates["9-1"]["max_latency_us"], gates["9-2"]["denied"]) == (3000, 3)
    assert [t["tap_id"] for t in body["recent"][:2]] == ["9-2:5", "9-2:4"]
    assert body["recent"][0]["reason_name"] == "DENYLISTED"
    # in words, both languages, as the gate's display said them (with the rider's amounts per tap)
    assert [(d["name"], d["taps"], d["en"], d["zh"]) for d in body["denial_reasons"]] == [
        ("DENYLISTED", 2, "Phone blocked - see customer service", "此卡已挂失 请到客服中心"),
        ("INSUFFICIENT_BALANCE", 1, "Insufficient balance - please top up", "余额不足 请充值")]
    low = body["recent"][1]
    assert (low["station_id"], low["reason_en"]) == (9, "Insufficient balance ¥50.00 - please top up")
    assert low["reason_zh"] == "余额不足 余额 50.00 元 请充值"
