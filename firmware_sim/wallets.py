"""The ground truth: the true wallet bytes of every phone, as the SIM card holds them.

Wallets are created and read with fare_core's card-record codec, so what a test compares against is
exactly what a gate's SAM would accept. Writes go through `fare_core.apply_write`, byte-exact,
including torn writes (only the first k bytes of the slot changed). Thread-safe: the reader's RF
operations and the scripted API touch it from different threads.

A phone is a card id and a handset: handset 0 is the genuine phone; `clone(card_id)` makes another
handset holding a byte-exact copy of the wallet under the same card id (a cloned SIM), which from then
on is written apart from the genuine one, as two real phones would be.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import fare_core
from protocol.serial.messages import SLOT_SIZE, WALLET_SIZE


@dataclass(frozen=True, slots=True)
class WriteRecord:
    """One write as the phone saw it (for tests: which slot, how many bytes landed)."""

    card_id: int
    slot: int
    bytes_written: int
    handset: int = 0

    @property
    def torn(self) -> bool:
        return self.bytes_written < SLOT_SIZE


class WalletStore:
    """card_id -> 128 wallet bytes, plus the SAM that signs the records it issues."""

    def __init__(self, master_key: bytes) -> None:
        self.sam = fare_core.Sam(master_key)
        self._wallets: dict[int, bytes] = {}
        self._clones: dict[tuple[int, int], bytes] = {}  # (card_id, handset >= 1) -> wallet bytes
        self._lock = threading.Lock()
        self.writes: list[WriteRecord] = []

    def __contains__(self, card_id: object) -> bool:
        return card_id in self._wallets

    def __len__(self) -> int:
        return len(self._wallets)

    def issue(self, record: fare_core.CardRecord) -> bytes:
        """Put a fresh wallet holding `record` on the phone `record.card_id` (replacing any)."""
        wallet = bytes(fare_core.new_wallet(record, self.sam))
        with self._lock:
            self._wallets[record.card_id] = wallet
        return wallet

    def load(self, card_id: int, wallet: bytes) -> None:
        """Put exact wallet bytes on a phone (a replayed, cloned or corrupted wallet, for tests)."""
        if len(wallet) != WALLET_SIZE:
            raise ValueError(f"a wallet is {WALLET_SIZE} bytes, not {len(wallet)}")
        with self._lock:
            self._wallets[card_id] = bytes(wallet)

    def wallet(self, card_id: int, handset: int = 0) -> bytes:
        """The true wallet bytes; KeyError for a phone (or handset) without a wallet."""
        with self._lock:
            return self._wallets[card_id] if handset == 0 else self._clones[card_id, handset]

    def record(self, card_id: int, handset: int = 0) -> tuple[fare_core.CardRecord, int]:
        """The record in force and its slot, as a SAM reads it (fare_core.WalletError if none)."""
        record, slot = fare_core.read_wallet(self.wallet(card_id, handset), card_id, self.sam)
        return record, int(slot)

    def write(self, card_id: int, slot: int, record: bytes, torn_at: int | None = None,
              handset: int = 0) -> bytes:
        """Write `record` into `slot`; `torn_at=k` lands only its first k bytes. Returns the wallet."""
        with self._lock:
            key = (card_id, handset)
            old = self._wallets[card_id] if handset == 0 else self._clones[key]
            wallet = bytes(fare_core.apply_write(old, slot, record, torn_at))
            if handset == 0:
                self._wallets[card_id] = wallet
            else:
                self._clones[key] = wallet
            landed = SLOT_SIZE if torn_at is None else max(0, min(SLOT_SIZE, torn_at))
            self.writes.append(WriteRecord(card_id, slot, landed, handset))
        return wallet

    def slot(self, card_id: int, slot: int, handset: int = 0) -> bytes:
        start = slot * SLOT_SIZE
        return self.wallet(card_id, handset)[start:start + SLOT_SIZE]

    def clone(self, card_id: int) -> int:
        """A second handset holding a byte-exact copy of the phone's wallet now; returns its number."""
        with self._lock:
            wallet = self._wallets[card_id]
            handset = 1 + max((h for c, h in self._clones if c == card_id), default=0)
            self._clones[card_id, handset] = wallet
        return handset

    def handsets(self, card_id: int) -> list[int]:
        """The handsets holding this card's wallet: [0] for a phone never cloned."""
        with self._lock:
            return [0, *sorted(h for c, h in self._clones if c == card_id)]
