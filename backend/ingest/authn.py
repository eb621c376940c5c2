"""Who sent it: every tap, status and request from a gate must carry that gate's MAC (docs/security.md).

The broker is not trusted: anyone on it can publish on a gate's topic. A tap whose MAC does not verify
under the gate's key (diversified from the uplink master key, protocol/mqtt/auth.py) is dead-lettered
and raises a `tap_forged` alarm, so a forger can neither store a tap nor take a tap id the real gate has
not reached yet. A tap that does verify but differs from the one stored under its id raises
`tap_conflict` and is dead-lettered: the first one stays, whole and visible.

Alarms are bounded: at most one unacknowledged alarm of a kind per gate (per tap id for conflicts) a
minute, so a flood of forgeries costs one row a minute, not one a message.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from protocol.mqtt import DEVELOPMENT_UPLINK_MASTER_KEY, GateKeys, Payload, Signer, TapMessage
from protocol.mqtt.auth import MAC_BYTES, tag_valid, tagged

from ..config import Settings
from ..tables import AlarmRow, TapRow

ALARM_EVERY = timedelta(minutes=1)
#: The columns a gate's MAC covers; two taps with one id and any difference here are a conflict.
CONTENT = (
    "gate_id", "station_id", "gate_no", "seq", "card_id", "time", "direction", "mode", "allowed", "reason",
    "flags", "fare", "balance_before", "balance_after", "counter_before", "counter_after", "wallet_before",
    "fare_table_version", "denylist_version", "min_counter", "action_id", "topup_applied", "latency_us",
)


@lru_cache(maxsize=8)
def _gate_keys(masters: tuple[str, ...]) -> GateKeys:
    return GateKeys(bytes.fromhex(m) for m in masters)


def gate_keys(settings: Settings | None) -> GateKeys:
    """Every gate's uplink keys as the backend derives them (development master key without settings)."""
    if settings is None:
        return _gate_keys((DEVELOPMENT_UPLINK_MASTER_KEY.hex(),))
    masters = (settings.uplink_master_key, *filter(None, [settings.uplink_master_key_next]))
    return _gate_keys(tuple(m.lower() for m in masters))


def signer(settings: Settings) -> Signer:
    """The backend's downlink signing key (publisher and ingest worker sign with it)."""
    return Signer(bytes.fromhex(settings.downlink_signing_key))


_MAC_SUFFIX = len(b',"mac":"') + 2 * MAC_BYTES + len(b'"}')
_TAP_NAME = TapMessage.__name__


def tap_refusals(keys: GateKeys, parsed: Sequence[tuple[Any, bytes | None]]) -> list[str | None]:
    """`refusal` for every element of one taps payload, each given with the exact bytes it was parsed
    from (store.parse_raw), or None for those bytes when it was not parsed from a span of its own; non-taps
    give None. Fast path: the MAC over those bytes themselves, which is the canonical form when the
    gate's JSON arrives as it left (measured: saves re-serialising each tap). It is sound only because
    the tap was parsed from exactly the bytes the MAC is checked over, never from a neighbour's (the
    splicing attack of tests/backend/test_mac_splicing.py); anything else is checked on its canonical
    form, re-serialised from the parsed model, so what is verified is what is stored."""
    reasons: list[str | None] = []
    for tap, raw in parsed:
        if not isinstance(tap, TapMessage) or (
                raw is not None and _raw_mac_valid(keys.keys_for(tap.gate_id), raw, tap.mac)):
            reasons.append(None)
        else:
            reasons.append(refusal(keys, tap))
    return reasons


def _raw_mac_valid(keys: Iterable[bytes], raw: bytes, mac: str | None) -> bool:
    """The tap's own bytes end in `,"mac":"<mac>"}` and the MAC covers what precedes it."""
    if mac is None or len(raw) <= _MAC_SUFFIX or raw[-_MAC_SUFFIX:] != b',"mac":"' + mac.encode() + b'"}':
        return False
    return tag_valid(tagged(_TAP_NAME, raw[:-_MAC_SUFFIX] + b"}"), mac, keys)


def refusal(keys: GateKeys, message: Payload, gate_id: str | None = None) -> str | None:
    """Why `message` (from `gate_id`, default its own `gate_id`) is refused, or None if its MAC verifies."""
    gate_id = gate_id or str(getattr(message, "gate_id", ""))
    if getattr(message, "mac", None) is None:
        return f"forged: no MAC (gate {gate_id})"
    if not keys.valid(message, gate_id):
        return f"forged: bad MAC for gate {gate_id}"
    return None


async def alarm_once(session: AsyncSession, kind: str, gate_id: str, detail: str, now: datetime,
                     tap_id: str | None = None) -> None:
    """One `kind` alarm for this gate (and tap) unless an unacknowledged one is under a minute old."""
    recent = select(AlarmRow.id).where(
        AlarmRow.kind == kind, AlarmRow.gate_id == gate_id, AlarmRow.created_at > now - ALARM_EVERY,
        AlarmRow.acknowledged_by.is_(None),
    )
    if tap_id is not None:
        recent = recent.where(AlarmRow.tap_id == tap_id)
    if await session.scalar(recent.limit(1)) is None:
        session.add(AlarmRow(created_at=now, kind=kind, severity="critical", gate_id=gate_id, tap_id=tap_id,
                             detail=detail[:2000]))


async def forged_alarms(session: AsyncSession, forged: dict[str, int], now: datetime) -> None:
    for gate, count in forged.items():
        await alarm_once(session, "tap_forged", gate,
                         f"{count} tap(s) on gate {gate}'s topic without its valid MAC; dead-lettered", now)


async def conflicts(session: AsyncSession, candidates: Iterable[dict[str, Any]],
                    now: datetime) -> list[dict[str, Any]]:
    """The candidate rows that differ from the row stored under their tap id, each alarmed once; the
    caller dead-letters them. Run only when a batch had duplicates (the stored rows are read back)."""
    rows = list(candidates)
    ids = sorted({row["tap_id"] for row in rows})
    stored: dict[str, Sequence[Any]] = {}
    columns = [getattr(TapRow, name) for name in CONTENT]
    for start in range(0, len(ids), 500):
        found = await session.execute(
            select(TapRow.tap_id, *columns).where(TapRow.tap_id.in_(ids[start:start + 500])))
        stored.update((r[0], tuple(r[1:])) for r in found)
    clashing = []
    for row in rows:
        first = stored.get(row["tap_id"])
        if first is not None and first != tuple(row[name] for name in CONTENT):
            clashing.append(row)
            await alarm_once(session, "tap_conflict", row["gate_id"],
                             f"a second tap {row['tap_id']} with a valid MAC but different content; "
                             "the stored one is kept, the second dead-lettered", now, tap_id=row["tap_id"])
    return clashing
