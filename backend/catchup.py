"""A gate's way back to the current deny-list: one net delta from the version it holds.

A gate applies a delta only from exactly its `base_version` (gate/state.py), so a gate back from a
week offline cannot apply the next live delta and asks (`SnapshotRequest{kind: denylist,
have_version}`). The whole list is the costly answer (10 million phones: 80 MB binary to every gate);
the cheap one is the *net* change from the version it holds to the current one, computed from the
history the backend keeps (`denylist_entries`: added_version, removed_version) and sent as an ordinary
signed `DenyListDeltaMessage` (base = the gate's version, version and checksum the current ones), which
the gate applies with the code it has. Gates already current ignore it (not newer); a gate at another
old version cannot apply it and asks in turn (backend/control.py coalesces and bounds the asking).

The work is bounded: at most `MAX_CATCH_UP_ROWS` history rows are read for one answer; past that, or
when the net delta would not be smaller than the whole list, the answer is the snapshot.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from protocol.mqtt import MAX_LIST_ITEMS, DenyListDeltaMessage

from .tables import DenyListEntryRow, DenyListVersionRow

#: History rows read for one catch-up at most (a week of a 10-million-phone list at 0.1% a day is
#: 70,000); an older gate gets the snapshot, so no request makes the backend read the whole history.
MAX_CATCH_UP_ROWS = 250_000


class Answer(enum.StrEnum):
    """What a gate holding some deny-list version needs."""

    DELTA = "delta"  # the net delta from its version (published, or to publish)
    CURRENT = "current"  # nothing: it holds the current version
    SNAPSHOT = "snapshot"  # the whole list: no version yet, a version the backend never made, or too far


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


async def catch_up(session: AsyncSession, have: int, *, max_rows: int = MAX_CATCH_UP_ROWS
                   ) -> tuple[Answer, DenyListDeltaMessage | None]:
    """What a gate holding version `have` needs, with the delta (unsigned: the publisher signs) when
    that is the answer. The snapshot when the backend has no version yet (the empty list, as before
    any change), when `have` is one it never made (newer than the current one), when more than
    `max_rows` history rows changed since, or when the net delta is not smaller than the list."""
    current = (await session.execute(
        select(DenyListVersionRow).order_by(DenyListVersionRow.version.desc()).limit(1))).scalar()
    if current is None or have < 0 or have > current.version:
        return Answer.SNAPSHOT, None
    if have == current.version:
        return Answer.CURRENT, None
    rows = (await session.execute(
        select(DenyListEntryRow.card_id, DenyListEntryRow.added_version, DenyListEntryRow.removed_version)
        .where(or_(DenyListEntryRow.added_version > have, DenyListEntryRow.removed_version > have))
        .limit(max_rows + 1)
    )).all()
    if len(rows) > max_rows:
        return Answer.SNAPSHOT, None
    history = [(int(card, 16), int(added), None if removed is None else int(removed))
               for card, added, removed in rows]
    change = net_change(history, have, current.version, current.checksum)
    ids = len(change.add) + len(change.remove)
    if ids > MAX_LIST_ITEMS or ids >= current.size:
        return Answer.SNAPSHOT, None
    return Answer.DELTA, DenyListDeltaMessage(
        version=change.version, base_version=change.base_version, add=change.add, remove=change.remove,
        checksum=change.checksum, time=datetime.now(UTC))
