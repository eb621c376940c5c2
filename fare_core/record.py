"""The wallet's card record: its fixed 64-byte slot layout and the two-slot wallet around it.

This module is the readable, shared half of the codec (CardRecord, the struct layout, slot choice);
the MAC comes from whichever core is selected, so the compiled and the twin codecs agree byte for byte.
decide() does not go through CardRecord objects: the compiled core reads the same offsets in C, taken
from BODY_FIELDS below through the generated fare_core/_codes.pxi (see fare_core/_codes.py).

Slot layout (little-endian), see docs/fare_core.md for the meaning of each field:

    0 layout  1 category  2 status  3 flags  4..11 card_id  12 balance(i32)  16 counter
    20 expiry_day  22 entry_station  24 entry_time  28 transfer_from  29 transfers_used
    30 last_station  32 last_time  36 last_network  37 month_rides  38 day_number  40 day_spent(u16)
    42 week_start  44 month_number  46 week_spent(u16)  48 month_spent  52 last_action  56..63 MAC

Layout 2 (the weekly cap and ride-count months) fitted in the same 64 bytes: day_spent became a
saturating u16 (a daily cap is at most 65535 fen, which the compiler enforces), giving bytes 42-43 to
week_start; the former padding holds month_rides (37) and week_spent (46-47). A layout-1 record is
read correctly (its u32 day_spent saturated to 65535, no week and no rides counted yet) and written
back as layout 2 at its next tap.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from .errors import WalletError

LAYOUT = 2
#: Layouts a slot may carry and still be read (a layout-1 record is read as described above).
READABLE_LAYOUTS = (1, 2)
SLOT_SIZE = 64
WALLET_SIZE = 2 * SLOT_SIZE
MAC_OFFSET = 56
NO_NETWORK = 255

STATUS_ACTIVE = 0
STATUS_BLOCKED = 1
FLAG_ENTRY_OPEN = 1

#: Day numbers on the card (expiry_day, day_number) count from 2000-01-01: 10957 days after 1970-01-01.
DAYS_1970_TO_2000 = 10957
#: The largest value of the record's 32-bit fields (counter, month_spent).
U32_MAX = 0xFFFFFFFF
#: The largest value of the saturating 16-bit sums (day_spent, week_spent) and of month_rides.
U16_MAX = 0xFFFF
U8_MAX = 0xFF

#: The body's fields in slot order with their struct codes, None for padding: the one definition of the
#: layout. The struct, FIELD_OFFSETS and the compiled core's OFF_* constants all derive from it.
BODY_FIELDS: tuple[tuple[str | None, str], ...] = (
    ("layout", "B"), ("category", "B"), ("status", "B"), ("flags", "B"), ("card_id", "Q"),
    ("balance", "i"), ("counter", "I"), ("expiry_day", "H"), ("entry_station", "H"),
    ("entry_time", "I"), ("transfer_from", "B"), ("transfers_used", "B"), ("last_station", "H"),
    ("last_time", "I"), ("last_network", "B"), ("month_rides", "B"), ("day_number", "H"),
    ("day_spent", "H"), ("week_start", "H"), ("month_number", "H"), ("week_spent", "H"),
    ("month_spent", "I"), ("last_action", "I"),
)
#: Byte offset of each named field in a slot.
FIELD_OFFSETS: dict[str, int] = {
    name: struct.calcsize("<" + "".join(code for _, code in BODY_FIELDS[:position]))
    for position, (name, _) in enumerate(BODY_FIELDS) if name is not None
}
_BODY = struct.Struct("<" + "".join(code for _, code in BODY_FIELDS))
assert _BODY.size == MAC_OFFSET
_CARD_ID = slice(FIELD_OFFSETS["card_id"], FIELD_OFFSETS["card_id"] + 8)
_COUNTER = slice(FIELD_OFFSETS["counter"], FIELD_OFFSETS["counter"] + 4)
#: Where layout 1 kept day_spent, as a u32 (the offset and size the C core's parser uses too).
LAYOUT1_DAY_SPENT = slice(40, 44)

#: mac(card_id, body_56_bytes) -> 64-bit tag
MacFunction = Callable[[int, bytes], int]


@dataclass(frozen=True, slots=True)
class CardRecord:
    """One wallet record, as the card holds it (minus the MAC)."""

    card_id: int
    category: int = 0
    balance: int = 0
    status: int = STATUS_ACTIVE
    counter: int = 0
    expiry_day: int = 0
    flags: int = 0
    entry_station: int = 0
    entry_time: int = 0
    transfer_from: int = NO_NETWORK
    transfers_used: int = 0
    last_station: int = 0
    last_time: int = 0
    last_network: int = NO_NETWORK
    day_number: int = 0
    day_spent: int = 0
    month_number: int = 0
    month_spent: int = 0
    #: The id of the last over-the-air action written into this wallet (0: none yet). Layout 1 kept
    #: these bytes as zero padding, so older records read 0 and stay valid.
    last_action: int = 0
    #: Rides counted toward month_number's monthly scheme (saturates at 255).
    month_rides: int = 0
    #: Service day (days since 2000-01-01) the weekly cap's period of week_spent starts on.
    week_start: int = 0
    #: Fen charged toward the weekly cap in the period from week_start (saturates at 65535).
    week_spent: int = 0

    @property
    def entry_open(self) -> bool:
        return bool(self.flags & FLAG_ENTRY_OPEN)

    @property
    def blocked(self) -> bool:
        return self.status == STATUS_BLOCKED

    def replace(self, **changes: Any) -> CardRecord:
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def body(self) -> bytes:
        """The 56 bytes the MAC covers; struct raises for any field out of its range."""
        try:
            return _BODY.pack(
                LAYOUT, self.category, self.status, self.flags, self.card_id, self.balance,
                self.counter, self.expiry_day, self.entry_station, self.entry_time,
                self.transfer_from, self.transfers_used, self.last_station, self.last_time,
                self.last_network, self.month_rides, self.day_number, self.day_spent, self.week_start,
                self.month_number, self.week_spent, self.month_spent, self.last_action,
            )
        except struct.error as exc:
            raise ValueError(f"card record field out of range: {exc}") from exc

    @classmethod
    def from_body(cls, body: bytes) -> CardRecord:
        """The record a slot body holds, layout 2 or layout 1 (see the module docstring)."""
        (layout, category, status, flags, card_id, balance, counter, expiry_day, entry_station,
         entry_time, transfer_from, transfers_used, last_station, last_time, last_network, month_rides,
         day_number, day_spent, week_start, month_number, week_spent, month_spent,
         last_action) = _BODY.unpack_from(body)
        if layout == 1:  # day_spent was a u32 over 40..43; 37 and 46..47 were zero padding
            day_spent = min(U16_MAX, int.from_bytes(body[LAYOUT1_DAY_SPENT], "little"))
            month_rides = week_start = week_spent = 0
        return cls(card_id, category, balance, status, counter, expiry_day, flags, entry_station,
                   entry_time, transfer_from, transfers_used, last_station, last_time, last_network,
                   day_number, day_spent, month_number, month_spent, last_action, month_rides,
                   week_start, week_spent)


def encode_slot(record: CardRecord, mac: MacFunction) -> bytes:
    body = record.body()
    return body + mac(record.card_id, body).to_bytes(8, "little")


def slot_valid(slot: bytes, card_id: int, mac: MacFunction) -> bool:
    """A slot counts only with the current layout, the phone's own card id and a good MAC."""
    return (
        slot[FIELD_OFFSETS["layout"]] in READABLE_LAYOUTS
        and int.from_bytes(slot[_CARD_ID], "little") == card_id
        and mac(card_id, slot[:MAC_OFFSET]) == int.from_bytes(slot[MAC_OFFSET:SLOT_SIZE], "little")
    )


def slot_counter(slot: bytes) -> int:
    return int.from_bytes(slot[_COUNTER], "little")


def choose_slot(wallet: bytes, card_id: int, mac: MacFunction) -> int:
    """Index of the valid slot with the higher counter (slot 0 on a tie), or -1 if neither is valid.

    The slot claiming the higher counter is checked first; the other is only checked when it fails,
    so a healthy wallet costs one MAC.
    """
    if len(wallet) != WALLET_SIZE:
        raise WalletError(f"wallet must be {WALLET_SIZE} bytes, got {len(wallet)}")
    first = 1 if slot_counter(wallet[SLOT_SIZE:]) > slot_counter(wallet[:SLOT_SIZE]) else 0
    for index in (first, 1 - first):
        if slot_valid(wallet[index * SLOT_SIZE:(index + 1) * SLOT_SIZE], card_id, mac):
            return index
    return -1


def decode_slot(slot: bytes, card_id: int, mac: MacFunction) -> CardRecord:
    if len(slot) != SLOT_SIZE:
        raise WalletError(f"slot must be {SLOT_SIZE} bytes, got {len(slot)}")
    if not slot_valid(slot, card_id, mac):
        raise WalletError(f"slot is not a valid record of card {card_id:016x}")
    return CardRecord.from_body(slot)


def read_wallet(wallet: bytes, card_id: int, mac: MacFunction) -> tuple[CardRecord, int]:
    """The record in force and its slot; WalletError when no slot is valid."""
    index = choose_slot(wallet, card_id, mac)
    if index < 0:
        raise WalletError(f"no valid record for card {card_id:016x}")
    return CardRecord.from_body(wallet[index * SLOT_SIZE:]), index


def new_wallet(record: CardRecord, mac: MacFunction) -> bytes:
    """A freshly issued wallet: the record in slot 0, slot 1 blank."""
    return encode_slot(record, mac) + bytes(SLOT_SIZE)


def apply_write(wallet: bytes, slot: int, record: bytes, torn_at: int | None = None) -> bytes:
    """The wallet after writing `record` into `slot`; `torn_at=k` keeps only its first k bytes,
    as when a phone leaves the field mid-write."""
    if len(wallet) != WALLET_SIZE or len(record) != SLOT_SIZE or slot not in (0, 1):
        raise WalletError("apply_write needs a 128-byte wallet, slot 0 or 1 and a 64-byte record")
    written = SLOT_SIZE if torn_at is None else max(0, min(SLOT_SIZE, torn_at))
    start = slot * SLOT_SIZE
    return wallet[:start] + record[:written] + wallet[start + written:]
