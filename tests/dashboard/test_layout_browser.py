"""The board and the commuter page on a 390 px phone and a 1440 px desk, against a live system: nothing
wider than the window, stations by name in both languages, reasons and ledger kinds in words, latency
coloured against its thresholds; and when the backend stops, a banner that says since when, with every
gate figure stale instead of "online, 0 s ago", until it comes back (issue #14, points 5 and 8)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from backend.control import handle_control_message
from backend.db import make_engine, make_sessionmaker
from backend.ingest.store import RawMessage
from faregate.simgate import development_mac_key
from faregate.station import GateSpec
from firmware_sim.population import Phone
from protocol.mqtt import GateState, GateStatus, Topics, encode_with_mac

from .system import (
    API,
    TINY_RULES,
    VIEWPORTS,
    System,
    chromium,
    layout_faults,
    new_page,
    running_system,
    screenshot,
    ui_login,
    wait_until,
)

pytestmark = pytest.mark.browser

SPECS = [GateSpec(1, 1, "entry"), GateSpec(1, 2, "entry"), GateSpec(3, 3, "exit")]
RIDER, STRANGER = 0x5200_0000_0000_0001, 0x5200_0000_0000_0002
PHONES = [Phone(card_id=card, balance=5000) for card in (RIDER, STRANGER)]
# the tiny network's stations, named in both languages as a real network's rules name them
NAMES = {"Alpha": "Alpha 甲站", "Bravo": "Bravo 乙站", "Charlie": "Charlie 丙站", "Delta": "Delta 丁站"}
SLOW_GATE = "4-1"  # a gate at Delta reporting a tap-to-open p99 far above its threshold


def bilingual_rules() -> str:
    rules = TINY_RULES.read_text(encoding="utf-8")
    for english, both in NAMES.items():
        rules = rules.replace(f'name = "{english}"', f'name = "{both}"')
    assert all(both in rules for both in NAMES.values())
    return rules


async def report_slow_gate(system: System) -> None:
    """A genuine (MACed) status from a gate at Delta, stored by the backend's own control handler."""
    status = GateStatus(gate_id=SLOW_GATE, state=GateState.ONLINE, time=datetime.now(UTC),
                        tap_to_open_p50_ms=95.0, tap_to_open_p99_ms=1091.0, host_p99_ms=0.8)
    engine = make_engine(system.settings)
    try:
        await handle_control_message(
            system.settings, make_sessionmaker(engine),
            RawMessage(Topics(system.settings.mqtt_prefix).status(SLOW_GATE),
                       encode_with_mac(status, development_mac_key(4, 1))))
    finally:
        await engine.dispose()


async def stored_taps(system: System, card: int) -> list[dict[str, Any]]:
    response = await system.api.get(f"{API}/taps", params={"card_id": f"{card:016x}"})
    return list(response.json())


async def assert_fits(page: Any, what: str) -> None:
    faults = await layout_faults(page)
    assert faults == [], f"{what}: {faults[:8]}"


async def test_board_and_commuter_page_fit_a_phone_and_a_desk_and_say_everything_in_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    errors: list[str] = []
    card = f"{RIDER:016x}"
    async with running_system(tmp_path, monkeypatch, SPECS, PHONES) as system, chromium() as browser:
        assert system.station is not None
        rules = {"rules": bilingual_rules(), "format": "toml"}
        published = await system.api.post(f"{API}/fare-tables", json=rules)
        assert published.status_code == 201, published.text
        await wait_until(lambda: all(g.state.fare_table is not None and g.state.fare_table.version == 1
                                         for g in system.station.gates), 20,
                         "every gate on fare table 1")
        # a trip Alpha -> Charlie, and a stranger leaving Charlie who never entered: NO_ENTRY
        assert (await system.station.tap(RIDER, 0)).passed_at is not None
        assert (await system.station.tap(RIDER, 2)).passed_at is not None
        assert (await system.station.tap(STRANGER, 2, patience_s=2.0)).passed_at is None
        await wait_until(lambda: _count(stored_taps(system, STRANGER), 1), 15, "the denial stored")
        await wait_until(lambda: _count(stored_taps(system, RIDER), 2), 15, "the trip stored")
        await report_slow_gate(system)
        issued = await system.api.post(f"{API}/phones/{card}/commuter-token")
        token = issued.json()["token"]

        for size, (width, height) in VIEWPORTS.items():
            page = await new_page(browser, errors, width, height)
            await ui_login(page, system.base, system.settings.admin_username, system.settings.admin_password)
            # stations by the names the fare rules give them, Chinese and English
            await page.wait_for_selector(".station[data-station='1'] h3:has-text('Alpha 甲站')")
            assert "Charlie 丙站" in await page.inner_text(".station[data-station='3'] h3")
            # the denial in words, in both languages, where it happened
            denied = page.locator(f"#recent tr[data-card='{STRANGER:016x}'][data-reason='NO_ENTRY']")
            await denied.wait_for()
            text = await denied.inner_text()
            assert "No entry recorded" in text and "无进站记录" in text and "Charlie 丙站" in text, text
            assert "NO_ENTRY" not in text
            bar = page.locator("#chart-denials .hbar[data-reason='NO_ENTRY']")
            assert "无进站记录" in await bar.inner_text()
            # the slow gate's p99 of 1,091 ms stands out; its p50 of 95 ms does not
            slow = f"#stations tr[data-gate='{SLOW_GATE}'] td.latency"
            await page.wait_for_selector(f"{slow} .lat[data-level='bad']:has-text('p99 1091')")
            assert await page.locator(f"{slow} .lat[data-level='ok']:has-text('p50 95')").count() == 1
            # the rider's trip and ledger in words
            await page.fill("#phone-id", card)
            await page.click("#phone-form button[type=submit]")
            trip = page.locator("#phone-trips tr[data-state='complete']")
            await trip.wait_for()
            trip_text = await trip.inner_text()
            assert "Alpha 甲站" in trip_text and "Charlie 丙站" in trip_text and "Complete" in trip_text
            await page.wait_for_selector("#phone-ledger tr[data-kind]")
            assert "_" not in await page.inner_text("#phone-ledger")  # kinds in words, not codes
            await assert_fits(page, f"board, {size}")
            await screenshot(page, f"board-{size}")

            commuter = await new_page(browser, errors, width, height)
            await commuter.goto(f"{system.base}/commuter")
            await commuter.fill("#token", token)
            await commuter.click("#token-form button[type=submit]")
            row = commuter.locator("#trips tr[data-state='complete']")
            await row.wait_for()
            row_text = await row.inner_text()
            assert "Alpha 甲站" in row_text and "Charlie 丙站" in row_text and "¥" in row_text, row_text
            assert "Active" in await commuter.inner_text("#status")
            await assert_fits(commuter, f"commuter page, {size}")
            # every column of the trip is on screen: the To and Fare cells lie inside the window
            for cell in await row.locator("td").all():
                box = await cell.bounding_box()
                assert box is not None and box["x"] + box["width"] <= width, await cell.inner_text()
            await screenshot(commuter, f"commuter-{size}")
            await commuter.close()
            await page.close()
    assert errors == []


async def _count(taps: Any, n: int) -> bool:
    return len(await taps) >= n


@pytest.mark.parametrize("size", list(VIEWPORTS))
async def test_backend_stopping_turns_the_board_stale_and_it_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: str
) -> None:
    errors: list[str] = []
    width, height = VIEWPORTS[size]
    async with running_system(tmp_path, monkeypatch, SPECS[:2], PHONES) as system, chromium() as browser:
        page = await new_page(browser, errors, width, height)
        await ui_login(page, system.base, system.settings.admin_username, system.settings.admin_password)
        await page.wait_for_selector("#kpi-online:text-is('2 / 2')")
        await page.wait_for_selector("#stations tr[data-gate='1-2'][data-state='online']")
        assert await page.locator("#backend-banner").is_hidden()
        token = (await system.api.post(f"{API}/phones/{RIDER:016x}/commuter-token")).json()["token"]
        commuter = await new_page(browser, errors, width, height)
        await commuter.goto(f"{system.base}/commuter")
        await commuter.fill("#token", token)
        await commuter.click("#token-form button[type=submit]")
        await commuter.wait_for_selector("#me:not([hidden])")

        await system.backend.stop()
        banner = page.locator("#backend-banner")
        await banner.wait_for(state="visible")
        said = await banner.inner_text()
        assert re.match(r"Backend unreachable since \d\d:\d\d:\d\d \(", said), said
        # no gate reads online, no age keeps ticking: each shows when it was last seen, as a time
        await page.wait_for_selector("#kpi-online:text-is('unknown')")
        rows = page.locator("#stations tr[data-gate]")
        assert await rows.count() == 2
        for row in await rows.all():
            assert await row.get_attribute("data-state") == "stale"
            assert await row.locator(".badge.state").inner_text() == "stale"
            assert re.fullmatch(r"at \d\d:\d\d:\d\d", await row.locator("td.last-seen").inner_text())
        assert "online" not in await page.inner_text(".station-head")
        assert "s ago" not in await page.inner_text("#stations")
        assert await page.evaluate("document.body.classList.contains('stale')")
        await assert_fits(page, f"stale board, {size}")
        await screenshot(page, f"board-backend-unreachable-{size}")
        # the commuter page says so too, and keeps what it showed, greyed
        said = commuter.locator("#backend-banner")
        await said.wait_for(state="visible")
        assert re.match(r"Backend unreachable since \d\d:\d\d:\d\d", await said.inner_text())
        assert await commuter.inner_text("#card") == f"{RIDER:016x}"
        await assert_fits(commuter, f"stale commuter page, {size}")

        system.backend.start()  # same database, same port: the board's token is still good
        await banner.wait_for(state="hidden", timeout=30_000)
        await page.wait_for_selector("#kpi-online:text-is('2 / 2')", timeout=30_000)
        assert not await page.evaluate("document.body.classList.contains('stale')")
        assert await page.locator("#stations tr[data-state='stale']").count() == 0
        await said.wait_for(state="hidden", timeout=30_000)
    assert errors == []
