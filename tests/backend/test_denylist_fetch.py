"""The gate's HTTP path to a deny-list past MQTT's size (issue 16 point 4): the backend publishes a
signed `DenyListSnapshotRef` instead of the MQTT snapshot, and serves fare_core's binary snapshot at
DENYLIST_FETCH_PATH to a gate that proves itself with its own MAC; no operator login. On SQLite and
PostgreSQL, amqtt and Mosquitto (the end-to-end path with real gates: tests/gate/test_denylist_fetch.py)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import httpx
import pytest

import fare_core
from backend import distribution
from backend.api.main import create_app
from backend.config import Settings
from backend.distribution import Distributor
from backend.tables import GateRow
from faregate.simgate import development_mac_key
from protocol.mqtt import (
    DENYLIST_FETCH_PATH,
    DEVELOPMENT_PUBLIC_KEY,
    FETCH_GATE_HEADER,
    FETCH_MAC_HEADER,
    FETCH_TIME_HEADER,
    DenyListSnapshotRef,
    GateFetchAuth,
    UpdateKind,
    Verifier,
    with_mac,
)
from tests.backend.conftest import BrokerInfo, Database, make_settings, wait_for

CARDS = [0xFE7C0000 + n for n in range(8)]
GATE = "12-3"  # a gate the backend knows (its row is made below, as its first status makes it)


@dataclass
class Backend:
    client: httpx.AsyncClient
    app: Any
    settings: Settings

    @property
    def distributor(self) -> Distributor:
        return self.app.state.distributor  # type: ignore[no-any-return]


@pytest.fixture
async def backend(database: Database, broker: BrokerInfo, monkeypatch: pytest.MonkeyPatch
                  ) -> AsyncIterator[Backend]:
    """The API app on a real database and broker, MAX_LIST_ITEMS lowered to 3 (as
    tests/backend/test_catchup.py does: a million ids would take minutes and prove nothing more)."""
    monkeypatch.setattr(distribution, "MAX_LIST_ITEMS", 3)
    settings = make_settings(database, broker)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with app.state.sessions.begin() as session:
            session.add(GateRow(gate_id=GATE, station_id=12, gate_no=3, committed_seq=0, highest_seq=0,
                                command_id=0))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield Backend(client, app, settings)


def headers(target: str, gate: str = GATE, *, key: bytes | None = None, at: datetime | None = None,
            method: str = "GET") -> dict[str, str]:
    """What a gate sends: its id, its time and its MAC over method, target, id and time."""
    sent = (at or datetime.now(UTC)).replace(microsecond=0)
    gate_no = int(gate.split("-")[1])
    auth = with_mac(GateFetchAuth(gate_id=gate, method=method, target=target, time=sent),  # type: ignore[arg-type]
                    key or development_mac_key(int(gate.split("-")[0]), gate_no))
    return {FETCH_GATE_HEADER: gate, FETCH_TIME_HEADER: auth.model_dump(mode="json")["time"],
            FETCH_MAC_HEADER: str(auth.mac)}


async def past_the_limit(backend: Backend) -> fare_core.DenyList:
    """Version 1 with 6 ids, past the lowered limit of 3."""
    await backend.distributor.change_denylist([f"{c:016x}" for c in CARDS[:6]], [], "stolen")
    current = await backend.distributor.snapshot()
    assert (current.version, len(current)) == (1, 6)
    return current


async def test_a_gate_downloads_the_current_list_with_its_mac(backend: Backend) -> None:
    current = await past_the_limit(backend)
    target = f"{DENYLIST_FETCH_PATH}?version=1"
    response = await backend.client.get(target, headers=headers(target))
    assert response.status_code == 200, response.text
    fetched = fare_core.DenyList.from_bytes(response.content)
    assert (fetched.version, fetched.checksum) == (1, current.checksum)
    assert response.headers["X-Faregate-Sha256"] == hashlib.sha256(response.content).hexdigest()
    # without a version: the current one; a version the backend has moved on from: 409, no body
    response = await backend.client.get(DENYLIST_FETCH_PATH, headers=headers(DENYLIST_FETCH_PATH))
    assert response.status_code == 200 and fare_core.DenyList.from_bytes(response.content).version == 1
    await backend.distributor.change_denylist([f"{CARDS[6]:016x}"], [], "stolen")
    response = await backend.client.get(target, headers=headers(target))
    assert response.status_code == 409 and response.headers["X-Faregate-Version"] == "2"


@pytest.mark.security
async def test_the_gate_route_refuses_no_mac_a_bad_mac_a_stale_time_and_strangers(backend: Backend) -> None:
    await past_the_limit(backend)
    target = f"{DENYLIST_FETCH_PATH}?version=1"
    get = backend.client.get
    good = headers(target)
    assert (await get(target)).status_code == 401  # no headers at all
    assert (await get(target, headers={**good, FETCH_MAC_HEADER: "0" * 32})).status_code == 401
    assert (await get(target, headers={**good, FETCH_MAC_HEADER: "not hex"})).status_code == 401
    # another gate's key, or a MAC over another target (a captured request replayed elsewhere)
    assert (await get(target, headers=headers(target, key=development_mac_key(12, 4)))).status_code == 401
    assert (await get(f"{DENYLIST_FETCH_PATH}?version=2", headers=good)).status_code == 401
    assert (await get(DENYLIST_FETCH_PATH, headers=good)).status_code == 401
    # genuinely MACed, but 10 minutes old or ahead: refused
    for skew in (timedelta(minutes=-10), timedelta(minutes=10)):
        stale = headers(target, at=datetime.now(UTC) + skew)
        response = await get(target, headers=stale)
        assert response.status_code == 401 and "clock" in response.json()["detail"]
    # a time not in UTC, or not a time
    for sent_at in ("2026-01-01T00:00:00+08:00", "yesterday"):
        assert (await get(target, headers={**good, FETCH_TIME_HEADER: sent_at})).status_code == 401
    # a genuine MAC of a gate the backend has never heard from
    stranger = await get(target, headers=headers(target, gate="99-9"))
    assert stranger.status_code == 403
    # an operator's bearer token is not a gate's MAC
    assert (await get(target, headers={"Authorization": "Bearer x"})).status_code == 401
    # none of that got a byte of the list; the genuine request does
    response = await get(target, headers=good)
    assert response.status_code == 200 and fare_core.DenyList.from_bytes(response.content).version == 1


@pytest.mark.security
async def test_a_gate_is_rate_limited(backend: Backend) -> None:
    """A gate (its key genuine: a compromised one) cannot make the backend serve 80 MB on a loop."""
    await past_the_limit(backend)
    target = f"{DENYLIST_FETCH_PATH}?version=1"
    codes = [(await backend.client.get(target, headers=headers(target))).status_code for _ in range(8)]
    assert codes == [200] * 6 + [429] * 2
    response = await backend.client.get(target, headers=headers(target))
    assert response.status_code == 429 and int(response.headers["Retry-After"]) > 0


async def test_past_the_limit_the_backend_publishes_a_signed_ref_to_the_file_it_serves(
        backend: Backend, broker: BrokerInfo) -> None:
    """Instead of the MQTT snapshot (retained): the reference, whose SHA-256 is that of the bytes the
    route serves; a deny-list snapshot request (no catch-up possible) republishes it."""
    url = urlsplit(broker.url)
    version = aiomqtt.ProtocolVersion.V5 if broker.version == "5" else aiomqtt.ProtocolVersion.V311
    topics = backend.distributor.topics
    refs: list[DenyListSnapshotRef] = []
    async with aiomqtt.Client(url.hostname or "127.0.0.1", url.port or 1883, protocol=version) as client:
        await client.subscribe(topics.denylist_snapshot_ref, qos=1)
        await client.subscribe(topics.denylist_snapshot, qos=1)
        snapshots = 0

        async def collect() -> None:
            nonlocal snapshots
            async for message in client.messages:
                if str(message.topic) == topics.denylist_snapshot:
                    snapshots += 1
                else:
                    refs.append(DenyListSnapshotRef.model_validate_json(bytes(message.payload)))

        task = asyncio.create_task(collect())
        try:
            current = await past_the_limit(backend)
            await wait_for(lambda: refs, 10)
            await backend.distributor.resend(UpdateKind.DENYLIST)  # what a snapshot request leads to
            await wait_for(lambda: len(refs) == 2, 10)
        finally:
            task.cancel()
    ref = refs[0]
    Verifier([DEVELOPMENT_PUBLIC_KEY]).check(ref)  # signed by the backend's key
    assert (ref.version, ref.checksum, ref.size) == (1, current.checksum, 6)
    assert snapshots == 0  # no MQTT snapshot of a list past the limit
    target = f"{DENYLIST_FETCH_PATH}?version=1"
    served = (await backend.client.get(target, headers=headers(target))).content
    assert hashlib.sha256(served).hexdigest() == ref.sha256 == refs[1].sha256
    assert len(served) == 48 + 8 * ref.size
