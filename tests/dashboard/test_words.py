"""Ids in words for the pages: reason codes as the gate's display says them (without a rider's amounts),
and station names from the fare tables, the newest first, readable without a token."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from backend.api.main import create_app
from backend.api.routes.summary import reason_words
from backend.config import Settings
from backend.dashboard import mount
from backend.tables import FareTableRow
from fare_core import Reason, artefact
from fare_core.compiler import compile_rules
from fare_core.reasons import display_text
from fare_core.rules import parse_rules

EXAMPLES = Path(__file__).resolve().parents[2] / "fare_core" / "examples"


@pytest.mark.parametrize("reason", list(Reason), ids=lambda r: r.name)
def test_reason_words_are_the_gate_display_texts_without_amounts(reason: Reason) -> None:
    words = reason_words(reason)
    zh, en = display_text(reason, 123, 4567)
    if display_text(reason, 1, 1) == display_text(reason, 2, 2):  # no amount in it: the text itself
        assert (words.zh, words.en) == (zh, en)
        return
    for said, full in ((words.zh, zh), (words.en, en)):
        assert not re.search(r"\d|¥|元|- -|^ | $|^-|-$", said), said
        assert all(word in full for word in said.split()), (said, full)  # cut from the text, not retyped
    assert bool(words.en) == bool(words.zh) == (reason != Reason.OK), words
    assert words.name == reason.name


def _row(rules_text: str, version: int) -> FareTableRow:
    data = compile_rules(parse_rules(rules_text, "toml"), version, created_at=1_700_000_000 + version)
    blob = artefact.pack(data)
    now = datetime.now(UTC)
    return FareTableRow(version=version, name=data.name, rules=rules_text, artefact=blob,
                        checksum=artefact.checksum_of(blob), created_at=now, activate_at=now)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, object]]:
    settings = Settings(environment="development", database_url=f"sqlite+aiosqlite:///{tmp_path / 'w.db'}",
                        mqtt_prefix=f"w{uuid.uuid4().hex[:8]}")
    app = create_app(settings)
    mount(app)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as test_client:
            yield test_client, app.state.sessions


async def test_station_names_come_from_the_newest_tables_and_need_no_token(
    client: tuple[httpx.AsyncClient, object],
) -> None:
    http, sessions = client
    assert (await http.get("/dashboard/api/stations")).json() == {"fare_table_version": None, "names": {}}
    tiny = (EXAMPLES / "tiny.toml").read_text(encoding="utf-8")
    renamed = tiny.replace('name = "Alpha"', 'name = "Alpha 甲站"')
    async with sessions.begin() as session:  # type: ignore[attr-defined]
        session.add_all([
            _row(tiny, 1),
            _row((EXAMPLES / "guangzhou.toml").read_text(encoding="utf-8"), 2),  # no tiny station in it
            _row(renamed, 3),
        ])
    body = (await http.get("/dashboard/api/stations")).json()  # no Authorization header at all
    assert body["fare_table_version"] == 3
    names = {int(k): v for k, v in body["names"].items()}
    assert names[1] == "Alpha 甲站"  # as the newest table names it
    assert names[4] == "Delta" and names[109] == "Gongyuanqian 公园前"  # older tables fill in

    # a newest table whose bytes do not read leaves the names of the ones before it
    async with sessions.begin() as session:  # type: ignore[attr-defined]
        broken = _row(tiny, 4)
        broken.artefact, broken.checksum = b"not a fare table", "x" * 64
        session.add(broken)
    again = (await http.get("/dashboard/api/stations")).json()
    assert again["fare_table_version"] == 4 and again["names"] == body["names"]


async def test_reasons_list_every_code_without_a_token(client: tuple[httpx.AsyncClient, object]) -> None:
    http, _ = client
    listed = (await http.get("/dashboard/api/reasons")).json()
    assert [r["reason"] for r in listed] == sorted(int(r) for r in Reason)
    no_entry = next(r for r in listed if r["name"] == "NO_ENTRY")
    assert (no_entry["en"], no_entry["zh"]) == display_text(Reason.NO_ENTRY, 0, 0)[::-1]
