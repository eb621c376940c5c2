"""Wallet writes this gate could not confirm, kept until the phone's next tap here settles them.

When a write's answer is lost and the phone leaves before a read-back, the gate journals the tap
flagged UNCONFIRMED with the barrier shut (gate/controller.py). The commuter usually taps again at
once; if the wallet then holds the very record the gate wrote, the write landed: the gate journals a
RECOVERED tap (nothing written, nothing charged) and lets the commuter through as the first tap had
decided. If it does not, the write did not land (or the phone has been written elsewhere since): the
entry is forgotten and the tap decided afresh (an OTA top-up the write carried is then held back at
this gate unless the wallet shows the write surely did not land: see GateController._hold_back_action).
A gate that died while a write was on the wire (power cut, kill -9) knows no more than one whose
answer was lost: at its next start the tap's row, journaled unsettled with the write it carried, is
rewritten UNCONFIRMED and the write kept here the same way (GateController.start).

The set is durable, in the journal's `unconfirmed` table, written in the same transaction as the
tap's UNCONFIRMED rewrite and removed in the same transaction as the RECOVERED row, so a power cut
or kill -9 between the two taps changes nothing. It cannot be rebuilt from the tap rows: those are
deleted once the backend commits them (seconds later when online), and the UNCONFIRMED row no longer
says what the first decision was (it is journaled refused) nor which record bytes were written.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

import fare_core
from fare_core import WalletError
from fare_core.record import SLOT_SIZE

from .journal import Journal

log = logging.getLogger(__name__)

#: How long after its tap an unconfirmed write can still be recovered at this gate. A commuter whose
#: barrier stayed shut taps again within seconds, or within minutes when the gate was restarting; a
#: day later they have certainly tapped elsewhere (so the wallet no longer holds the record and the
#: entry could only be forgotten) and the back office has settled the tap from the phone's next link
#: anywhere. One service day keeps the table small without ever dropping a re-tap that could match.
RECOVERY_WINDOW_S = 24 * 3600
#: The same bound in taps, which a gate clock stepped back cannot stretch: a busy gate serves about one
#: tap every two seconds, some 30,000 taps in a service day.
RECOVERY_WINDOW_TAPS = 50_000


@dataclass(frozen=True, slots=True)
class UnconfirmedWrite:
    """One write whose landing this gate does not know, and what its first tap decided."""

    card_id: int
    seq: int  # the journal row flagged UNCONFIRMED
    at: float  # the gate's clock at the tap (unix seconds)
    slot: int  # the wallet slot written
    record: bytes  # the 64-byte record written there
    counter: int  # the counter that record carries
    allowed: bool  # what the first tap decided (the barrier stayed shut)
    reason: int  # its fare_core Reason
    fare_table_version: int
    action_id: int | None  # the OTA action the write applied, if any

    def detail(self) -> str:
        """The columns the journal keeps as one JSON text (card, seq and time are columns)."""
        return json.dumps({"slot": self.slot, "record": self.record.hex(), "counter": self.counter,
                           "allowed": self.allowed, "reason": self.reason,
                           "fare_table_version": self.fare_table_version, "action_id": self.action_id})

    @classmethod
    def from_row(cls, card_id: int, seq: int, at: float, detail: str) -> UnconfirmedWrite:
        d = json.loads(detail)
        return cls(card_id, seq, at, int(d["slot"]), bytes.fromhex(d["record"]), int(d["counter"]),
                   bool(d["allowed"]), int(d["reason"]), int(d["fare_table_version"]),
                   None if d["action_id"] is None else int(d["action_id"]))

    def landed_in(self, wallet: bytes, sam: fare_core.Sam) -> fare_core.CardRecord | None:
        """The record in force when it is exactly the one this write put there, else None.

        Both checks: the slot holds the bytes written (a record of the same counter written by another
        gate after this one failed differs in its times, station and MAC) and it is the record in force
        (nothing has been written since)."""
        start = self.slot * SLOT_SIZE
        if bytes(wallet[start:start + SLOT_SIZE]) != self.record:
            return None
        try:
            record, slot = fare_core.read_wallet(wallet, self.card_id, sam)
        except WalletError:
            return None
        return record if int(slot) == self.slot and record.counter == self.counter else None


    def surely_not_landed(self, wallet: bytes, sam: fare_core.Sam) -> bool:
        """The record in force is the one this write was to follow (its counter is one less): the
        write did not land. Any other record (written since, elsewhere, or unreadable) leaves it open."""
        try:
            record, _slot = fare_core.read_wallet(wallet, self.card_id, sam)
        except WalletError:
            return False
        return bool(record.counter == self.counter - 1)


class UnconfirmedWrites:
    """The gate's unconfirmed writes by card, loaded from the journal at start (see the module doc)."""

    def __init__(self, journal: Journal, clock: Callable[[], float], *,
                 window_s: float = RECOVERY_WINDOW_S, window_taps: int = RECOVERY_WINDOW_TAPS) -> None:
        self.journal = journal
        self.clock = clock
        self.window_s = window_s
        self.window_taps = window_taps
        self._by_card: dict[int, UnconfirmedWrite] = {}
        stale = []
        for card_id, seq, at, detail in journal.unconfirmed_writes():
            try:
                write = UnconfirmedWrite.from_row(card_id, seq, at, detail)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("unconfirmed write of %016x unreadable (%s): forgotten", card_id, exc)
                stale.append(card_id)
                continue
            if self.expired(write):
                stale.append(card_id)
            else:
                self._by_card[card_id] = write
        for card_id in stale:
            journal.forget_unconfirmed(card_id)

    def __len__(self) -> int:
        return len(self._by_card)

    def __contains__(self, card_id: object) -> bool:
        return card_id in self._by_card

    def expired(self, write: UnconfirmedWrite) -> bool:
        """Older than the recovery window, by the gate's clock or by the taps journaled since."""
        too_old = self.clock() - write.at > self.window_s
        return too_old or self.journal.last_seq - write.seq > self.window_taps

    async def remember(self, write: UnconfirmedWrite, payload: bytes) -> None:
        """Rewrite the tap's row as `payload` (flagged UNCONFIRMED) and keep `write`, durably, at once."""
        await asyncio.to_thread(self.journal.replace_unconfirmed, write.seq, payload, write.card_id,
                                write.at, write.detail())
        self._by_card[write.card_id] = write

    def take(self, card_id: int) -> UnconfirmedWrite | None:
        """The card's unconfirmed write, out of the set in memory. The caller settles it durably: with
        a RECOVERED row (`Journal.append(..., resolves=card_id)`) or with `forget`; until then a restart
        finds it again."""
        return self._by_card.pop(card_id, None)

    def keep(self, write: UnconfirmedWrite) -> None:
        """Put back a write taken but not settled (the tap that took it was abandoned)."""
        self._by_card[write.card_id] = write

    async def forget(self, card_id: int) -> None:
        """The write did not land, or can no longer be told: the next tap is decided afresh."""
        self._by_card.pop(card_id, None)
        await asyncio.to_thread(self.journal.forget_unconfirmed, card_id)
