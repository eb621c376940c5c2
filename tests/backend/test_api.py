"""The REST API in-process (httpx over ASGI) on a real database and a real broker."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from sqlalchemy import select

import fare_core
from backend.api.main import create_app
from backend.ingest.store import RawMessage, TapStore
from backend.payments import SimulatedProvider
from backend.processor import Processor
from backend.tables import LedgerEntryRow
from faregate.simgate import TINY, SimGate, SimUplink
from protocol.mqtt import DenyListDeltaMessage, DenyListSnapshotMessage, GateCommand, Topics, encode
from tests.backend.conftest import BrokerInfo, Database, make_settings, make_tap, wait_for

ADMIN = {"username": "admin", "password": "changethis"}
CARD = "00000000deadbeef"


class Api:
    def __init__(self, client: httpx.AsyncClient, app: Any, settings: Any) -> None:
        self.client = client
        self.app = app
        self.settings = settings
        self.topics = Topics(settings.mqtt_prefix)

    async def login(self, username: str, password: str) -> dict[str, str]:
        response = await self.client.post("/api/v1/login", json={"username": username, "password": password})
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    async def account(self, admin: dict[str, str], username: str, role: str) -> dict[str, str]:
        password = f"{username}-password-long"
        response = await self.client.post(
            "/api/v1/operators",
            headers=admin,
            json={"username": username, "password": password, "role": role},
        )
        assert response.status_code == 201, response.text
        return await self.login(username, password)


@pytest.fixture
async def api(database: Database, broker: BrokerInfo) -> AsyncIterator[Api]:
    settings = make_settings(database, broker, login_attempts_per_minute=5)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield Api(client, app, settings)


async def test_a_block_reaches_a_gate_subscribed_to_the_deny_list(api: Api, broker: BrokerInfo) -> None:
    gate = SimUplink(broker.url, api.topics, [SimGate(12, 3)], version=broker.version)
    gate.start()
    try:
        await asyncio.to_thread(gate.wait_ready)
        admin = await api.login(**ADMIN)
        response = await api.client.post(
            f"/api/v1/phones/{CARD}/block", headers=admin, json={"reason": "stolen"}
        )
        assert response.status_code == 200, response.text
        assert response.json()["version"] == 1
        payloads = await wait_for(lambda: gate.messages(api.topics.denylist_delta), timeout=5)
        delta = DenyListDeltaMessage.model_validate_json(payloads[0])
        assert (delta.version, delta.base_version, delta.add, delta.remove) == (1, 0, [0xDEADBEEF], [])
        snapshot = DenyListSnapshotMessage.model_validate_json(
            (await wait_for(lambda: gate.messages(api.topics.denylist_snapshot), timeout=5))[-1]
        )
        assert snapshot.card_ids == [0xDEADBEEF] and snapshot.checksum == delta.checksum
        again = await api.client.post(f"/api/v1/phones/{CARD}/block", headers=admin, json={"reason": "x"})
        assert again.status_code == 409
        phone = (await api.client.get(f"/api/v1/phones/{CARD}", headers=admin)).json()
        assert phone["status"] == "blocked"
        audit = (await api.client.get("/api/v1/audit", headers=admin)).json()
        assert any(row["action"] == "phone.block" and row["target"] == CARD for row in audit)
    finally:
        gate.close()


async def test_roles_see_and_do_only_what_they_should(api: Api) -> None:
    admin = await api.login(**ADMIN)
    viewer = await api.account(admin, "vera", "viewer")
    operator = await api.account(admin, "otto", "operator")
    c = api.client
    assert (await c.get("/api/v1/gates")).status_code == 401
    assert (await c.get("/api/v1/gates", headers={"Authorization": "Bearer nonsense"})).status_code == 401
    assert (await c.get("/api/v1/gates", headers=viewer)).status_code == 200
    assert (await c.get("/api/v1/taps", headers=viewer)).status_code == 200
    # writes need the operator role
    body = {"card_id": CARD, "topup": 500}
    assert (await c.post("/api/v1/actions", headers=viewer, json=body)).status_code == 403
    assert (
        await c.post(f"/api/v1/phones/{CARD}/block", headers=viewer, json={"reason": "x"})
    ).status_code == 403
    created = await c.post("/api/v1/actions", headers=operator, json=body)
    assert created.status_code == 201 and created.json()["state"] == "pending"
    # accounts and the audit log need admin
    assert (await c.get("/api/v1/operators", headers=operator)).status_code == 403
    assert (await c.get("/api/v1/audit", headers=operator)).status_code == 403
    new = {"username": "eve", "password": "a-long-password", "role": "admin"}
    assert (await c.post("/api/v1/operators", headers=operator, json=new)).status_code == 403
    assert (await c.get("/api/v1/audit", headers=admin)).status_code == 200
    # a commuter sees their own phone only, and no operator endpoint
    token = (await c.post(f"/api/v1/phones/{CARD}/commuter-token", headers=operator)).json()["token"]
    commuter = {"Authorization": f"Bearer {token}"}
    assert (await c.get("/api/v1/me", headers=commuter)).json()["card_id"] == CARD
    assert (await c.get("/api/v1/gates", headers=commuter)).status_code == 401
    assert (await c.get("/api/v1/me", headers=viewer)).status_code == 401


async def test_login_is_rate_limited_across_api_processes(api: Api) -> None:
    wrong = {"username": "admin", "password": "wrong"}
    codes = [(await api.client.post("/api/v1/login", json=wrong)).status_code for _ in range(3)]
    # a second API instance on the same database (another process behind the load balancer) counts
    # the same attempts: two more, then it refuses too
    other = create_app(api.settings, migrate=False)
    async with other.router.lifespan_context(other):
        transport = httpx.ASGITransport(app=other)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            codes += [(await client.post("/api/v1/login", json=wrong)).status_code for _ in range(3)]
            right = await client.post("/api/v1/login", json=ADMIN)
    assert codes == [401] * 5 + [429]
    assert right.status_code == 429  # the right password does not pass the limit either
    # another username from the same client is counted on its own
    assert (await api.client.post("/api/v1/login", json={**wrong, "username": "bob"})).status_code == 401


async def test_commuter_reports_a_lost_phone(api: Api) -> None:
    admin = await api.login(**ADMIN)
    store = TapStore(api.app.state.sessions)
    await store.store(
        [RawMessage(api.topics.taps("12-3"), encode(make_tap(1, card_id=0xDEADBEEF, balance_after=1000)))]
    )
    processor = Processor(api.settings.model_copy(update={"reconcile": False}), api.app.state.sessions)
    await processor.run_once()
    token = (await api.client.post(f"/api/v1/phones/{CARD}/commuter-token", headers=admin)).json()["token"]
    me = {"Authorization": f"Bearer {token}"}
    assert (await api.client.get("/api/v1/me", headers=me)).json()["balance"] == 1000
    new_card = "00000000cafef00d"
    response = await api.client.post("/api/v1/me/report-lost", headers=me, json={"new_card_id": new_card})
    assert response.status_code == 200, response.text
    assert response.json()["card_id"] == new_card
    # the same token now follows the new phone; the old one is on the deny-list
    assert (await api.client.get("/api/v1/me", headers=me)).json()["card_id"] == new_card
    old = (await api.client.get(f"/api/v1/phones/{CARD}", headers=admin)).json()
    assert old["status"] == "lost" and old["replaced_by"] == new_card
    actions = (await api.client.get("/api/v1/actions", headers=admin, params={"card_id": new_card})).json()
    assert [(a["topup"], a["state"]) for a in actions] == [(1000, "pending")]
    snapshot = (await api.client.get("/api/v1/denylist/snapshot", headers=admin)).json()
    assert snapshot["card_ids"] == [CARD]


async def test_fare_table_publish_list_and_roll_back(api: Api) -> None:
    admin = await api.login(**ADMIN)
    rules = TINY.read_text()
    first = await api.client.post("/api/v1/fare-tables", headers=admin, json={"rules": rules})
    assert first.status_code == 201, first.text
    second = await api.client.post("/api/v1/fare-tables", headers=admin, json={"rules": rules})
    bad = await api.client.post("/api/v1/fare-tables", headers=admin, json={"rules": "name = 3"})
    assert bad.status_code == 422
    back = await api.client.post("/api/v1/fare-tables/1/rollback", headers=admin, json={})
    assert back.status_code == 201
    versions = (await api.client.get("/api/v1/fare-tables", headers=admin)).json()
    assert [(v["version"], v["state"], v["rolled_back_from"]) for v in versions] == [
        (3, "published", 1),
        (2, "superseded", None),
        (1, "superseded", None),
    ]
    assert second.json()["version"] == 2
    blob = (await api.client.get("/api/v1/fare-tables/3/artefact", headers=admin)).content
    assert fare_core.FareTable.from_bytes(blob).version == 3


def _tides_row_schema() -> dict[str, Any]:
    """The TIDES fare_transactions table schema (Frictionless) as a JSON Schema for one CSV row."""
    path = Path(__file__).parents[1] / "fixtures" / "tides" / "fare_transactions.schema.json"  # vendored
    table = json.loads(path.read_text())
    patterns = {
        "date": r"^\d{4}-\d{2}-\d{2}$",
        "datetime": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$",
        "number": r"^-?\d+(\.\d+)?$",
        "integer": r"^-?\d+$",
        "boolean": r"^(true|false)$",
    }
    properties: dict[str, Any] = {}
    required = []
    for field in table["fields"]:
        prop: dict[str, Any] = {"type": "string"}
        if field["type"] in patterns:
            prop["pattern"] = patterns[field["type"]]
        constraints = field.get("constraints", {})
        if "enum" in constraints:
            prop["enum"] = constraints["enum"]
        if constraints.get("required"):
            required.append(field["name"])
            prop["minLength"] = 1
        properties[field["name"]] = prop
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


async def test_exports_csv_and_tides(api: Api) -> None:
    admin = await api.login(**ADMIN)
    store = TapStore(api.app.state.sessions)
    taps = [
        make_tap(1, fare=0),
        make_tap(2, direction=fare_core.Direction.EXIT, fare=300, balance_after=700),
        make_tap(3, allowed=False, reason=fare_core.Reason.INSUFFICIENT_BALANCE, counter_after=3,
                 balance_before=700, balance_after=700),
    ]
    await store.store([RawMessage(api.topics.taps("12-3"), encode(t)) for t in taps])
    plain = await api.client.get("/api/v1/taps/export.csv", headers=admin)
    assert plain.status_code == 200
    rows = list(csv.DictReader(io.StringIO(plain.text)))
    assert [r["tap_id"] for r in rows] == ["12-3:1", "12-3:2", "12-3:3"]
    tides = await api.client.get("/api/v1/taps/export/tides.csv", headers=admin)
    rows = list(csv.DictReader(io.StringIO(tides.text)))
    assert [(r["transaction_id"], r["fare_action"], r["amount"]) for r in rows] == [
        ("12-3:1", "Enter", "0.00"),
        ("12-3:2", "Exit", "3.00"),
    ]
    schema = _tides_row_schema()
    for row in rows:
        jsonschema.validate({k: v for k, v in row.items() if v != ""}, schema)
    with pytest.raises(jsonschema.ValidationError):  # the check can fail: a wrong action is caught
        jsonschema.validate({**rows[0], "fare_action": "Board"}, schema)


async def test_mode_command_reaches_the_gate_and_reports_count_taps(api: Api, broker: BrokerInfo) -> None:
    admin = await api.login(**ADMIN)
    store = TapStore(api.app.state.sessions)
    taps = [
        make_tap(1, fare=0),
        make_tap(2, direction=fare_core.Direction.EXIT, fare=300, balance_after=700, latency_us=400),
        make_tap(3, allowed=False, reason=fare_core.Reason.INSUFFICIENT_BALANCE, counter_after=3,
                 balance_before=700, balance_after=700),
    ]
    await store.store([RawMessage(api.topics.taps("12-3"), encode(t)) for t in taps])
    processor = Processor(api.settings.model_copy(update={"reconcile": False}), api.app.state.sessions)
    await processor.run_once()  # revenue is what the ledger posted
    gate = SimUplink(broker.url, api.topics, [SimGate(12, 3)], version=broker.version)
    gate.start()
    try:
        await asyncio.to_thread(gate.wait_ready)
        response = await api.client.post(
            "/api/v1/gates/12-3/mode", headers=admin, json={"mode": 1, "reason": "evacuation"}
        )
        assert response.status_code == 200, response.text
        assert (response.json()["commanded_mode"], response.json()["command_id"]) == (1, 1)
        payload = (await wait_for(lambda: gate.messages(api.topics.command("12-3")), timeout=5))[0]
        command = GateCommand.model_validate_json(payload)
        assert (command.mode, command.command_id, command.reason) == (
            fare_core.GateMode.FREE_EXIT,
            1,
            "evacuation",
        )
        assert (
            await api.client.post("/api/v1/gates/99-9/mode", headers=admin, json={"mode": 0})
        ).status_code == 404
    finally:
        gate.close()
    rides = (await api.client.get("/api/v1/reports/ridership", headers=admin)).json()
    assert [(r["keys"]["station_id"], r["taps"]) for r in rides] == [(12, 1)]
    revenue = (await api.client.get("/api/v1/reports/revenue", headers=admin)).json()
    assert [(r["taps"], r["fen"]) for r in revenue] == [(1, 300)]
    totals = (await api.client.get("/api/v1/reports/ledger", headers=admin)).json()
    assert (totals["revenue"], totals["suspense"], totals["undelivered"]) == (300, 0, 0)
    checks = (await api.client.get("/api/v1/reports/audit", headers=admin)).json()
    assert (checks["unbalanced_entries"], checks["invalid_trips"], checks["head_mismatches"]) == (0, 0, 0)
    denials = (await api.client.get("/api/v1/reports/denials", headers=admin)).json()
    assert [(r["keys"]["name"], r["taps"]) for r in denials] == [("INSUFFICIENT_BALANCE", 1)]
    latency = (await api.client.get("/api/v1/reports/latency", headers=admin)).json()
    assert [(r["gate_id"], r["taps"], r["max_us"]) for r in latency] == [("12-3", 3, 400)]


async def test_a_commuter_token_for_a_phone_the_processor_creates_meanwhile_is_issued(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The route and the processor both create an unseen phone: the one that commits second must not
    answer 500 (seen in the soak: UNIQUE phones.card_id)."""
    from backend.api.routes import phones
    from backend.tables import PhoneRow

    admin = await api.login(**ADMIN)
    real_audit = phones.audit
    raced: list[bool] = []

    async def audit_after_the_processor(session: Any, *args: Any) -> None:
        if not raced:  # the processor commits the phone between the route's look-up and its commit
            raced.append(True)
            async with api.app.state.sessions.begin() as other:
                other.add(PhoneRow(card_id=CARD, status="active", status_reason="", balance=700, counter=3))
        await real_audit(session, *args)

    monkeypatch.setattr(phones, "audit", audit_after_the_processor)
    issued = await api.client.post(f"/api/v1/phones/{CARD}/commuter-token", headers=admin)
    assert raced and issued.status_code == 201, issued.text
    me = await api.client.get("/api/v1/me", headers={"Authorization": f"Bearer {issued.json()['token']}"})
    assert me.status_code == 200 and me.json()["balance"] == 700  # the processor's row, with the token


async def test_an_action_in_a_write_not_yet_known_to_have_landed_cannot_be_cancelled(api: Api) -> None:
    """Cancelling would take the money back from `undelivered` while the wallet may already hold it."""
    admin = await api.login(**ADMIN)
    sessions = api.app.state.sessions
    processor = Processor(api.settings.model_copy(update={"reconcile": False}), sessions)
    store = TapStore(sessions)
    created = await api.client.post("/api/v1/actions", headers=admin, json={"card_id": CARD, "topup": 500})
    assert created.status_code == 201, created.text
    action = int(created.json()["id"])
    unsettled = make_tap(2, direction=fare_core.Direction.EXIT, balance_before=1000, balance_after=1500,
                         action_id=action, topup_applied=500, allowed=False,
                         reason=fare_core.Reason.READ_FAILED,
                         flags=fare_core.Flag.TOPUP_APPLIED | fare_core.Flag.UNCONFIRMED)
    made = [make_tap(1, balance_before=1000, balance_after=1000), unsettled]
    await store.store([RawMessage(api.topics.taps(t.gate_id), encode(t)) for t in made])
    while await processor.run_once():
        pass
    refused = await api.client.post(f"/api/v1/actions/{action}/cancel", headers=admin)
    assert refused.status_code == 409 and "not yet known to have landed" in refused.text
    # the phone's next tap reads the counter the write moved to: landed, applied, and still not cancellable
    await store.store([RawMessage(api.topics.taps("12-3"), encode(make_tap(3, balance_before=1500,
                                                                             balance_after=1500)))])
    while await processor.run_once():
        pass
    applied = await api.client.post(f"/api/v1/actions/{action}/cancel", headers=admin)
    assert applied.status_code == 409 and "applied" in applied.text


async def test_every_kind_of_money_movement_is_a_balanced_entry(api: Api) -> None:
    """Each way money moves (docs/ledger.md) through the API and the processor: operator grants and a
    counter top-up (one cancelled), a provider's payment, deliveries at taps, an unconfirmed write that
    landed and one that did not, a lost phone's transfer. Every entry balances, the accounts sum to zero,
    revenue is landed fares only, and the phone's ledger reads in counter order with its legs."""
    admin = await api.login(**ADMIN)
    sessions = api.app.state.sessions
    processor = Processor(api.settings.model_copy(update={"reconcile": False}), sessions)
    store = TapStore(sessions)

    async def taps(*made: Any) -> None:
        await store.store([RawMessage(api.topics.taps(t.gate_id), encode(t)) for t in made])
        while await processor.run_once():
            pass

    async def action(**body: Any) -> int:
        response = await api.client.post("/api/v1/actions", headers=admin, json={"card_id": CARD, **body})
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    await taps(make_tap(1, balance_before=1000, balance_after=1000))
    refund, adjustment = await action(kind="refund", topup=300), await action(kind="adjustment", topup=200)
    counter = await action(topup=500, reason="cash at the desk")
    cancel = await api.client.post(f"/api/v1/actions/{counter}/cancel", headers=admin)
    assert cancel.status_code == 200, cancel.text
    token = (await api.client.post(f"/api/v1/phones/{CARD}/commuter-token", headers=admin)).json()["token"]
    me = {"Authorization": f"Bearer {token}"}
    intent = (await api.client.post("/api/v1/me/topup", headers=me, json={"amount": 1000})).json()
    provider = SimulatedProvider(api.settings.payment_webhook_secret)
    body, headers = provider.confirmation(intent["reference"], 1000)
    paid = await api.client.post("/api/v1/payments/confirmations", content=body, headers=headers)
    assert paid.status_code == 200 and paid.json()["credited"], paid.text
    payment = paid.json()["action_id"]
    exit_, entry = fare_core.Direction.EXIT, fare_core.Direction.ENTRY
    lost = {"allowed": False, "reason": fare_core.Reason.READ_FAILED, "flags": fare_core.Flag.UNCONFIRMED}
    applied = fare_core.Flag.TOPUP_APPLIED
    await taps(
        make_tap(2, direction=exit_, fare=300, balance_before=1000, balance_after=1000, action_id=refund,
                 topup_applied=300, flags=applied),
        make_tap(3, balance_before=1000, balance_after=1200, action_id=adjustment, topup_applied=200,
                 flags=applied),
        make_tap(4, direction=exit_, fare=200, balance_before=1200, balance_after=1000, **lost),  # landed
        make_tap(5, direction=entry, balance_before=1000, balance_after=1000),
        make_tap(6, direction=exit_, fare=200, balance_before=1000, balance_after=800, **lost),  # did not
        make_tap(7, direction=exit_, fare=200, balance_before=1000, balance_after=800, counter_before=6,
                 counter_after=7),
        make_tap(8, balance_before=800, balance_after=1800, counter_before=7, counter_after=8,
                 action_id=payment, topup_applied=1000, flags=applied),
    )
    mine = (await api.client.get("/api/v1/me/ledger", headers=me)).json()
    listed = (await api.client.get(f"/api/v1/phones/{CARD}/ledger", headers=admin)).json()
    assert mine == listed
    assert [(e["kind"], e["counter_after"], e["amount"], e["balance_after"]) for e in listed] == [
        ("opening", 1, 1000, 1000), ("refund", 3, 300, 1300), ("fare", 3, -300, 1000),
        ("adjustment", 4, 200, 1200), ("unconfirmed", 5, -200, 1000), ("landed", 5, 0, 1000),
        ("unconfirmed", 7, -200, 800), ("voided", 7, 200, 1000), ("fare", 7, -200, 800),
        ("topup", 8, 1000, 1800),
        ("refund_granted", None, 0, 1800), ("adjustment_granted", None, 0, 1800), ("payment", None, 0, 1800),
        ("cancelled", None, 0, 1800), ("payment", None, 0, 1800)]
    assert {leg["account"] for leg in listed[2]["legs"]} == {f"wallet:{CARD}", "revenue:unknown:2026-11-22"}
    newest = (await api.client.get(f"/api/v1/phones/{CARD}/ledger?newest_first=true&limit=2",
                                   headers=admin)).json()
    assert [e["id"] for e in newest] == [e["id"] for e in listed[::-1][:2]]
    new_card = "00000000cafef00d"
    moved = await api.client.post("/api/v1/me/report-lost", headers=me, json={"new_card_id": new_card})
    assert moved.status_code == 200, moved.text
    transfer = (await api.client.get("/api/v1/actions", headers=admin, params={"card_id": new_card})).json()
    assert [(a["kind"], a["topup"]) for a in transfer] == [("transfer", 1800)]
    await taps(make_tap(1, gate_no=4, card_id=0xCAFEF00D, balance_before=0, balance_after=1800,
                        action_id=transfer[0]["id"], topup_applied=1800, flags=applied))
    totals = (await api.client.get("/api/v1/reports/ledger", headers=admin)).json()
    assert (totals["revenue"], totals["suspense"], totals["undelivered"]) == (700, 0, 0)
    assert totals["accounts"] == {"adjustments": -500, "issuance": -1000, "payments:counter": 0,
                                  "payments:provider": -1000, "revenue:unknown:2026-11-22": 700,
                                  "suspense": 0, "undelivered": 0}
    assert totals["totals"]["wallet"] == 1800 and sum(totals["totals"].values()) == 0
    revenue = (await api.client.get("/api/v1/reports/revenue", headers=admin)).json()
    assert [(r["keys"]["day"], r["taps"], r["fen"]) for r in revenue] == [("2026-11-22", 3, 700)]
    checks = (await api.client.get("/api/v1/reports/audit", headers=admin)).json()
    assert (checks["unbalanced_entries"], checks["invalid_trips"], checks["head_mismatches"],
            checks["entries_without_postings"], checks["suspense"]) == (0, 0, 0, 0, 0)
    kinds = {e["kind"] for e in listed} | {"transfer_out", "transfer"}
    async with sessions() as session:
        posted = {e.kind for e in (await session.execute(select(LedgerEntryRow))).scalars()}
    assert posted == kinds
