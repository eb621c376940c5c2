"""The board's summary against stored taps, on SQLite and on PostgreSQL: the figures are what the taps say,
and the day's revenue what the processor posted to the ledger's revenue accounts."""

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
from backend.processor import Processor
from backend.tables import TapRow
from fare_core.reasons import Direction, Flag, GateMode, Reason
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
        fare: int = 0, latency_us: int = 1000, card: int | None = None, flags: int = 0,
        counter: int = 1, balance: int = 5000) -> dict[str, Any]:
    """A stored tap of phone `card` (0xABC0 + seq by default) writing counter -> counter + 1."""
    message = TapMessage(
        tap_id=tap_id(9, gate_no, seq), station_id=9, gate_no=gate_no, seq=seq,
        card_id=0xABC0 + seq if card is None else card, time=time, direction=Direction.ENTRY,
        mode=GateMode.NORMAL, allowed=allowed, reason=reason, flags=flags, fare=fare, balance_before=balance,
        balance_after=balance - fare, counter_before=counter, counter_after=counter + 1,
        wallet_before="00" * 128, fare_table_version=1, denylist_version=0, min_counter=0,
        latency_us=latency_us)
    return tap_row(message, received_at=time + timedelta(milliseconds=seq))


def unconfirmed(seq: int, time: datetime, card: int, fare: int) -> dict[str, Any]:
    """The gate's row of a write whose answer was lost: refused, UNCONFIRMED, fare and counters as the
    write would make them (gate/controller.py)."""
    return tap(seq, time, card=card, fare=fare, allowed=False, reason=Reason.READ_FAILED,
               flags=int(Flag.UNCONFIRMED))


async def process(app: Any, settings: Settings) -> None:
    """The processor's pass over the stored taps (no fare table: revenue on `revenue:unknown:<day>`)."""
    processor = Processor(settings.model_copy(update={"reconcile": False}), app.state.sessions)
    while await processor.run_once():
        pass


async def get_summary(app: Any, settings: Settings) -> dict[str, Any]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        login = await client.post("/api/v1/login", json={"username": settings.admin_username,
                                                         "password": settings.admin_password})
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        body: dict[str, Any] = (await client.get("/dashboard/api/summary", params={"minutes": 5},
                                                 headers=headers)).json()
    return body


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
                TapRow(**tap(7, now - timedelta(seconds=5), reason=Reason.DENYLISTED_EXIT_CHARGED,
                             flags=int(Flag.BLOCKED_NOW), fare=0)),  # let out (capped): allowed
            ])
        await process(app, settings)
        body = await get_summary(app, settings)
    assert (body["taps_today"], body["denied_today"], body["revenue_today_fen"]) == (6, 3, 550)
    assert body["denials_today"] == {"DENYLISTED": 2, "INSUFFICIENT_BALANCE": 1}
    per_minute = body["per_minute"]
    assert len(per_minute) == 5
    assert (sum(m["allowed"] for m in per_minute), sum(m["denied"] for m in per_minute)) == (3, 3)
    gates = {g["gate_id"]: g for g in body["gates"]}
    assert set(gates) == {"9-1", "9-2"}
    assert (gates["9-1"]["taps"], gates["9-1"]["fen"], gates["9-1"]["mean_latency_us"]) == (3, 550, 1666)
    assert (gates["9-1"]["max_latency_us"], gates["9-2"]["denied"]) == (3000, 3)
    assert [t["tap_id"] for t in body["recent"][:3]] == ["9-1:7", "9-2:5", "9-2:4"]
    assert body["recent"][1]["reason_name"] == "DENYLISTED"
    assert body["recent"][0]["reason_en"] == "Phone blocked - fare ¥0.00 - see customer service"
    # in words, both languages, as the gate's display said them (with the rider's amounts per tap)
    assert [(d["name"], d["taps"], d["en"], d["zh"]) for d in body["denial_reasons"]] == [
        ("DENYLISTED", 2, "Phone blocked - see customer service", "此卡已挂失 请到客服中心"),
        ("INSUFFICIENT_BALANCE", 1, "Insufficient balance - please top up", "余额不足 请充值")]
    low = body["recent"][2]
    assert (low["station_id"], low["reason_en"]) == (9, "Insufficient balance ¥50.00 - please top up")
    assert low["reason_zh"] == "余额不足 余额 50.00 元 请充值"


async def test_revenue_today_is_what_landed(settings: Settings) -> None:
    """Issue 15: the board summed the taps' fares, so a write whose answer was lost counted whether
    or not it landed. Revenue today is the day's revenue postings: a charge confirmed, an unconfirmed
    write once a later tap shows it landed; not one still unknown, nor one a retry shows did not land
    (the retry's own charge is revenue). A gate's fen likewise."""
    app = create_app(settings)
    mount(app)
    now = datetime.now(UTC).replace(microsecond=0)
    a, b, c, d = 0xA0, 0xB0, 0xC0, 0xD0
    async with app.router.lifespan_context(app):
        async with app.state.sessions.begin() as session:
            session.add_all([
                TapRow(**tap(1, now - timedelta(seconds=60), card=a, fare=300)),  # confirmed
                TapRow(**unconfirmed(2, now - timedelta(seconds=55), b, 200)),  # never resolved
                TapRow(**unconfirmed(3, now - timedelta(seconds=50), c, 250)),  # did not land:
                TapRow(**tap(4, now - timedelta(seconds=45), card=c, fare=250)),  # the retry wrote again
                TapRow(**unconfirmed(5, now - timedelta(seconds=40), d, 100)),  # landed: the next tap
                TapRow(**tap(6, now - timedelta(seconds=35), card=d, counter=2, balance=4900)),  # reads it
            ])
        await process(app, settings)
        body = await get_summary(app, settings)
    assert body["revenue_today_fen"] == 300 + 250 + 100  # the fares reported: 1,100
    assert [(g["gate_id"], g["fen"]) for g in body["gates"]] == [("9-1", 650)]
