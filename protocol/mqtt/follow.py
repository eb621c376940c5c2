"""When a gate takes the whole deny-list: only while it is behind (docs/mqtt.md, "Deny-list").

Every deny-list change goes out as its delta, the retained snapshot (the whole list, while it fits MQTT)
and the retained, signed reference `DenyListSnapshotRef` (version, checksum, size: a few hundred
bytes), the beacon every gate keeps. A gate subscribes to the delta and the reference always, and to the
snapshot only while it holds an older version than the newest reference it verified (or none at all):
a connected, current gate costs its broker one small reference a block, not the whole list (up to
19 MB a gate near MAX_LIST_ITEMS ids, for every gate, at every block), and a gate that missed a delta
is repaired from the retained snapshot at its own station broker.

Gate side only, but both the real gate (gate/uplink.py) and the city bench's simulated gates follow it,
so it lives with the contract. Pure bookkeeping: the caller subscribes and unsubscribes.
"""

from __future__ import annotations

from enum import Enum

from .messages import MAX_LIST_ITEMS

#: How long a gate one version behind a reference waits for that version's delta before it takes the
#: snapshot: the delta is published first, but a relay may hand the reference down before it.
DELTA_GRACE_S = 1.0


class Take(Enum):
    """What a verified reference asks of the gate."""

    NOTHING = "nothing"  # current, or already taking the snapshot
    FETCH = "fetch"  # past MQTT's size: download the binary snapshot over HTTP
    SUBSCRIBE = "subscribe"  # take the retained snapshot now
    SUBSCRIBE_AFTER_GRACE = "subscribe_after_grace"  # one behind: its delta may still come


class SnapshotNeed:
    """Whether a gate should be subscribed to the retained deny-list snapshot, from the versions it has
    seen announced (`wanted`) and the one it holds."""

    def __init__(self) -> None:
        self.wanted = 0  # the newest version a verified reference or delta announced
        self.subscribed = False  # the caller's subscription to the snapshot topic, as it reports it

    def at_connect(self, held: int) -> bool:
        """A new session (clean: no subscription yet). True: subscribe to the snapshot at once (no list
        held, or behind what was announced before the connection went)."""
        self.subscribed = False
        if held == 0:
            self.wanted = max(self.wanted, 1)
        return self.behind(held)

    def on_ref(self, version: int, size: int, held: int) -> Take:
        if version <= held:
            return Take.NOTHING
        self.wanted = max(self.wanted, version)
        if size > MAX_LIST_ITEMS:
            return Take.FETCH
        if self.subscribed:
            return Take.NOTHING
        return Take.SUBSCRIBE_AFTER_GRACE if version == held + 1 else Take.SUBSCRIBE

    def announced(self, version: int) -> None:
        """A verified delta the gate could not apply announced `version`: the snapshot will do."""
        self.wanted = max(self.wanted, version)

    def behind(self, held: int) -> bool:
        return held < self.wanted

    def step(self, held: int) -> bool | None:
        """The subscription change due now: True subscribe, False unsubscribe, None none. The caller
        makes it on its connection (the flag is set here, as if done: a failure ends the connection,
        and a new one starts from `at_connect`)."""
        if self.behind(held) and not self.subscribed:
            self.subscribed = True
            return True
        if self.subscribed and not self.behind(held):
            self.subscribed = False
            return False
        return None
