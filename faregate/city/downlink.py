"""The deny-list downlink at city scale: what a fan-out costs, and the catch-up for direct callers.

The contract is the existing one (docs/mqtt.md, "Deny-list"; backend/distribution.py; gate/state.py):
a live block goes out as a signed `DenyListDeltaMessage` on the shared `denylist/delta` topic, the
whole list as a retained signed `DenyListSnapshotMessage` (at most protocol.mqtt.MAX_LIST_ITEMS ids;
a longer list goes over HTTP as fare_core's binary snapshot, `GET /api/v1/denylist/snapshot.bin`).
A gate applies a delta only when it holds exactly its `base_version`, and checks the result's checksum.

A gate back from a week offline holds an old version. The whole list is the costly way back (10
million phones: ~84 MB binary, every gate); the cheap way is one delta from the version it holds to the
current one, the *net* change over the week. The backend computes it (backend/catchup.py: `net_change`,
`catch_up`) and its control plane answers a gate's deny-list request with it, coalesced per version
held and bounded (backend/control.py::SnapshotRequests); they are re-exported here for the city
tests and figures. Gates already current ignore it (not newer); a gate at another old version cannot
apply it and asks in turn.

Through station servers a retained message crosses each bridge once and is then served by the station
to its gates (tests/city/test_downlink.py and `faregate bench city` measure that fan-out), so the
centre sends stations x bytes, not gates x bytes. `list_figures` computes those bytes and measures the
gate's own costs (load the binary snapshot, apply a week's delta) for a list of any size.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime
from typing import Any

import fare_core
from backend.catchup import Answer, NetChange, catch_up, net_change
from backend.distribution import Distributor
from protocol.mqtt import (
    DEVELOPMENT_SIGNING_SEED,
    MAX_LIST_ITEMS,
    DenyListDeltaMessage,
    DenyListSnapshotMessage,
    Signer,
    encode,
)

__all__ = ["Answer", "NetChange", "answer_denylist_request", "catch_up", "list_figures", "net_change"]


async def answer_denylist_request(distributor: Distributor, have: int) -> str:
    """A gate holding version `have` asked for the deny-list: what backend/control.py does for it,
    at once and uncoalesced (a test's or a bench's direct call): the net delta from `have` when it
    exists and is smaller than the whole list, nothing when `have` is current, else the snapshot.
    Returns "delta", "current" or "snapshot"."""
    answer = await distributor.catch_up_denylist(have)
    if answer is Answer.SNAPSHOT:
        await distributor.publish_denylist_snapshot()
    return answer.value


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
    or apply a delta on a copy of the list), the transfer being the link's. The JSON messages are
    measured signed, as the backend sends them (key id and Ed25519 signature, development key)."""
    signer = Signer(DEVELOPMENT_SIGNING_SEED)
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
    delta_bytes = len(encode(signer.sign(delta)))
    copy = fare_core.DenyList.from_bytes(binary)
    applied = time.perf_counter()
    copy.apply_delta(change)  # what gate/state.py does: all or nothing, checksum checked
    apply_s = time.perf_counter() - applied
    json_bytes = _snapshot_json_bytes(phones, signer)
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


def _snapshot_json_bytes(phones: int, signer: Signer) -> int:
    """The size of the signed JSON snapshot message for `phones` ids (each `"<16 hex>",`), measured on
    a sample and scaled: the message itself is over MAX_LIST_ITEMS past a million phones."""
    sample = min(phones, 10_000)
    ids = list(range(1, sample + 1))
    message = DenyListSnapshotMessage(version=1, card_ids=ids, checksum="0" * 16, time=datetime.now(UTC))
    per_id = 19  # '"' + 16 hex + '"' + ','
    return len(encode(signer.sign(message))) - sample * per_id + phones * per_id
