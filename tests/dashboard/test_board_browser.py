"""The operator board and the commuter page in a real browser against a live system: gates publish to the
broker, the backend stores their taps, and the board shows what happened within its 2-second refresh."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from backend.payments import SimulatedProvider
from faregate.station import GateSpec
from firmware_sim.population import Phone

from .system import (
    API,
    TINY_RULES,
    VIEWPORTS,
    assert_beside,
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
RIDER, BLOCKED, FOLLOWED = 0x5100_0000_0000_0001, 0x5100_0000_0000_0002, 0x5100_0000_0000_0003
PHONES = [Phone(card_id=card, balance=5000) for card in (RIDER, BLOCKED, FOLLOWED)]


@pytest.mark.parametrize("size", list(VIEWPORTS))
async def test_operator_publishes_fares_blocks_a_phone_and_sees_its_tap_denied_live(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: str
) -> None:
    errors: list[str] = []
    async with running_system(tmp_path, monkeypatch, SPECS, PHONES) as system, chromium() as browser:
        assert system.station is not None
        page = await new_page(browser, errors, *VIEWPORTS[size])
        await ui_login(page, system.base, system.settings.admin_username, system.settings.admin_password)
        assert await page.inner_text("#who-role") == "admin"
        await page.wait_for_selector("#stations tr[data-gate='3-3'][data-state='online']")
        assert await page.locator("#stations tr[data-gate]").count() == len(SPECS)

        # publish a fare table from the board; every gate adopts it and the gate list shows its version
        await page.fill("#fare-rules", TINY_RULES.read_text(encoding="utf-8"))
        await page.click("#fare-form button[type=submit]")
        await page.wait_for_selector("#fare-feedback.ok >> text=/Fare table version 1/")
        await assert_beside(page, "#fare-form button[type=submit]", "#fare-feedback")
        for gate in ("1-1", "1-2", "3-3"):
            await page.wait_for_selector(f"#stations tr[data-gate='{gate}'] td.fare-version:text-is('1')")
        everyone = f"{len(SPECS)} / {len(SPECS)}"
        await page.wait_for_selector(f"#fare-tables tr[data-version='1'] td.gates-on:text-is('{everyone}')")

        # an ordinary rider goes through and appears on the live board
        entry = await system.station.tap(RIDER, 0)
        assert entry.passed_at is not None
        await page.wait_for_selector(f"#recent tr[data-card='{RIDER:016x}'][data-result='OK']")

        # someone follows a paying rider through: the gate counts an alarm and the board shows it, with
        # the gate's own tap-to-open percentiles from its status
        await system.station.tap(FOLLOWED, 1, tailgater=True)
        # (tailgating if the barrier is still open when they pass, forced door if it has closed)
        gate_alarms = "#stations tr[data-gate='1-2'] td.gate-alarms"
        await page.wait_for_selector(f"{gate_alarms}:text-matches('(tailgating|forced) 1')")
        await page.wait_for_selector("#stations tr[data-gate='1-2'] td.latency:has-text('p99')")
        alarm = page.locator("#alarms tr[data-kind='tailgating'], #alarms tr[data-kind='forced_door']")
        assert "1-2" in await alarm.inner_text()

        # block the other phone from the board; the gates get the deny-list delta
        await page.fill("#phone-id", f"{BLOCKED:016x}")
        await page.click("#phone-form button[type=submit]")
        await page.fill("#block-reason", "reported stolen at the counter")
        await page.click("#block-btn")
        flash = page.locator("#block-feedback.ok", has_text="deny-list version")
        await flash.wait_for()
        await assert_beside(page, "#block-btn", "#block-feedback")
        version = int(re.search(r"deny-list version (\d+)", await flash.inner_text()).group(1))  # type: ignore[union-attr]
        await wait_until(lambda: all(g.state.denylist.version >= version for g in system.station.gates), 15,
                         "every gate holds the new deny-list")

        # its next tap is refused at the gate, and the board shows the refusal live
        refused = await system.station.tap(BLOCKED, 1, patience_s=2.0)
        assert refused.passed_at is None
        row = page.locator(f"#recent tr[data-card='{BLOCKED:016x}'][data-result='DENIED']")
        await row.wait_for()
        assert await row.get_attribute("data-reason") == "DENYLISTED"
        said = await row.inner_text()  # what the gate's display told the rider, in both languages
        assert "Phone blocked" in said and "此卡已挂失" in said and "DENYLISTED" not in said, said
        await page.wait_for_selector("#phone-taps tr[data-result='DENIED']")  # the phone's own view too
        await page.wait_for_selector(f"#blocked-list a[data-phone='{BLOCKED:016x}']")
        # the figures refresh on the board's 2 s poll: wait for the value, then read it
        await page.wait_for_selector("#kpi-denied:text-is('1')")
        assert await page.inner_text("#kpi-denied") == "1"
        await page.wait_for_selector("#chart-denials .hbar[data-reason='DENYLISTED'] >> text=/Phone blocked/")
        await screenshot(page, f"board-blocked-phone-denied-{size}")

        # emergency free exit for station 1, then back to normal: the gates report the mode they are in
        await page.click("button[data-mode='1'][data-station='1']")
        for gate in ("1-1", "1-2"):
            await page.wait_for_selector(f"#stations tr[data-gate='{gate}'] td:text-is('FREE EXIT')")
        assert await page.locator("#stations tr[data-gate='3-3'] td:text-is('NORMAL')").count() == 1
        await page.wait_for_selector(".station[data-station='1'] .badge:text('EMERGENCY FREE EXIT')")
        said = ".station[data-station='1'] .station-feedback"
        await page.wait_for_selector(f"{said}.ok >> text=/2 gates commanded/")
        await assert_beside(page, "button[data-mode='1'][data-station='1']", said)
        await screenshot(page, f"board-free-exit-{size}")
        await page.click("button[data-mode='0'][data-station='1']")
        for gate in ("1-1", "1-2"):
            await page.wait_for_selector(f"#stations tr[data-gate='{gate}'] td:text-is('NORMAL')")

        # unblocked, the phone reads active, without the reason it was blocked for
        await page.click("#unblock-btn")
        await page.wait_for_selector("#block-feedback.ok >> text=/unblocked/")
        await page.wait_for_selector("#phone-status[data-status='active']")
        assert "Active" in await page.inner_text("#phone-status")
        assert "reported stolen" not in await page.inner_text("#phone-detail")

        # a top-up from the board, written at the rider's exit: the ledger tells it from the fare
        await page.fill("#phone-id", f"{RIDER:016x}")
        await page.click("#phone-form button[type=submit]")
        await page.wait_for_selector(f"#phone-detail dl[data-card='{RIDER:016x}']")
        await page.fill("#topup-yuan", "20")
        await page.click("#topup-form button[type=submit]")
        await page.wait_for_selector("#topup-feedback.ok >> text=/Top-up of ¥20.00 queued/")
        await assert_beside(page, "#topup-form button[type=submit]", "#topup-feedback")
        exit_gate = system.station.gates[2]
        await wait_until(lambda: exit_gate.state.action_for(RIDER) is not None, 15,
                         "the exit gate holds the top-up")
        assert (await system.station.tap(RIDER, 2)).passed_at is not None
        topup = page.locator("#phone-ledger tr[data-kind='topup']")
        await topup.wait_for()
        assert "Top-up" in await topup.inner_text() and "+¥20.00" in await topup.inner_text()
        fare = page.locator("#phone-ledger tr[data-kind='fare']")
        assert "Fare" in await fare.first.inner_text() and "-¥" in await fare.first.inner_text()
        await screenshot(page, f"board-phone-ledger-{size}")
        assert await layout_faults(page) == []

        # the summary behind the board agrees with the database
        summary = (await system.api.get("/dashboard/api/summary")).json()
        taps = (await system.api.get(f"{API}/taps")).json()
        assert summary["taps_today"] == len(taps) >= 3
        assert summary["denials_today"] == {"DENYLISTED": 1}
    assert errors == []


async def test_a_gate_going_offline_shows_on_the_board(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    errors: list[str] = []
    async with running_system(tmp_path, monkeypatch, SPECS[:2], PHONES) as system, chromium() as browser:
        assert system.station is not None
        page = await new_page(browser, errors)
        await ui_login(page, system.base, system.settings.admin_username, system.settings.admin_password)
        await page.wait_for_selector("#stations tr[data-gate='1-2'][data-state='online']")
        # the figures refresh on the board's 2 s poll: wait for the value, then read it
        await page.wait_for_selector("#kpi-online:text-is('2 / 2')")
        assert await page.inner_text("#kpi-online") == "2 / 2"

        # the gate dies without a goodbye: the broker publishes its last will
        gate = system.station.gates[1]
        assert gate.uplink is not None and gate.uplink._client is not None
        sock = gate.uplink._client._client.socket()
        sock.shutdown(socket.SHUT_RDWR)
        await gate.stop()
        system.station.gates.remove(gate)

        await page.wait_for_selector("#stations tr[data-gate='1-2'][data-state='offline']", timeout=30_000)
        assert await page.locator("#stations tr[data-gate='1-1'][data-state='online']").count() == 1
        # the figures refresh on the board's 2 s poll: wait for the value, then read it
        await page.wait_for_selector("#kpi-online:text-is('1 / 2')")
        assert await page.inner_text("#kpi-online") == "1 / 2"
        alarm = page.locator("#alarms tr[data-kind='gate_offline']")
        await alarm.wait_for()
        assert "1-2" in await alarm.inner_text()
        await screenshot(page, "board-gate-offline")
        # acknowledged: said beside the alarm list, and the alarm leaves it
        await alarm.locator("button[data-ack]").click()
        await page.wait_for_selector("#alarm-feedback.ok >> text=/Acknowledged: gate offline/")
        await alarm.wait_for(state="detached")
    assert errors == []


async def test_a_viewer_sees_the_board_but_no_change_control_and_the_api_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    errors: list[str] = []
    async with running_system(tmp_path, monkeypatch, SPECS[:1], PHONES) as system, chromium() as browser:
        created = await system.api.post(f"{API}/operators", json={
            "username": "watcher", "role": "viewer", "password": "a long viewer password"})
        assert created.status_code == 201, created.text
        page = await new_page(browser, errors)
        await ui_login(page, system.base, "watcher", "a long viewer password")
        assert await page.inner_text("#who-role") == "viewer"
        await page.wait_for_selector("#stations tr[data-gate='1-1'][data-state='online']")
        await page.fill("#phone-id", f"{RIDER:016x}")
        await page.click("#phone-form button[type=submit]")
        await page.wait_for_selector("#phone-detail")
        # sees everything: gates, charts, fare tables list; changes nothing
        for selector in ("#block-btn", "#unblock-btn", "#fare-form", "button[data-mode]", "#token-btn"):
            for element in await page.locator(selector).all():
                assert not await element.is_visible(), selector
        assert await page.locator("#phone-actions").is_hidden()
        assert await page.locator("#chart-taps svg").count() == 1
        await screenshot(page, "board-viewer")

        # and were the controls forced back, the API would still refuse
        statuses = await page.evaluate("""async (card) => {
            const headers = {Authorization: `Bearer ${sessionStorage.getItem("faregate.operator.token")}`,
                             "Content-Type": "application/json"};
            const post = (url, body) => fetch(url, {method: "POST", headers, body: JSON.stringify(body)})
                .then((r) => r.status);
            return [
              await post(`/api/v1/phones/${card}/block`, {reason: "viewer tries"}),
              await post("/api/v1/gates/1-1/mode", {mode: 1, reason: "viewer tries"}),
              await post("/api/v1/fare-tables", {rules: "x", format: "toml"}),
              await post("/api/v1/actions", {card_id: card, topup: 100}),
            ];
        }""", f"{RIDER:016x}")
        assert statuses == [403, 403, 403, 403]
        phone = await system.api.get(f"{API}/denylist/snapshot")
        assert f"{RIDER:016x}" not in phone.json()["card_ids"]
    assert errors == []


async def test_commuter_page_shows_balance_tops_up_and_reports_a_lost_phone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    errors: list[str] = []
    card, new_card = f"{RIDER:016x}", "5100000000000099"
    async with running_system(tmp_path, monkeypatch, [], []) as system, chromium() as browser:
        page = await new_page(browser, errors)
        await ui_login(page, system.base, system.settings.admin_username, system.settings.admin_password)
        # rules that do not parse: a clear refusal on the board, and no version published
        await page.fill("#fare-rules", "this is = not [toml")
        await page.click("#fare-form button[type=submit]")
        refusal = page.locator("#fare-feedback.error")
        await refusal.wait_for()
        await assert_beside(page, "#fare-form button[type=submit]", "#fare-feedback")
        assert "422" in await refusal.inner_text() and "fare rules invalid" in await refusal.inner_text()
        assert (await system.api.get(f"{API}/fare-tables")).json() == []
        # valid rules to take effect later: published now with that activation time
        await page.fill("#fare-rules", TINY_RULES.read_text(encoding="utf-8"))
        await page.fill("#fare-activate", "2030-01-01T08:00")
        await page.click("#fare-form button[type=submit]")
        await page.wait_for_selector("#fare-feedback.ok >> text=/Fare table version 1/")
        [table] = (await system.api.get(f"{API}/fare-tables")).json()
        assert table["activate_at"].startswith(("2030-01-01", "2029-12-31"))  # the browser's time zone
        # version 2, then version 1's rules published again from the list: said beside the list
        await page.fill("#fare-activate", "")
        await page.click("#fare-form button[type=submit]")
        await page.wait_for_selector("#fare-feedback.ok >> text=/Fare table version 2/")
        await page.click("button[data-rollback='1']")
        await page.wait_for_selector("#rollback-feedback.ok >> text=/published again as version 3/")
        assert [t["version"] for t in (await system.api.get(f"{API}/fare-tables")).json()] == [3, 2, 1]

        # the operator issues the commuter's token from the board
        await page.fill("#phone-id", card)
        await page.click("#phone-form button[type=submit]")
        await page.click("#token-btn")
        out = page.locator("#token-out")
        await out.wait_for()
        await wait_until(lambda: out.inner_text(), 10, "token shown")
        token = (await out.inner_text()).rsplit(": ", 1)[1].strip()

        commuter = await new_page(browser, errors)
        await commuter.goto(f"{system.base}/commuter")
        await commuter.fill("#token", token)
        await commuter.click("#token-form button[type=submit]")
        await commuter.wait_for_selector("#me:not([hidden])")
        assert await commuter.inner_text("#card") == card
        assert await commuter.inner_text("#balance") == "¥0.00"

        await commuter.fill("#amount", "12.50")
        await commuter.click("#topup-form button[type=submit]")
        flash = commuter.locator("#topup-feedback.ok")
        await flash.wait_for()
        await assert_beside(commuter, "#topup-form button[type=submit]", "#topup-feedback")
        # a top-up is a payment intent: nothing is credited until the provider's signed confirmation
        assert (await system.api.get(f"{API}/actions", params={"card_id": card})).json() == []
        reference = re.search(r"reference (pi_[0-9a-f]+)", await flash.inner_text())
        assert reference, await flash.inner_text()
        provider = SimulatedProvider(system.settings.payment_webhook_secret)
        body, headers = provider.confirmation(reference[1], 1250)
        confirmed = await system.api.post(f"{API}/payments/confirmations", content=body, headers=headers)
        assert confirmed.status_code == 200, confirmed.text
        actions = (await system.api.get(f"{API}/actions", params={"card_id": card})).json()
        assert [(a["topup"], a["state"]) for a in actions] == [(1250, "pending")]

        await commuter.fill("#amount", "12.345")  # bad input: a clear message, nothing sent
        await commuter.click("#topup-form button[type=submit]")
        await commuter.wait_for_selector("#topup-feedback.error")
        assert len((await system.api.get(f"{API}/actions", params={"card_id": card})).json()) == 1
        await screenshot(commuter, "commuter")

        await commuter.fill("#new-card", new_card)
        await commuter.click("#lost-form button[type=submit]")
        await commuter.wait_for_selector(f"#card:text-is('{new_card}')")
        lost = (await system.api.get(f"{API}/phones/{card}")).json()
        assert (lost["status"], lost["replaced_by"]) == ("lost", new_card)
        # the top-up still on its way follows the owner to the new phone, not left on the blocked one
        moved = (await system.api.get(f"{API}/actions", params={"card_id": new_card})).json()
        assert [(a["topup"], a["state"]) for a in moved] == [(1250, "pending")]
        assert (await system.api.get(f"{API}/actions", params={"card_id": card})).json() == []
        assert card in (await system.api.get(f"{API}/denylist/snapshot")).json()["card_ids"]
    assert errors == []
