"""A whole live system for the dashboard tests: embedded amqtt broker, the real backend runtime
(ingest + processor + REST API with the dashboard mounted) on SQLite, and simulated gates with real
controllers; plus Debian's chromium driven by Playwright."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import backend.api.main
from backend.config import Settings
from backend.runtime import serve
from faregate.station import GateSpec, SimStation
from firmware_sim.config import BarrierConfig, DeviceConfig
from firmware_sim.population import Phone, Population

from ..gate.brokers import Amqtt, free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
TINY_RULES = Path(__file__).resolve().parents[2] / "fare_core" / "examples" / "tiny.toml"
DEVICE = DeviceConfig(barrier=BarrierConfig(travel_ms=30, passage_ms=60))
API = "/api/v1"


def with_dashboard(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the backend runtime's create_app mount the dashboard (the lead wires it in create_app itself;
    mount is idempotent, so both together are fine)."""
    from backend.dashboard import mount

    original: Callable[..., Any] = backend.api.main.create_app

    def create_app(*args: Any, **kwargs: Any) -> Any:
        app = original(*args, **kwargs)
        mount(app)
        return app

    monkeypatch.setattr(backend.api.main, "create_app", create_app)


class Backend:
    """The backend runtime on a fixed port, which a test can stop (the board must notice) and start again
    on the same database and port (the board must recover)."""

    def __init__(self, settings: Settings, port: int) -> None:
        self.settings, self.port = settings, port
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        assert self._task is None or self._task.done(), "the backend is already running"
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(
            serve(self.settings, api=True, ingest=True, port=self.port, stop=self._stop))

    async def stop(self) -> None:
        """Stop it and wait until it has let go of its port."""
        if self._task is None:
            return
        self._stop.set()
        await asyncio.wait_for(self._task, 30)
        self._task = None

    async def first_login(self, client: httpx.AsyncClient) -> str:
        assert self._task is not None
        return await _first_login(client, self.settings, self._task)


@dataclass
class System:
    settings: Settings
    base: str  # http://127.0.0.1:port
    api: httpx.AsyncClient  # logged in as the admin
    station: SimStation | None
    backend: Backend


async def login(client: httpx.AsyncClient, username: str, password: str) -> str:
    response = await client.post(f"{API}/login", json={"username": username, "password": password})
    response.raise_for_status()
    return str(response.json()["access_token"])


@contextlib.asynccontextmanager
async def running_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, specs: list[GateSpec], phones: list[Phone]
) -> AsyncIterator[System]:
    with_dashboard(monkeypatch)
    broker = Amqtt()
    await broker.start()
    try:
        settings = Settings(
            environment="development", database_url=f"sqlite+aiosqlite:///{tmp_path / 'backend.db'}",
            mqtt_url=broker.url, mqtt_version="3.1.1", ingest_group="",  # type: ignore[arg-type]
            mqtt_prefix=f"d{uuid.uuid4().hex[:8]}", ingest_client_id=f"ingest-{uuid.uuid4().hex[:8]}",
            ingest_batch_wait_ms=5)
        backend = Backend(settings, free_port())
        backend.start()
        try:
            base = f"http://127.0.0.1:{backend.port}"
            async with httpx.AsyncClient(base_url=base, timeout=20) as client:
                token = await backend.first_login(client)
                client.headers["Authorization"] = f"Bearer {token}"
                if specs:
                    async with SimStation(tmp_path / "gates", specs, Population(phones), None, device=DEVICE,
                                          mqtt_url=broker.url, prefix=settings.mqtt_prefix) as station:
                        yield System(settings, base, client, station, backend)
                else:
                    yield System(settings, base, client, None, backend)
        finally:
            await backend.stop()
    finally:
        await broker.stop()


async def _first_login(client: httpx.AsyncClient, settings: Settings, task: asyncio.Task[None]) -> str:
    for _ in range(300):
        if task.done():
            task.result()  # the backend failed to start: show why
        with contextlib.suppress(httpx.TransportError):
            return await login(client, settings.admin_username, settings.admin_password)
        await asyncio.sleep(0.05)
    raise AssertionError("the backend API did not come up")


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """A headless Debian chromium (never a downloaded browser); fails rather than skips under CI."""
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing and CI=true")
        pytest.skip(f"{CHROMIUM} is missing (apt install chromium)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("playwright is not installed (pip install playwright)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def new_page(browser: Any, errors: list[str], width: int = 1400, height: int = 1600) -> Any:
    """A page whose JavaScript errors are collected (a test asserts there were none)."""
    page = await browser.new_page(viewport={"width": width, "height": height})
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    page.set_default_timeout(20_000)
    return page


async def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


#: Phone and desk sizes the pages must fit without sideways scrolling (issue #14).
VIEWPORTS = {"phone": (390, 844), "desk": (1440, 900)}

_LAYOUT_FAULTS = """() => {
  const width = window.innerWidth, faults = [];
  const root = document.documentElement;
  if (root.scrollWidth > width) faults.push(`page is ${root.scrollWidth} px wide in a ${width} px window`);
  for (const el of document.body.querySelectorAll("*")) {
    const box = el.getBoundingClientRect();
    if (!box.width || !box.height || getComputedStyle(el).visibility === "hidden") continue;
    const name = () => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") +
      (typeof el.className === "string" && el.className ? "." + el.className : "") +
      `: ${(el.textContent || "").trim().slice(0, 40)}`;
    if (box.right > width + 0.5 || box.left < -0.5) {
      faults.push(`${name()} spans ${Math.round(box.left)}..${Math.round(box.right)} px of ${width}`);
      continue;
    }
    // inside the window but cut off by a scrolling or clipping box (a table column hidden in its card)
    for (let up = el.parentElement; up && up !== document.body; up = up.parentElement) {
      if (getComputedStyle(up).overflowX === "visible") continue;
      const clip = up.getBoundingClientRect();
      const right = clip.left + up.clientLeft + up.clientWidth;
      if (box.right > right + 0.5) {
        faults.push(`${name()} reaches ${Math.round(box.right)} px, past its box's ${Math.round(right)}`);
      }
      break;
    }
  }
  return faults;
}"""


async def layout_faults(page: Any) -> list[str]:
    """What does not fit the window: the page wider than it (scrollWidth > innerWidth), any visible
    element reaching past its edges, or one cut off by a scrolling box (a table column hidden in its
    card, which the page's own width would not show)."""
    return list(await page.evaluate(_LAYOUT_FAULTS))


async def assert_beside(page: Any, control: str, feedback: str) -> None:
    """The feedback shows right below the control that caused it (not at the top of a long page). Both
    boxes are read in one script run: read one after the other, a scroll between the two reads (the
    page bringing the feedback into view) once put them 256 px apart that were not."""
    boxes = await page.evaluate(
        """([feedback, control]) => [feedback, control].map(selector => {
             const box = document.querySelector(selector)?.getBoundingClientRect();
             return box ? {y: box.y, height: box.height} : null;
           })""", [feedback, control])
    said, by = boxes
    assert said is not None and by is not None, (control, feedback)
    gap = said["y"] - (by["y"] + by["height"])
    assert 0 <= gap < 80, f"{feedback} is {gap:.0f} px from {control}"


async def ui_login(page: Any, base: str, username: str, password: str) -> None:
    await page.goto(f"{base}/")
    await page.fill("#login-user", username)
    await page.fill("#login-pass", password)
    await page.click("#login-form button[type=submit]")
    await page.wait_for_selector("#board:not([hidden])")


async def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.1)


__all__ = ["API", "TINY_RULES", "VIEWPORTS", "Backend", "GateSpec", "Phone", "System", "assert_beside",
           "layout_faults"]
