"""Pure-Python twin of fare_core._core: the reference semantics of decide().

Every line here has a counterpart in _core.pyx; the test-suite runs both and a property test checks
they decide identically. Read this file to learn what a tap does; read the .pyx to see it done fast.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Container
from typing import Any

from . import record as _record
from .errors import FareTableError
from .reasons import DENY_FROM, Direction, Flag, GateMode, Reason, display_text
from .record import (
    DAYS_1970_TO_2000,
    FLAG_ENTRY_OPEN,
    NO_NETWORK,
    SLOT_SIZE,
    STATUS_ACTIVE,
    STATUS_BLOCKED,
    U8_MAX,
    U16_MAX,
    U32_MAX,
    CardRecord,
)
from .table_data import (
    DENYLISTED_EXIT_LET_OUT,
    MONTH_COUNTS,
    MONTH_DISCOUNTED,
    MONTHLY_BY_RIDES,
    MONTHLY_SURCHARGES_COUNT,
    OVERDRAFT_BOARDING,
    OVERDRAFT_EXIT,
    TableData,
    local_minute_of_week,
    local_seconds,
    minute_of_local_week,
)
from .tapcheck import check_tap

__all__ = [
    "CardRecord",
    "Decision",
    "FareTable",
    "Sam",
    "Tap",
    "apply_write",
    "decide",
    "decode_slot",
    "encode_slot",
    "new_wallet",
    "read_wallet",
    "siphash24",
]

_M64 = 0xFFFFFFFFFFFFFFFF


# ---------------------------------------------------------------------------------------------- MAC
def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _M64


def _siphash(k0: int, k1: int, data: bytes) -> int:
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573
    n = len(data)
    end = n - (n % 8)
    tail = (n & 0xFF) << 56 | int.from_bytes(data[end:], "little")
    words = [int.from_bytes(data[i:i + 8], "little") for i in range(0, end, 8)]
    words.append(tail)
    for m in words:
        v3 ^= m
        v0, v1, v2, v3 = _sip_rounds(v0, v1, v2, v3, 2)  # SipHash-2-4: 2 rounds a word...
        v0 ^= m
    v2 ^= 0xFF
    v0, v1, v2, v3 = _sip_rounds(v0, v1, v2, v3, 4)  # ...and 4 to finish
    return v0 ^ v1 ^ v2 ^ v3


def _sip_rounds(v0: int, v1: int, v2: int, v3: int, rounds: int) -> tuple[int, int, int, int]:
    for _ in range(rounds):
        v0 = (v0 + v1) & _M64
        v1 = _rotl(v1, 13) ^ v0
        v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & _M64
        v3 = _rotl(v3, 16) ^ v2
        v0 = (v0 + v3) & _M64
        v3 = _rotl(v3, 21) ^ v0
        v2 = (v2 + v1) & _M64
        v1 = _rotl(v1, 17) ^ v2
        v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


def siphash24(key: bytes, data: bytes) -> int:
    """SipHash-2-4 of `data` under a 16-byte key, as a 64-bit integer (the reference's LE output)."""
    if len(key) != 16:
        raise ValueError("SipHash key must be 16 bytes")
    k0, k1 = struct.unpack("<QQ", key)
    return _siphash(k0, k1, bytes(data))


class Sam:
    """The gate's secure access module: holds the master key, derives each card's MAC key."""

    __slots__ = ("_k0", "_k1")

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != 16:
            raise ValueError("master key must be 16 bytes")
        self._k0, self._k1 = struct.unpack("<QQ", master_key)

    def card_key(self, card_id: int) -> tuple[int, int]:
        ident = card_id.to_bytes(8, "little")
        return (_siphash(self._k0, self._k1, ident + b"\x00"),
                _siphash(self._k0, self._k1, ident + b"\x01"))

    def mac(self, card_id: int, body: bytes) -> int:
        k0, k1 = self.card_key(card_id)
        return _siphash(k0, k1, body)


# ------------------------------------------------------------------------------------------- codec
def encode_slot(record: CardRecord, sam: Sam) -> bytes:
    """The 64 bytes of a slot holding `record`, MAC included."""
    return _record.encode_slot(record, sam.mac)


def decode_slot(slot: bytes, card_id: int, sam: Sam) -> CardRecord:
    return _record.decode_slot(bytes(slot), card_id, sam.mac)


def read_wallet(wallet: bytes, card_id: int, sam: Sam) -> tuple[CardRecord, int]:
    """(record in force, its slot); WalletError if no slot holds a valid record."""
    return _record.read_wallet(bytes(wallet), card_id, sam.mac)


def new_wallet(record: CardRecord, sam: Sam) -> bytes:
    return _record.new_wallet(record, sam.mac)


apply_write = _record.apply_write


# -------------------------------------------------------------------------------------- fare table
class FareTable:
    """A compiled fare table ready for decide(): TableData plus a station-id index."""

    def __init__(self, data: TableData, checksum: str | None = None) -> None:
        try:
            data.validate()
        except ValueError as exc:
            raise FareTableError(f"inconsistent fare table: {exc}") from exc
        self.data = data
        self._checksum = checksum
        index = array("i", [-1]) * 65536
        for i, station_id in enumerate(data.station_ids):
            index[station_id] = i
        self._station_index = index

    @classmethod
    def from_bytes(cls, blob: bytes) -> FareTable:
        from . import artefact

        return cls(artefact.unpack(blob), artefact.checksum_of(blob))

    @property
    def version(self) -> int:
        return self.data.version

    @property
    def checksum(self) -> str:
        if self._checksum is None:
            from . import artefact

            self._checksum = artefact.checksum_of(artefact.pack(self.data))
        return self._checksum

    def station_index(self, station_id: int) -> int:
        """Dense index of an operator station id, or -1 when the table does not know it."""
        return self._station_index[station_id] if 0 <= station_id <= 0xFFFF else -1

    def __repr__(self) -> str:
        d = self.data
        return (f"FareTable(version={d.version}, stations={d.n_stations}, networks={d.n_networks}, "
                f"categories={d.n_categories}, bands={d.n_bands})")


# ------------------------------------------------------------------------------------ tap/decision
class Tap:
    """One tap as the gate saw it; the action-list fields carry a pending top-up or unblock."""

    __slots__ = ("action_id", "card_id", "direction", "gate_no", "min_counter", "mode", "station",
                 "time", "topup", "unblock")

    def __init__(self, card_id: int, station: int, direction: int, time: int, gate_no: int = 0,
                 mode: int = GateMode.NORMAL, min_counter: int = 0, topup: int = 0,
                 unblock: bool = False, action_id: int = 0) -> None:
        check_tap(card_id, station, direction, time, gate_no, mode, min_counter, topup, action_id)
        self.card_id = card_id
        self.station = station
        self.direction = int(direction)
        self.time = time
        self.gate_no = gate_no
        self.mode = int(mode)
        self.min_counter = min_counter
        self.topup = topup
        self.unblock = bool(unblock)
        #: The action's id (the backend's, increasing per card): applied only above the wallet's
        #: last_action, which it then becomes. 0: an action without id, applied as it comes.
        self.action_id = action_id

    def __repr__(self) -> str:
        return (f"Tap(card_id=0x{self.card_id:016x}, station={self.station}, direction={self.direction}, "
                f"time={self.time}, mode={self.mode})")


class Decision:
    """What decide() concluded. `record` is the 64-byte slot image to write into `slot`, or None."""

    __slots__ = ("allowed", "balance_after", "balance_before", "card_id", "counter", "fare", "flags",
                 "reason", "record", "slot", "topup")

    def __init__(self, reason: int, flags: int, fare: int, balance_before: int, balance_after: int,
                 counter: int, slot: int, record: bytes | None, card_id: int, topup: int) -> None:
        self.allowed = reason < DENY_FROM
        self.reason = int(reason)
        self.flags = int(flags)
        self.fare = fare
        self.balance_before = balance_before
        self.balance_after = balance_after
        self.counter = counter
        self.slot = slot
        self.record = record
        self.card_id = card_id
        self.topup = topup

    @property
    def display_zh(self) -> str:
        return display_text(self.reason, self.fare, self.balance_after, self.flags)[0]

    @property
    def display_en(self) -> str:
        return display_text(self.reason, self.fare, self.balance_after, self.flags)[1]

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        return (f"Decision({Reason(self.reason).name}, fare={self.fare}, balance "
                f"{self.balance_before}->{self.balance_after}, flags={Flag(self.flags)!r}, slot={self.slot})")


# -------------------------------------------------------------------------------------- time rules
def _civil_month(days_since_1970: int) -> int:
    """Months since January 2000 of a day number (Howard Hinnant's civil_from_days)."""
    z = days_since_1970 + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    year = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    month = mp + 3 if mp < 10 else mp - 9
    if month <= 2:
        year += 1
    return (year - 2000) * 12 + month - 1


def _service_day(local: int, day_start_min: int) -> int:
    """Days since 1970 of the service day (which starts at day_start_min local, not at midnight)."""
    return (local - day_start_min * 60) // 86400


class _Counts:
    """What the day, week and month have counted before this leg (the record's, or 0 in a new period)."""

    __slots__ = ("day", "month", "rides", "week", "week_start")

    def __init__(self, day: int, week: int, week_start: int, month: int, rides: int) -> None:
        self.day = day
        self.week = week
        self.week_start = week_start
        self.month = month
        self.rides = rides


def _week(d: TableData, rec: CardRecord, day_number: int) -> tuple[int, int]:
    """(week_start, week_spent before this tap): Monday to Sunday, or 7 days from the period's first
    priced tap, an exit or a boarding, charged or not (a new period starts today when the last one has
    run out)."""
    if d.week_rolling:
        if 0 <= day_number - rec.week_start < 7:
            return rec.week_start, rec.week_spent
        return day_number, 0
    start = max(0, day_number - (day_number + DAYS_1970_TO_2000 + 3) % 7)
    return start, rec.week_spent if rec.week_start == start else 0


def _tier_percent(d: TableData, category: int, counts: _Counts) -> int:
    """Percent off of the category's monthly tier in force: the last tier whose threshold the month's
    count before this leg has reached (a leg that crosses a threshold is priced at the tier it starts in)."""
    count = counts.rides if d.monthly_flags[category] & MONTHLY_BY_RIDES else counts.month
    percent = 0
    for k in range(d.monthly_tier_first[category], d.monthly_tier_first[category + 1]):
        if count < d.monthly_tier_from[k]:
            break
        percent = d.monthly_tier_percent[k]
    return percent


# ------------------------------------------------------------------------------------------- decide
def _discounted(d: TableData, base: int, transfer_from: int, network: int, category: int,
                counts: _Counts) -> tuple[int, int, bool]:
    """Transfer, then the monthly tier, then the daily cap, then the weekly cap: (fare, flags, capped)."""
    extra = 0
    if transfer_from != NO_NETWORK:
        pair = transfer_from * d.n_networks + network
        base = max(0, base - d.transfer_discount[pair])
        base -= base * d.transfer_percent[pair] // 100
        extra |= Flag.TRANSFER
    if d.monthly_networks[category * d.n_networks + network] & MONTH_DISCOUNTED:
        percent = _tier_percent(d, category, counts)
        if percent:
            base -= base * percent // 100
            extra |= Flag.MONTHLY_DISCOUNT
    cap = d.daily_cap[category]
    capped = bool(cap) and counts.day + base > cap
    if capped:
        base = max(0, cap - counts.day)
        extra |= Flag.CAPPED
    cap = d.weekly_cap[category]
    if cap and counts.week + base > cap:
        base = max(0, cap - counts.week)
        extra |= Flag.WEEKLY_CAPPED
        capped = True
    return base, extra, capped


def _transfer_origin(d: TableData, rec: CardRecord, network: int, start: int) -> int:
    """The network this leg transfers from, or NO_NETWORK when it starts a new journey."""
    last = rec.last_network
    if last >= d.n_networks or rec.transfers_used >= d.max_transfers:
        return NO_NETWORK
    window = d.transfer_window_s[last * d.n_networks + network]
    return last if window and start - rec.last_time <= window else NO_NETWORK


def _lets_out(table: FareTable, tap: Tap, rec: CardRecord) -> bool:
    """Whether the fare table lets this deny-listed phone out: an exit of an entry/exit network, the
    wallet showing an open entry (the rider is inside the paid area), the rule set to let out."""
    d = table.data
    if (d.denylisted_exit != DENYLISTED_EXIT_LET_OUT or tap.direction != Direction.EXIT
            or not rec.flags & FLAG_ENTRY_OPEN):
        return False
    station = table.station_index(tap.station)
    return station >= 0 and not d.network_flat[d.station_network[station]]


def _deny(reason: Reason, rec: CardRecord | None, balance_before: int, card_id: int) -> Decision:
    counter = rec.counter if rec is not None else 0
    balance = rec.balance if rec is not None else 0
    return Decision(reason, 0, 0, balance_before, balance, counter, -1, None, card_id, 0)


def decide(wallet: bytes, tap: Tap, table: FareTable, denylist: Container[int], sam: Sam) -> Decision:
    """Decide one tap: deny-list, card checks, fare, the new record to write. Pure: no I/O, no clock."""
    card_id = tap.card_id
    slot = _record.choose_slot(bytes(wallet), card_id, sam.mac)
    if slot < 0:
        return _deny(Reason.BAD_MAC, None, 0, card_id)
    rec = CardRecord.from_body(wallet[slot * SLOT_SIZE:])
    balance_before = rec.balance
    if rec.counter < tap.min_counter:
        return _deny(Reason.COUNTER_BACKWARDS, rec, balance_before, card_id)
    if rec.counter >= U32_MAX:  # the counter cannot advance: the card must be replaced
        return _deny(Reason.EXPIRED, rec, balance_before, card_id)
    if tap.mode in (GateMode.CLOSED, GateMode.MAINTENANCE) or (
            tap.mode == GateMode.FREE_EXIT and tap.direction == Direction.ENTRY):
        return _deny(Reason.GATE_CLOSED, rec, balance_before, card_id)

    def write(new: CardRecord, reason: Reason, flags: int, fare: int, topup: int) -> Decision:
        new = new.replace(counter=rec.counter + 1)
        image = _record.encode_slot(new, sam.mac)
        return Decision(reason, flags, fare, balance_before, new.balance, new.counter, 1 - slot, image,
                        card_id, topup)

    def refuse_listed() -> Decision:
        # A deny-listed phone is refused, and its wallet marked blocked if it is not yet.
        if rec.status == STATUS_BLOCKED:
            return _deny(Reason.DENYLISTED, rec, balance_before, card_id)
        return write(rec.replace(status=STATUS_BLOCKED), Reason.DENYLISTED, Flag.BLOCKED_NOW, 0, 0)

    # A deny-listed phone is refused, except at an exit from the paid area the fare table lets it out
    # of: then it is charged as any exit (without its pending actions) and blocked in the same write.
    listed = card_id in denylist
    if listed and not _lets_out(table, tap, rec):
        return refuse_listed()

    d = table.data
    flags = 0
    topup = 0
    rec_work = rec
    # The action list first: a top-up or unblock waiting for this phone is applied at this tap, once:
    # an action id at or below the wallet's last_action is already in it (applied at another gate).
    action_id = tap.action_id
    fresh = not action_id or action_id > rec.last_action
    if not fresh and (tap.topup or tap.unblock) and not listed:
        flags |= Flag.ACTION_ALREADY_APPLIED
    if fresh and tap.unblock and rec.status == STATUS_BLOCKED and not listed:
        rec_work = rec.replace(status=STATUS_ACTIVE)
        flags |= Flag.UNBLOCKED
    if fresh and tap.topup and not listed:
        if rec_work.balance + tap.topup <= d.max_balance:
            rec_work = rec_work.replace(balance=rec_work.balance + tap.topup)
            topup = tap.topup
            flags |= Flag.TOPUP_APPLIED
        else:
            flags |= Flag.TOPUP_REFUSED
    changed = bool(flags & (Flag.UNBLOCKED | Flag.TOPUP_APPLIED))
    # The wallet remembers the action it now holds whole; a refused top-up stays pending, so its id
    # is not recorded (the unblock it may carry is harmless to apply again).
    if changed and action_id and not flags & Flag.TOPUP_REFUSED:
        rec_work = rec_work.replace(last_action=action_id)

    def deny(reason: Reason) -> Decision:
        if listed:  # the exit cannot be made as the rule says (no balance, ...): refused as listed
            return refuse_listed()
        # A denied tap still writes an applied action, so a top-up is never lost.
        if changed:
            return write(rec_work, reason, flags, 0, topup)
        return _deny(reason, rec, balance_before, card_id)

    def blocked_if_listed(new: CardRecord) -> CardRecord:
        nonlocal flags
        if not listed:
            return new
        if rec.status != STATUS_BLOCKED:
            flags |= Flag.BLOCKED_NOW
        return new.replace(status=STATUS_BLOCKED)

    if rec_work.status != STATUS_ACTIVE and not listed:
        return deny(Reason.CARD_BLOCKED)
    station = table.station_index(tap.station)
    if station < 0:
        return deny(Reason.UNKNOWN_STATION)
    category = rec_work.category
    if category >= d.n_categories:
        return deny(Reason.WRONG_CATEGORY)

    time = tap.time
    local = local_seconds(d, time)
    days = _service_day(local, d.day_start_min)
    day_number = days - DAYS_1970_TO_2000
    if rec_work.expiry_day and day_number > rec_work.expiry_day:
        return deny(Reason.EXPIRED)
    # The calendar month turns at month_start_min local (midnight unless the rules say otherwise),
    # whatever the service day; the day and week caps follow the service day.
    month_number = _civil_month(_service_day(local, d.month_start_min))
    same_month = rec_work.month_number == month_number
    week_start, week_spent = _week(d, rec_work, day_number)
    counts = _Counts(rec_work.day_spent if rec_work.day_number == day_number else 0, week_spent,
                     week_start, rec_work.month_spent if same_month else 0,
                     rec_work.month_rides if same_month else 0)
    network = d.station_network[station]
    n_net = d.n_networks
    balance = rec_work.balance

    if tap.mode == GateMode.FREE_EXIT:  # an exit in an emergency: recorded, never charged
        new = blocked_if_listed(rec_work.replace(flags=rec_work.flags & ~FLAG_ENTRY_OPEN,
                                                 transfer_from=NO_NETWORK))
        return write(new, Reason.FREE_EXIT, flags, 0, topup)

    penalty = 0
    starts_leg = tap.direction == Direction.ENTRY or d.network_flat[network]
    if starts_leg and rec_work.flags & FLAG_ENTRY_OPEN:
        if (not d.network_flat[network] and rec_work.entry_station == tap.station
                and time - rec_work.entry_time < d.anti_passback_s):
            return deny(Reason.ALREADY_INSIDE)
        # The previous journey never exited: charge its missing-exit fare before this one starts.
        origin = table.station_index(rec_work.entry_station)
        penalty = (d.missing_exit_fare[category * d.n_stations + origin] if origin >= 0
                   else max(d.missing_exit_fare[category * d.n_stations:(category + 1) * d.n_stations]))
        flags |= Flag.MISSING_EXIT
        rec_work = rec_work.replace(transfers_used=0, last_network=NO_NETWORK)

    if not d.network_flat[network] and tap.direction == Direction.ENTRY:
        if penalty > balance or balance - penalty < d.min_entry_balance[category]:
            return deny(Reason.INSUFFICIENT_BALANCE)
        transfer_from = _transfer_origin(d, rec_work, network, time)
        new = rec_work.replace(
            balance=balance - penalty, flags=rec_work.flags | FLAG_ENTRY_OPEN, entry_station=tap.station,
            entry_time=time, transfer_from=transfer_from,
            transfers_used=rec_work.transfers_used if transfer_from != NO_NETWORK else 0)
        return write(new, Reason.MISSING_EXIT_CHARGED if penalty else Reason.OK, flags, penalty, topup)

    if d.network_flat[network]:  # boarding a flat-fare vehicle: one tap, charged now
        band = d.band_of_minute[minute_of_local_week(d, local)]
        base = d.flat_fares[(band * d.n_categories + category) * n_net + network]
        transfer_from = _transfer_origin(d, rec_work, network, time)
        fare, extra, capped = _discounted(d, base, transfer_from, network, category, counts)
        surcharge = 0
        entry_flags = rec_work.flags & ~FLAG_ENTRY_OPEN
    else:  # exit from an entry/exit network
        if not rec_work.flags & FLAG_ENTRY_OPEN:
            return deny(Reason.NO_ENTRY)
        origin = table.station_index(rec_work.entry_station)
        if origin < 0:
            return deny(Reason.UNKNOWN_STATION)
        inside = max(0, time - rec_work.entry_time)
        if (d.same_station_window_s and rec_work.entry_station == tap.station
                and inside <= d.same_station_window_s):
            base = d.same_station_fare[category]
            flags |= Flag.SAME_STATION
        else:
            band = d.band_of_minute[local_minute_of_week(d, rec_work.entry_time)]
            base = d.fares[((band * d.n_categories + category) * d.n_stations + origin) * d.n_stations
                           + station]
        transfer_from = rec_work.transfer_from if rec_work.transfer_from < n_net else NO_NETWORK
        fare, extra, capped = _discounted(d, base, transfer_from, network, category, counts)
        surcharge = d.overstay_surcharge if d.max_inside_s and inside > d.max_inside_s else 0
        if surcharge:
            extra |= Flag.OVERSTAY
        entry_flags = rec_work.flags & ~FLAG_ENTRY_OPEN

    total = fare + surcharge + penalty
    if total > balance:
        # An overdraft: a tap of a kind the rules name, from a balance above zero, down to the limit;
        # the next top-up recovers it (a negative balance is topped up like any other).
        kind = OVERDRAFT_BOARDING if d.network_flat[network] else OVERDRAFT_EXIT
        if not (d.overdraft_taps & kind and balance > 0 and total - balance <= d.overdraft_limit):
            return deny(Reason.INSUFFICIENT_BALANCE)
        extra |= Flag.OVERDRAFT
    flags |= extra
    month_spent, month_rides = counts.month, counts.rides
    if d.monthly_networks[category * n_net + network] & MONTH_COUNTS:
        counted = fare + surcharge if d.monthly_flags[category] & MONTHLY_SURCHARGES_COUNT else fare
        month_spent = min(U32_MAX, month_spent + counted)
        month_rides = min(U8_MAX, month_rides + 1)
    new = rec_work.replace(
        balance=balance - total, flags=entry_flags, transfer_from=NO_NETWORK,
        transfers_used=rec_work.transfers_used + 1 if transfer_from != NO_NETWORK else 0,
        last_station=tap.station, last_time=time, last_network=network,
        day_number=day_number, day_spent=min(U16_MAX, counts.day + fare),
        week_start=counts.week_start, week_spent=min(U16_MAX, counts.week + fare),
        month_number=month_number, month_spent=month_spent, month_rides=month_rides)
    if listed:
        new = blocked_if_listed(new)
        reason = Reason.DENYLISTED_EXIT_CHARGED
    elif surcharge:
        reason = Reason.OVERSTAY_SURCHARGE
    elif penalty:
        reason = Reason.MISSING_EXIT_CHARGED
    elif capped:
        reason = Reason.CAP_REACHED
    else:
        reason = Reason.OK
    return write(new, reason, flags, total, topup)
