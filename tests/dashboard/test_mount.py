"""mount(app) without a browser: routes added once, every asset shipped and served, the summary guarded."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from backend.api.main import create_app
from backend.api.routes.summary import service_day_start
from backend.config import Settings
from backend.control import handle_control_message
from backend.dashboard import STATIC, mount
from backend.ingest.store import RawMessage
from protocol.mqtt import (
    DEVELOPMENT_UPLINK_MASTER_KEY,
    GateState,
    GateStatus,
    Topics,
    derive_gate_key,
    encode_with_mac,
)


def _settings(tmp_path: Path) -> Settings:
    return Settings(environment="development", database_url=f"sqlite+aiosqlite:///{tmp_path / 'd.db'}",
                    mqtt_prefix=f"dash{uuid.uuid4().hex[:8]}")


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(_settings(tmp_path))
    mount(app)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as test_client:
            yield test_client


def test_mount_twice_adds_the_routes_once(tmp_path: Path) -> None:
    """Also holds once create_app mounts the dashboard itself."""
    app = create_app(_settings(tmp_path))
    mount(app)
    once = len(app.routes)
    mount(app)
    paths = [getattr(route, "path", None) for route in app.routes]
    assert len(app.routes) == once
    for path in ("/", "/commuter", "/dashboard/static"):
        assert paths.count(path) == 1, path
    assert "/dashboard/api/summary" in app.openapi()["paths"]


async def test_pages_and_every_asset_they_reference_are_served(client: httpx.AsyncClient) -> None:
    for page, marker in (("/", "operator board"), ("/commuter", "my phone")):
        response = await client.get(page)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        assert marker in response.text
        assets = re.findall(r'(?:src|href)="(/dashboard/static/[^"]+)"', response.text)
        assert len(assets) >= 2
        for asset in assets:
            served = await client.get(asset)
            assert served.status_code == 200, asset
            kind = "text/css" if asset.endswith(".css") else "javascript"
            assert kind in served.headers["content-type"], asset
    assert (await client.get("/dashboard/static/nothing.js")).status_code == 404


def test_no_asset_comes_from_another_host() -> None:
    """Works offline: no CDN script, style sheet, font or fetch to another origin."""
    files = [p for p in STATIC.iterdir() if p.suffix in {".html", ".js", ".css"}]
    assert {p.name for p in files} >= {"index.html", "commuter.html", "board.js", "commuter.js", "style.css"}
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r'(src|href)="(https?:)?//', text), path.name
        assert "@import" not in text and "url(http" not in text, path.name
        assert not re.search(r'fetch\(\s*["\'`]https?:', text), path.name


async def test_summary_needs_a_token_and_answers_an_empty_day(client: httpx.AsyncClient) -> None:
    assert (await client.get("/dashboard/api/summary")).status_code == 401
    token = (await client.post("/api/v1/login", json={"username": "admin", "password": "changethis"})).json()
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    body = (await client.get("/dashboard/api/summary?minutes=10", headers=headers)).json()
    assert len(body["per_minute"]) == 10
    assert (body["taps_today"], body["revenue_today_fen"], body["gates"], body["recent"]) == (0, 0, [], [])
    for bad in ("0", "241", "ten"):
        response = await client.get(f"/dashboard/api/summary?minutes={bad}", headers=headers)
        assert response.status_code == 422, bad


@pytest.mark.parametrize(
    ("now", "start"),
    [
        # UTC+8, the service day starts at 04:00 local = 20:00 UTC the day before
        (datetime(2026, 11, 22, 19, 30, tzinfo=UTC), datetime(2026, 11, 21, 20, 0, tzinfo=UTC)),
        (datetime(2026, 11, 22, 20, 0, tzinfo=UTC), datetime(2026, 11, 22, 20, 0, tzinfo=UTC)),
        (datetime(2026, 11, 22, 3, 0, tzinfo=UTC), datetime(2026, 11, 21, 20, 0, tzinfo=UTC)),
    ],
)
def test_service_day_starts_at_four_local(now: datetime, start: datetime) -> None:
    settings = Settings(environment="development", service_utc_offset_min=480, service_day_start_min=240)
    assert service_day_start(now, settings) == start


async def test_gate_figures_stay_when_the_last_will_arrives(tmp_path: Path) -> None:
    """The board's per-gate figures come with /api/v1/gates, as the ingest stored them from the gate's
    status messages: a broken status is dropped, and the last will keeps the last figures."""
    settings = _settings(tmp_path)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        sessions = app.state.sessions
        topic = Topics(settings.mqtt_prefix).status("7-1")
        online = GateStatus(gate_id="7-1", state=GateState.ONLINE, time=datetime.now(UTC),
                            tap_to_open_p50_ms=80.5, tap_to_open_p99_ms=120.0, host_p99_ms=0.9,
                            tailgating_alarms=2, forced_door_alarms=0)
        key = derive_gate_key(DEVELOPMENT_UPLINK_MASTER_KEY, "7-1")  # the gate's own MAC key
        for payload in (encode_with_mac(online, key), b"{not a status",
                        encode_with_mac(GateStatus(gate_id="7-1", state=GateState.OFFLINE), key)):
            await handle_control_message(settings, sessions, RawMessage(topic, payload))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            token = (await client.post("/api/v1/login", json={
                "username": settings.admin_username, "password": settings.admin_password})).json()
            health = (await client.get("/api/v1/gates", headers={
                "Authorization": f"Bearer {token['access_token']}"})).json()
    assert [(h["gate_id"], h["state"], h["tap_to_open_p99_ms"], h["host_p99_ms"], h["tailgating_alarms"])
            for h in health] == [("7-1", "offline", 120.0, 0.9, 2)]

