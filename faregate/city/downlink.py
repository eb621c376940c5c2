"""The deny-list downlink at city scale: catching a gate up with one net delta, and what a fan-out costs.

The contract is the existing one (docs/mqtt.md, "Deny-list"; backend/distribution.py; gate/state.py):
a live block goes out as a signed `DenyListDeltaMessage` on the shared `denylist/delta` topic, the
whole list as a retained signed `DenyListSnapshotMessage` (at most protocol.mqtt.MAX_LIST_ITEMS ids;
a longer list goes over HTTP as fare_core's binary snapshot, `GET /api/v1/denylist/snapshot.bin`).
A gate applies a delta only when it holds exactly its `base_version`, and checks the result's checksum.

A gate back from a week offline holds an old version. The whole list is the costly way back (10
million phones: ~84 MB binary, every gate); the cheap way is one delta from the version it holds to the
current one, the *net* change over the week (`catch_up_delta`, from the deny-list history the backend
already keeps: `denylist_entries` rows with added_version/removed_version). It is an ordinary
`DenyListDeltaMessage` (base = the gate's version, version = the current one, the current checksum),
so a gate applies it with the code it has. Gates already current ignore it (not newer); a gate at
another old version cannot apply it and asks for a snapshot, which the backend coalesces (one
republish a kind per window, backend/control.py::SnapshotRequests), so no storm follows.

Through station servers a retained message crosses each bridge once and is then served by the station
to its gates (tests/city/test_downlink.py and `faregate bench city` measure that fan-out), so the
centre sends stations x bytes, not gates x bytes. `list_figures` computes those bytes and measures the
gate's own costs (load the binary snapshot, apply a week's delta) for a list of any size.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

import fare_core
from backend.distribution import Distributor
from backend.tables import DenyListEntryRow, DenyListVersionRow
from protocol.mqtt import MAX_LIST_ITEMS, DenyListDeltaMessage, DenyListSnapshotMessage, encode


@dataclass(frozen=True)
class NetChange:
    """The net change of the deny-list from `base_version` to `version`."""

    base_version: int
    version: int
    add: list[int]
    remove: list[int]
    checksum: str


def net_change(history: list[tuple[int, int, int | None]], have: int, current: int, checksum: str
               ) -> NetChange:
    """From membership rows (card, added_version, removed_version or None) changed after `have`: the
    cards to add and remove so that the list at `have` becomes the list at `current`.

    A card is in the list at version v when one of its rows has added <= v < removed (or no removed).
    Rows untouched since `have` (added <= have, never removed) are in both lists and cannot matter."""
    if not 0 <= have <= current:
        raise ValueError(f"cannot catch up from version {have} to {current}")
    then = {card for card, added, removed in history if added <= have and (removed is None or removed > have)}
    now = {card for card, added, removed in history
           if added <= current and (removed is None or removed > current)}
    return NetChange(have, current, sorted(now - then), sorted(then - now), checksum)


async def catch_up_delta(session: AsyncSession, have: int) -> DenyListDeltaMessage | None:
    """One delta from version `have` to the current one (unsigned: the publisher signs), or None when
    `have` is current or unknown (newer than current: only a snapshot can help)."""
    current_row = (await session.execute(
        select(DenyListVersionRow).order_by(DenyListVersionRow.version.desc()).limit(1))).scalar()
    if current_row is None or have >= current_row.version or have < 0:
        return None
    rows = (await session.execute(
        select(DenyListEntryRow.card_id, DenyListEntryRow.added_version, DenyListEntryRow.removed_version)
        .where(or_(DenyListEntryRow.added_version > have, DenyListEntryRow.removed_version > have))
    )).all()
    history = [(int(card, 16), int(added), None if removed is None else int(removed))
               for card, added, removed in rows]
    change = net_change(history, have, current_row.version, current_row.checksum)
    if len(change.add) + len(change.remove) > MAX_LIST_ITEMS:
        return None
    return DenyListDeltaMessage(version=change.version, base_version=change.base_version, add=change.add,
                                remove=change.remove, checksum=change.checksum, time=datetime.now(UTC))


async def answer_denylist_request(distributor: Distributor, have: int) -> str:
    """A gate holding version `have` asked for the deny-list: publish the net delta from `have` when it
    exists and is smaller than the whole list, else the snapshot. Returns "delta" or "snapshot".

    For the backend's control plane (backend/control.py answers every request with the snapshot
    today); the delta goes on the shared topic, signed, and only a gate holding `have` applies it."""
    async with distributor.sessions() as session:
        delta = await catch_up_delta(session, have)
        size = await session.scalar(select(DenyListVersionRow.size)
                                    .order_by(DenyListVersionRow.version.desc()).limit(1))
    if delta is not None and len(delta.add) + len(delta.remove) < (size or 0):
        await distributor.publisher.publish(distributor.topics.denylist_delta, delta)
        return "delta"
    await distributor.publish_denylist_snapshot()
    return "snapshot"


async def changes_since(session: AsyncSession, have: int) -> int:
    """How many membership rows changed after version `have` (an upper bound on the net delta's ids)."""
    count = await session.scalar(select(func.count()).select_from(DenyListEntryRow).where(
        or_(DenyListEntryRow.added_version > have, DenyListEntryRow.removed_version > have)))
    return int(count or 0)


# --- what a fan-out costs ---------------------------------------------------------------------------------


def _random_ids(count: int, rng: random.Random) -> list[int]:
    ids: set[int] = set()
    while len(ids) < count:
        ids.update(rng.getrandbits(64) for _ in range(count - len(ids)))
    return list(ids)


def list_figures(phones: int, changed: int, gates: int, stations: int, seed: int = 16) -> dict[str, Any]:
    """Bytes and seconds of bringing `gates` up to date with a `phones`-long deny-list, measured on this
    machine with fare_core: the whole list (binary snapshot over HTTP, or the MQTT JSON snapshot when
    within MAX_LIST_ITEMS) against one net delta of `changed` ids (half added, half removed; a week of
    blocks and unblocks). The per-gate seconds are the gate's own work (parse and verify a checksum,
    or apply a delta on a copy of the list), the transfer being the link's."""
    rng = random.Random(seed)
    ids = _random_ids(phones, rng)
    built = time.perf_counter()
    old = fare_core.DenyList(ids, version=1)
    build_s = time.perf_counter() - built
    binary = old.to_bytes()
    loaded = time.perf_counter()
    fare_core.DenyList.from_bytes(binary)
    load_s = time.perf_counter() - loaded
    added = [card for card in _random_ids(changed // 2, rng) if card not in old]
    removed = ids[: changed - changed // 2]
    change = old.diff(fare_core.DenyList(ids[len(removed):] + added, version=2))
    delta = DenyListDeltaMessage(version=2, base_version=1, add=list(change.add), remove=list(change.remove),
                                 checksum=change.checksum, time=datetime.now(UTC))
    delta_bytes = len(encode(delta)) + 160  # + key_id and the signature a real one carries
    copy = fare_core.DenyList.from_bytes(binary)
    applied = time.perf_counter()
    copy.apply_delta(change)  # what gate/state.py does: all or nothing, checksum checked
    apply_s = time.perf_counter() - applied
    json_bytes = _snapshot_json_bytes(phones)
    return {
        "phones": phones,
        "snapshot_binary_bytes": len(binary),
        "snapshot_binary_bytes_per_phone": round(len(binary) / phones, 2),
        "snapshot_json_bytes": json_bytes,
        "snapshot_fits_mqtt": phones <= MAX_LIST_ITEMS,
        "list_build_s": round(build_s, 3),
        "gate_snapshot_load_s": round(load_s, 3),
        "week_delta_ids": changed,
        "week_delta_bytes": delta_bytes,
        "gate_delta_apply_s": round(apply_s, 4),
        "gates": gates,
        "stations": stations,
        "snapshot_to_every_gate_bytes": len(binary) * gates,
        "snapshot_to_every_station_bytes": len(binary) * stations,
        "delta_to_every_gate_bytes": delta_bytes * gates,
        "delta_to_every_station_bytes": delta_bytes * stations,
    }


def _snapshot_json_bytes(phones: int) -> int:
    """The size of the JSON snapshot message for `phones` ids (each `"<16 hex>",`), measured on a
    sample and scaled: the message itself is over MAX_LIST_ITEMS past a million phones."""
    sample = min(phones, 10_000)
    ids = list(range(1, sample + 1))
    message = DenyListSnapshotMessage(version=1, card_ids=ids, checksum="0" * 16, time=datetime.now(UTC))
    per_id = 19  # '"' + 16 hex + '"' + ','
    return len(encode(message)) - sample * per_id + phones * per_id + 160
