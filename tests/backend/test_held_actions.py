"""A top-up applied in a write whose answer was lost is off the action list until the write is settled:
the gates could otherwise apply it again elsewhere and credit the rider twice. Landed, the action is
applied; voided, it is on the list again. Through the real processor, Distributor and broker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import pytest
from sqlalchemy import select

from backend import audit, ledger
from backend.distribution import Distributor, is_held
from backend.publisher import Publisher
from backend.tables import ActionRow
from fare_core.reasons import Direction
from faregate.simgate import SimGate, new_phone
from protocol.mqtt import ActionListMessage
from tests.backend.conftest import BrokerInfo, make_settings
from tests.backend.test_ledger import card, unconfirmed
from tests.backend.test_processor import CARD, at, ingest, setup

ENTRY, EXIT = Direction.ENTRY, Direction.EXIT


@contextlib.asynccontextmanager
async def action_lists(broker: BrokerInfo, distributor: Distributor) -> AsyncIterator[
        Callable[[], Awaitable[list[int]]]]:
    """Subscribed to the action list: yields `published()`, the sorted action ids of the next list."""
    url = urlsplit(broker.url)
    version = aiomqtt.ProtocolVersion.V5 if broker.version == "5" else aiomqtt.ProtocolVersion.V311
    async with aiomqtt.Client(url.hostname or "127.0.0.1", url.port or 1883, protocol=version) as watcher:
        await watcher.subscribe(distributor.topics.actions, qos=1)

        async def published() -> list[int]:
            async with asyncio.timeout(10):
                message = await anext(watcher.messages)
            body = ActionListMessage.model_validate_json(bytes(message.payload))
            return sorted(a.action_id for a in body.actions)

        yield published


@pytest.mark.parametrize("lands", [True, False], ids=["landed", "voided"])
async def test_a_topup_in_an_unsettled_write_is_held_off_the_action_list(
    migrated: Any, broker: BrokerInfo, lands: bool
) -> None:
    database, _engine, _ = migrated
    sessions, store, processor = await setup(migrated)
    publisher = Publisher(make_settings(database, broker))
    distributor = Distributor(sessions, publisher)

    async def republish() -> None:  # as backend/runtime.py wires it
        await distributor.publish_actions()

    processor.on_action_applied = republish
    async with sessions.begin() as session:
        action = ActionRow(card_id=card(0), kind="topup", topup=1000, state="pending", created_at=at(1))
        session.add(action)
        await session.flush()
        await ledger.payment(session, card(0), 1000, "provider", action.id, at(1))
        action_id = action.id
    alpha, delta = SimGate(1), SimGate(4)
    try:
        async with action_lists(broker, distributor) as published:
            await distributor.publish_actions()
            assert await published() == [action_id]
            entry, wallet = alpha.tap(new_phone(CARD, balance=1000), CARD, ENTRY, at(2, 0))
            exit_, written = delta.tap(wallet, CARD, EXIT, at(2, 30), topup=1000, action_id=action_id)
            assert exit_.topup_applied == 1000 and exit_.action_id == action_id
            await ingest(store, processor, entry, unconfirmed(delta, exit_))
            assert await published() == []  # whether the top-up is on the wallet is unknown: held
            async with sessions() as session:
                assert await is_held(session, action_id)
            if lands:  # the next tap reads the counter the write moved to
                after, _ = alpha.tap(written, CARD, ENTRY, at(3, 0))
            else:  # the rider's retry at the same gate reads the old counter (the top-up not offered)
                after, _ = delta.tap(wallet, CARD, EXIT, at(2, 31))
            await ingest(store, processor, after)
            assert await published() == ([] if lands else [action_id])
            async with sessions() as session:
                assert not await is_held(session, action_id)
    finally:
        await publisher.aclose()
    async with sessions() as session:
        held = (await session.execute(select(ActionRow))).scalar_one()
        totals = await audit.account_totals(session)
    assert (held.state, held.applied_tap_id) == (("applied", exit_.tap_id) if lands else ("pending", None))
    assert totals["undelivered"] == (0 if lands else 1000) and totals["suspense"] == 0


async def test_a_phone_gets_its_oldest_pending_action_first(migrated: Any, broker: BrokerInfo) -> None:
    """A wallet takes only action ids above the last it holds: a newer action written first would
    leave the older one never applicable, so the list offers a phone its oldest action alone."""
    database, _engine, _ = migrated
    sessions, _store, _processor = await setup(migrated)
    publisher = Publisher(make_settings(database, broker))
    distributor = Distributor(sessions, publisher)
    async with sessions.begin() as session:
        rows = [ActionRow(card_id=card(0), kind="topup", topup=amount, state="pending", created_at=at(1))
                for amount in (500, 700)] + [
            ActionRow(card_id=card(1), kind="topup", topup=300, state="pending", created_at=at(1))]
        session.add_all(rows)
        await session.flush()
        older, newer, other = (row.id for row in rows)
    try:
        async with action_lists(broker, distributor) as published:
            await distributor.publish_actions()
            assert await published() == sorted([older, other])
            async with sessions.begin() as session:
                (await session.get(ActionRow, older)).state = "applied"  # type: ignore[union-attr]
            await distributor.publish_actions()
            assert await published() == sorted([newer, other])
    finally:
        await publisher.aclose()
