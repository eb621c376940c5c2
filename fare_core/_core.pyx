# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled fare_core: SipHash MAC, card-record codec, FareTable and decide() in C.

The twin in _core_py.py is the reference; this file mirrors it line for line, with the record held in
a C struct and the fare table read through typed memoryviews, so a tap costs no Python objects but the
Decision and the 64 bytes it writes. Arithmetic is done in int64 and clamped exactly where the twin
clamps, so both give the same answer on every input (a property test checks it).
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize

from fare_core._denylist cimport DenyList as CompiledDenyList

from . import record as _record
from .errors import FareTableError, WalletError
from .reasons import Direction, Flag, GateMode, Reason, display_text
from .record import CardRecord

__all__ = [
    "CardRecord", "Decision", "FareTable", "Sam", "Tap", "apply_write", "decide", "decode_slot",
    "encode_slot", "new_wallet", "read_wallet", "siphash24",
]


# Sizes, reason codes and flags as C constants (values fixed in record.py and reasons.py, checked below).
cdef enum:
    SLOT = 64
    BODY = 56
    NO_NET = 255
    DAYS_1970_TO_2000 = 10957
    LAYOUT = 1
    ENTRY_OPEN = 1
    ST_ACTIVE = 0
    ST_BLOCKED = 1
    DENY_FROM = 10
    R_OK = 0
    R_CAP = 1
    R_OVERSTAY = 2
    R_FREE_EXIT = 3
    R_MISSING_EXIT = 4
    R_DENYLISTED = 10
    R_BLOCKED = 11
    R_BALANCE = 12
    R_INSIDE = 13
    R_NO_ENTRY = 14
    R_EXPIRED = 15
    R_BAD_MAC = 16
    R_COUNTER = 17
    R_STATION = 18
    R_CLOSED = 19
    R_CATEGORY = 20
    F_CAPPED = 1
    F_OVERSTAY = 2
    F_TRANSFER = 4
    F_MONTHLY = 8
    F_MISSING_EXIT = 16
    F_TOPUP = 32
    F_TOPUP_REFUSED = 64
    F_UNBLOCKED = 128
    F_SAME_STATION = 256
    F_BLOCKED_NOW = 512

cdef int64_t U32_MAX = 0xFFFFFFFF

assert (Reason.CAP_REACHED, Reason.DENYLISTED, Reason.WRONG_CATEGORY, Flag.BLOCKED_NOW) == (1, 10, 20, 512)

MIN_TAP_TIME = 946771200


# ------------------------------------------------------------------------------------------ SipHash
cdef inline uint64_t _rotl(uint64_t x, int b) noexcept nogil:
    return (x << b) | (x >> (64 - b))


cdef inline uint64_t _le64(const uint8_t* p) noexcept nogil:
    return (<uint64_t>p[0] | (<uint64_t>p[1] << 8) | (<uint64_t>p[2] << 16) | (<uint64_t>p[3] << 24)
            | (<uint64_t>p[4] << 32) | (<uint64_t>p[5] << 40) | (<uint64_t>p[6] << 48)
            | (<uint64_t>p[7] << 56))


cdef inline uint32_t _le32(const uint8_t* p) noexcept nogil:
    return <uint32_t>p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef inline uint16_t _le16(const uint8_t* p) noexcept nogil:
    return <uint16_t>(p[0] | (p[1] << 8))


cdef inline void _put64(uint8_t* p, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(8):
        p[i] = <uint8_t>(v >> (8 * i))


cdef inline void _put32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>v
    p[1] = <uint8_t>(v >> 8)
    p[2] = <uint8_t>(v >> 16)
    p[3] = <uint8_t>(v >> 24)


cdef inline void _put16(uint8_t* p, uint16_t v) noexcept nogil:
    p[0] = <uint8_t>v
    p[1] = <uint8_t>(v >> 8)


cdef uint64_t _siphash(uint64_t k0, uint64_t k1, const uint8_t* data, size_t n) noexcept nogil:
    cdef uint64_t v0 = k0 ^ 0x736F6D6570736575ULL
    cdef uint64_t v1 = k1 ^ 0x646F72616E646F6DULL
    cdef uint64_t v2 = k0 ^ 0x6C7967656E657261ULL
    cdef uint64_t v3 = k1 ^ 0x7465646279746573ULL
    cdef size_t end = n - (n % 8)
    cdef size_t i
    cdef int r, j
    cdef uint64_t m
    i = 0
    while i <= end:
        if i < end:
            m = _le64(data + i)
        else:  # the last word: the tail bytes and the length in the top byte
            m = (<uint64_t>(n & 0xFF)) << 56
            for j in range(<int>(n - end)):
                m |= (<uint64_t>data[end + j]) << (8 * j)
        v3 ^= m
        for r in range(2):
            v0 += v1; v1 = _rotl(v1, 13); v1 ^= v0; v0 = _rotl(v0, 32)
            v2 += v3; v3 = _rotl(v3, 16); v3 ^= v2
            v0 += v3; v3 = _rotl(v3, 21); v3 ^= v0
            v2 += v1; v1 = _rotl(v1, 17); v1 ^= v2; v2 = _rotl(v2, 32)
        v0 ^= m
        i += 8
    v2 ^= 0xFF
    for r in range(4):
        v0 += v1; v1 = _rotl(v1, 13); v1 ^= v0; v0 = _rotl(v0, 32)
        v2 += v3; v3 = _rotl(v3, 16); v3 ^= v2
        v0 += v3; v3 = _rotl(v3, 21); v3 ^= v0
        v2 += v1; v1 = _rotl(v1, 17); v1 ^= v2; v2 = _rotl(v2, 32)
    return v0 ^ v1 ^ v2 ^ v3


def siphash24(bytes key, data):
    """SipHash-2-4 of `data` under a 16-byte key, as a 64-bit integer (the reference's LE output)."""
    if len(key) != 16:
        raise ValueError("SipHash key must be 16 bytes")
    cdef bytes buf = bytes(data)
    cdef const uint8_t* k = <const uint8_t*>PyBytes_AS_STRING(key)
    return _siphash(_le64(k), _le64(k + 8), <const uint8_t*>PyBytes_AS_STRING(buf), len(buf))


cdef class Sam:
    """The gate's secure access module: holds the master key, derives each card's MAC key."""

    cdef uint64_t k0, k1

    def __init__(self, bytes master_key):
        if len(master_key) != 16:
            raise ValueError("master key must be 16 bytes")
        cdef const uint8_t* k = <const uint8_t*>PyBytes_AS_STRING(master_key)
        self.k0 = _le64(k)
        self.k1 = _le64(k + 8)

    cdef inline uint64_t mac_c(self, uint64_t card_id, const uint8_t* body) noexcept nogil:
        cdef uint8_t ident[9]
        _put64(ident, card_id)
        ident[8] = 0
        cdef uint64_t c0 = _siphash(self.k0, self.k1, ident, 9)
        ident[8] = 1
        cdef uint64_t c1 = _siphash(self.k0, self.k1, ident, 9)
        return _siphash(c0, c1, body, BODY)

    def card_key(self, card_id):
        cdef uint8_t ident[9]
        _put64(ident, card_id)
        ident[8] = 0
        c0 = _siphash(self.k0, self.k1, ident, 9)
        ident[8] = 1
        return (c0, _siphash(self.k0, self.k1, ident, 9))

    def mac(self, card_id, body):
        cdef bytes b = bytes(body)
        if len(b) != BODY:
            return _siphash_any(self, card_id, b)
        return self.mac_c(card_id, <const uint8_t*>PyBytes_AS_STRING(b))


def _siphash_any(Sam sam, card_id, bytes body):
    k0, k1 = sam.card_key(card_id)
    return _siphash(k0, k1, <const uint8_t*>PyBytes_AS_STRING(body), len(body))


# -------------------------------------------------------------------------------------------- codec
def encode_slot(record, Sam sam):
    """The 64 bytes of a slot holding `record`, MAC included."""
    return _record.encode_slot(record, sam.mac)


def decode_slot(slot, card_id, Sam sam):
    return _record.decode_slot(bytes(slot), card_id, sam.mac)


def read_wallet(wallet, card_id, Sam sam):
    """(record in force, its slot); WalletError if no slot holds a valid record."""
    return _record.read_wallet(bytes(wallet), card_id, sam.mac)


def new_wallet(record, Sam sam):
    return _record.new_wallet(record, sam.mac)


apply_write = _record.apply_write


cdef struct Rec:
    uint8_t category, status, flags, transfer_from, transfers_used, last_network
    uint64_t card_id
    int64_t balance
    uint32_t counter, entry_time, last_time, day_spent, month_spent
    uint16_t expiry_day, entry_station, last_station, day_number, month_number


cdef inline void _parse(const uint8_t* p, Rec* r) noexcept nogil:
    r.category = p[1]
    r.status = p[2]
    r.flags = p[3]
    r.card_id = _le64(p + 4)
    r.balance = <int32_t>_le32(p + 12)
    r.counter = _le32(p + 16)
    r.expiry_day = _le16(p + 20)
    r.entry_station = _le16(p + 22)
    r.entry_time = _le32(p + 24)
    r.transfer_from = p[28]
    r.transfers_used = p[29]
    r.last_station = _le16(p + 30)
    r.last_time = _le32(p + 32)
    r.last_network = p[36]
    r.day_number = _le16(p + 38)
    r.day_spent = _le32(p + 40)
    r.month_number = _le16(p + 44)
    r.month_spent = _le32(p + 48)


cdef inline void _pack(const Rec* r, uint8_t* p) noexcept nogil:
    memset(p, 0, BODY)
    p[0] = LAYOUT
    p[1] = r.category
    p[2] = r.status
    p[3] = r.flags
    _put64(p + 4, r.card_id)
    _put32(p + 12, <uint32_t><int32_t>r.balance)
    _put32(p + 16, r.counter)
    _put16(p + 20, r.expiry_day)
    _put16(p + 22, r.entry_station)
    _put32(p + 24, r.entry_time)
    p[28] = r.transfer_from
    p[29] = r.transfers_used
    _put16(p + 30, r.last_station)
    _put32(p + 32, r.last_time)
    p[36] = r.last_network
    _put16(p + 38, r.day_number)
    _put32(p + 40, r.day_spent)
    _put16(p + 44, r.month_number)
    _put32(p + 48, r.month_spent)


cdef inline bint _slot_valid(Sam sam, const uint8_t* s, uint64_t card_id) noexcept nogil:
    return s[0] == LAYOUT and _le64(s + 4) == card_id and sam.mac_c(card_id, s) == _le64(s + BODY)


cdef inline int _choose_slot(Sam sam, const uint8_t* w, uint64_t card_id) noexcept nogil:
    cdef int first = 1 if _le32(w + SLOT + 16) > _le32(w + 16) else 0
    if _slot_valid(sam, w + first * SLOT, card_id):
        return first
    if _slot_valid(sam, w + (1 - first) * SLOT, card_id):
        return 1 - first
    return -1


# --------------------------------------------------------------------------------------- fare table
cdef class FareTable:
    """A compiled fare table ready for decide(): TableData plus typed views for C-speed lookups."""

    cdef readonly object data
    cdef object _checksum
    cdef object _station_index_arr
    cdef const int[::1] station_idx
    cdef const unsigned char[::1] station_network, network_flat, band_of_minute
    cdef const unsigned char[::1] transfer_percent, monthly_percent
    cdef const unsigned int[::1] fares, flat_fares, transfer_discount, transfer_window
    cdef const unsigned int[::1] daily_cap, monthly_threshold, same_station_fare, missing_exit_fare
    cdef int n_stations, n_networks, n_categories
    cdef int64_t utc_offset_s, day_start_s, max_transfers, max_inside_s, overstay_surcharge
    cdef int64_t same_station_window_s, anti_passback_s, min_entry_balance, max_balance

    def __init__(self, data, checksum=None):
        try:
            data.validate()
        except ValueError as exc:
            raise FareTableError(f"inconsistent fare table: {exc}") from exc
        from array import array
        self.data = data
        self._checksum = checksum
        index = array("i", [-1]) * 65536
        for i, station_id in enumerate(data.station_ids):
            index[station_id] = i
        self._station_index_arr = index
        self.station_idx = index
        self.station_network = bytes(data.station_network)
        self.network_flat = bytes(data.network_flat)
        self.band_of_minute = bytes(data.band_of_minute)
        self.transfer_percent = bytes(data.transfer_percent)
        self.monthly_percent = bytes(data.monthly_percent)
        self.fares = _u32(data.fares)
        self.flat_fares = _u32(data.flat_fares)
        self.transfer_discount = _u32(data.transfer_discount)
        self.transfer_window = _u32(data.transfer_window_s)
        self.daily_cap = _u32(data.daily_cap)
        self.monthly_threshold = _u32(data.monthly_threshold)
        self.same_station_fare = _u32(data.same_station_fare)
        self.missing_exit_fare = _u32(data.missing_exit_fare)
        self.n_stations = data.n_stations
        self.n_networks = data.n_networks
        self.n_categories = data.n_categories
        self.utc_offset_s = data.utc_offset_min * 60
        self.day_start_s = data.day_start_min * 60
        self.max_transfers = data.max_transfers
        self.max_inside_s = data.max_inside_s
        self.overstay_surcharge = data.overstay_surcharge
        self.same_station_window_s = data.same_station_window_s
        self.anti_passback_s = data.anti_passback_s
        self.min_entry_balance = data.min_entry_balance
        self.max_balance = data.max_balance

    @classmethod
    def from_bytes(cls, blob):
        from . import artefact
        return cls(artefact.unpack(blob), artefact.checksum_of(blob))

    @property
    def version(self):
        return self.data.version

    @property
    def checksum(self):
        if self._checksum is None:
            from . import artefact
            self._checksum = artefact.checksum_of(artefact.pack(self.data))
        return self._checksum

    def station_index(self, station_id):
        """Dense index of an operator station id, or -1 when the table does not know it."""
        return self.station_idx[station_id] if 0 <= station_id <= 0xFFFF else -1

    def __repr__(self):
        d = self.data
        return (f"FareTable(version={d.version}, stations={d.n_stations}, networks={d.n_networks}, "
                f"categories={d.n_categories}, bands={d.n_bands})")


def _u32(values):
    """An array of uint32 whatever the source container (the typed views need 'I' items)."""
    from array import array
    if isinstance(values, array) and values.typecode == "I":
        return values
    return array("I", values)


# ------------------------------------------------------------------------------------- tap/decision
cdef class Tap:
    """One tap as the gate saw it; the action-list fields carry a pending top-up or unblock."""

    cdef readonly uint64_t card_id
    cdef readonly int station, direction, gate_no, mode
    cdef readonly int64_t time, min_counter, topup
    cdef readonly bint unblock

    def __init__(self, card_id, station, direction, time, gate_no=0, mode=GateMode.NORMAL,
                 min_counter=0, topup=0, unblock=False):
        if not 0 <= card_id <= 0xFFFFFFFFFFFFFFFF:
            raise ValueError("card_id must be an unsigned 64-bit integer")
        if not 0 <= station <= 0xFFFF:
            raise ValueError("station must be 0..65535")
        if direction not in (Direction.ENTRY, Direction.EXIT):
            raise ValueError("direction must be ENTRY (0) or EXIT (1)")
        if not MIN_TAP_TIME <= time <= U32_MAX:
            raise ValueError("time must be UTC seconds from 2000-01-02 to 2106")
        if mode not in (GateMode.NORMAL, GateMode.FREE_EXIT, GateMode.CLOSED, GateMode.MAINTENANCE):
            raise ValueError("mode must be a GateMode")
        if not 0 <= min_counter <= U32_MAX or not 0 <= topup <= 0x7FFFFFFF or not 0 <= gate_no <= 0xFFFF:
            raise ValueError("min_counter, topup or gate_no out of range")
        self.card_id = card_id
        self.station = station
        self.direction = direction
        self.time = time
        self.gate_no = gate_no
        self.mode = mode
        self.min_counter = min_counter
        self.topup = topup
        self.unblock = unblock

    def __repr__(self):
        return (f"Tap(card_id=0x{self.card_id:016x}, station={self.station}, direction={self.direction}, "
                f"time={self.time}, mode={self.mode})")


cdef class Decision:
    """What decide() concluded. `record` is the 64-byte slot image to write into `slot`, or None."""

    cdef readonly bint allowed
    cdef readonly int reason, flags, slot
    cdef readonly int64_t fare, balance_before, balance_after, counter, topup
    cdef readonly uint64_t card_id
    cdef readonly object record

    @property
    def display_zh(self):
        return display_text(self.reason, self.fare, self.balance_after)[0]

    @property
    def display_en(self):
        return display_text(self.reason, self.fare, self.balance_after)[1]

    def as_dict(self):
        return {name: getattr(self, name) for name in (
            "allowed", "balance_after", "balance_before", "card_id", "counter", "fare", "flags",
            "reason", "record", "slot", "topup")}

    def __repr__(self):
        return (f"Decision({Reason(self.reason).name}, fare={self.fare}, balance "
                f"{self.balance_before}->{self.balance_after}, flags={Flag(self.flags)!r}, slot={self.slot})")


cdef Decision _decision(int reason, int flags, int64_t fare, int64_t before, int64_t after,
                        int64_t counter, int slot, object record, uint64_t card_id, int64_t topup):
    cdef Decision d = Decision.__new__(Decision)
    d.allowed = reason < DENY_FROM
    d.reason = reason
    d.flags = flags
    d.fare = fare
    d.balance_before = before
    d.balance_after = after
    d.counter = counter
    d.slot = slot
    d.record = record
    d.card_id = card_id
    d.topup = topup
    return d


# --------------------------------------------------------------------------------------- time rules
cdef inline int64_t _civil_month(int64_t days) noexcept nogil:
    """Months since January 2000 of a day number since 1970 (Howard Hinnant's civil_from_days)."""
    cdef int64_t z = days + 719468
    cdef int64_t era = z // 146097
    cdef int64_t doe = z - era * 146097
    cdef int64_t yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    cdef int64_t year = yoe + era * 400
    cdef int64_t doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    cdef int64_t mp = (5 * doy + 2) // 153
    cdef int64_t month = mp + 3 if mp < 10 else mp - 9
    if month <= 2:
        year += 1
    return (year - 2000) * 12 + month - 1


cdef inline int _minute_of_week(int64_t local) noexcept nogil:
    return <int>(((local // 86400 + 3) % 7) * 1440 + (local % 86400) // 60)


# ------------------------------------------------------------------------------------------- decide
cdef inline int64_t _min64(int64_t a, int64_t b) noexcept nogil:
    return a if a < b else b


cdef inline int64_t _max64(int64_t a, int64_t b) noexcept nogil:
    return a if a > b else b


cdef struct Priced:
    int64_t fare
    int flags
    bint capped


cdef inline Priced _discounted(FareTable t, int64_t base, int transfer_from, int network, int category,
                               int64_t day_spent, int64_t month_spent) noexcept:
    """Transfer, then monthly discount, then the daily cap (the twin's `discounted`)."""
    cdef Priced out
    cdef int pair
    cdef int64_t threshold, cap
    out.flags = 0
    if transfer_from != NO_NET:
        pair = transfer_from * t.n_networks + network
        base = _max64(0, base - t.transfer_discount[pair])
        base -= base * t.transfer_percent[pair] // 100
        out.flags |= F_TRANSFER
    threshold = t.monthly_threshold[category]
    if threshold and month_spent >= threshold:
        base -= base * t.monthly_percent[category] // 100
        out.flags |= F_MONTHLY
    cap = t.daily_cap[category]
    out.capped = cap != 0 and day_spent + base > cap
    if out.capped:
        base = _max64(0, cap - day_spent)
        out.flags |= F_CAPPED
    out.fare = base
    return out


cdef inline int _transfer_origin(FareTable t, const Rec* r, int network, int64_t start) noexcept:
    cdef int last = r.last_network
    cdef int64_t window
    if last == NO_NET or r.transfers_used >= t.max_transfers or last >= t.n_networks:
        return NO_NET
    window = t.transfer_window[last * t.n_networks + network]
    return last if window and start - r.last_time <= window else NO_NET


cdef object _write(Sam sam, Rec* new, const Rec* old, int old_slot, int reason, int flags, int64_t fare,
                   int64_t before, int64_t topup):
    cdef uint8_t image[SLOT]
    new.counter = old.counter + 1
    _pack(new, image)
    _put64(image + BODY, sam.mac_c(new.card_id, image))
    return _decision(reason, flags, fare, before, new.balance, new.counter, 1 - old_slot,
                     PyBytes_FromStringAndSize(<char*>image, SLOT), new.card_id, topup)


cdef inline object _deny(int reason, const Rec* r, uint64_t card_id):
    return _decision(reason, 0, 0, r.balance, r.balance, r.counter, -1, None, card_id, 0)


def decide(wallet, Tap tap not None, FareTable table not None, denylist, Sam sam not None):
    """Decide one tap: deny-list, card checks, fare, the new record to write. Pure: no I/O, no clock."""
    cdef bytes wb = wallet if type(wallet) is bytes else bytes(wallet)
    if len(wb) != 2 * SLOT:
        raise WalletError(f"wallet must be {2 * SLOT} bytes, got {len(wb)}")
    cdef const uint8_t* w = <const uint8_t*>PyBytes_AS_STRING(wb)
    cdef uint64_t card_id = tap.card_id
    cdef FareTable t = table
    cdef Rec rec, work
    cdef int slot = _choose_slot(sam, w, card_id)
    if slot < 0:
        return _decision(R_BAD_MAC, 0, 0, 0, 0, 0, -1, None, card_id, 0)
    _parse(w + slot * SLOT, &rec)
    cdef int64_t before = rec.balance
    if rec.counter < tap.min_counter:
        return _deny(R_COUNTER, &rec, card_id)
    if rec.counter >= U32_MAX:
        return _deny(R_EXPIRED, &rec, card_id)
    if tap.mode == 2 or tap.mode == 3 or (tap.mode == 1 and tap.direction == 0):
        return _deny(R_CLOSED, &rec, card_id)

    cdef bint listed
    if type(denylist) is CompiledDenyList:
        listed = (<CompiledDenyList>denylist).contains_c(card_id)
    else:
        listed = card_id in denylist
    if listed:
        if rec.status == ST_BLOCKED:
            return _deny(R_DENYLISTED, &rec, card_id)
        work = rec
        work.status = ST_BLOCKED
        return _write(sam, &work, &rec, slot, R_DENYLISTED, F_BLOCKED_NOW, 0, before, 0)

    cdef int flags = 0
    cdef int64_t topup = 0
    work = rec
    if tap.unblock and rec.status == ST_BLOCKED:
        work.status = ST_ACTIVE
        flags |= F_UNBLOCKED
    if tap.topup:
        if work.balance + tap.topup <= t.max_balance:
            work.balance += tap.topup
            topup = tap.topup
            flags |= F_TOPUP
        else:
            flags |= F_TOPUP_REFUSED
    cdef bint changed = (flags & (F_UNBLOCKED | F_TOPUP)) != 0
    cdef int reason = R_OK

    # Denials from here on still write an applied action, so a top-up is never lost.
    if work.status != ST_ACTIVE:
        reason = R_BLOCKED
    cdef int station = t.station_idx[tap.station]
    if reason == R_OK and station < 0:
        reason = R_STATION
    cdef int category = work.category
    if reason == R_OK and category >= t.n_categories:
        reason = R_CATEGORY
    cdef int64_t time = tap.time
    cdef int64_t local = time + t.utc_offset_s
    cdef int64_t days = (local - t.day_start_s) // 86400
    cdef int64_t day_number = days - DAYS_1970_TO_2000
    if reason == R_OK and work.expiry_day and day_number > work.expiry_day:
        reason = R_EXPIRED
    if reason != R_OK:
        if changed:
            return _write(sam, &work, &rec, slot, reason, flags, 0, before, topup)
        return _deny(reason, &rec, card_id)

    cdef int64_t month_number = _civil_month(days)
    cdef int64_t day_spent = work.day_spent if work.day_number == day_number else 0
    cdef int64_t month_spent = work.month_spent if work.month_number == month_number else 0
    cdef int network = t.station_network[station]
    cdef bint flat = t.network_flat[network]
    cdef int64_t balance = work.balance

    if tap.mode == 1:  # an exit in an emergency: recorded, never charged
        work.flags &= ~ENTRY_OPEN
        work.transfer_from = NO_NET
        return _write(sam, &work, &rec, slot, R_FREE_EXIT, flags, 0, before, topup)

    cdef int64_t penalty = 0
    cdef int origin, transfer_from, band
    cdef int64_t base, surcharge, total, inside, i
    cdef Priced priced
    if tap.direction == 0 or flat:
        if work.flags & ENTRY_OPEN:
            if (not flat and work.entry_station == tap.station
                    and time - work.entry_time < t.anti_passback_s):
                reason = R_INSIDE
            else:
                origin = t.station_idx[work.entry_station]
                if origin >= 0:
                    penalty = t.missing_exit_fare[category * t.n_stations + origin]
                else:
                    for i in range(category * t.n_stations, (category + 1) * t.n_stations):
                        penalty = _max64(penalty, t.missing_exit_fare[i])
                flags |= F_MISSING_EXIT
                work.transfers_used = 0
                work.last_network = NO_NET

    if reason == R_OK and not flat and tap.direction == 0:
        if penalty > balance or balance - penalty < t.min_entry_balance:
            reason = R_BALANCE
        else:
            transfer_from = _transfer_origin(t, &work, network, time)
            work.balance = balance - penalty
            work.flags |= ENTRY_OPEN
            work.entry_station = tap.station
            work.entry_time = <uint32_t>time
            work.transfer_from = transfer_from
            if transfer_from == NO_NET:
                work.transfers_used = 0
            return _write(sam, &work, &rec, slot, R_MISSING_EXIT if penalty else R_OK, flags, penalty,
                          before, topup)

    if reason == R_OK and flat:  # boarding a flat-fare vehicle: one tap, charged now
        band = t.band_of_minute[_minute_of_week(local)]
        base = t.flat_fares[(band * t.n_categories + category) * t.n_networks + network]
        transfer_from = _transfer_origin(t, &work, network, time)
        priced = _discounted(t, base, transfer_from, network, category, day_spent, month_spent)
        surcharge = 0
    elif reason == R_OK:  # exit from an entry/exit network
        origin = -1
        if not work.flags & ENTRY_OPEN:
            reason = R_NO_ENTRY
        else:
            origin = t.station_idx[work.entry_station]
            if origin < 0:
                reason = R_STATION
        if reason == R_OK:
            inside = _max64(0, time - work.entry_time)
            if (t.same_station_window_s and work.entry_station == tap.station
                    and inside <= t.same_station_window_s):
                base = t.same_station_fare[category]
                flags |= F_SAME_STATION
            else:
                band = t.band_of_minute[_minute_of_week(<int64_t>work.entry_time + t.utc_offset_s)]
                base = t.fares[((band * t.n_categories + category) * t.n_stations + origin)
                               * t.n_stations + station]
            transfer_from = work.transfer_from if work.transfer_from < t.n_networks else NO_NET
            priced = _discounted(t, base, transfer_from, network, category, day_spent, month_spent)
            surcharge = t.overstay_surcharge if t.max_inside_s and inside > t.max_inside_s else 0
            if surcharge:
                priced.flags |= F_OVERSTAY

    if reason == R_OK:
        total = priced.fare + surcharge + penalty
        if total > balance:
            reason = R_BALANCE
    if reason != R_OK:
        if changed:
            return _write(sam, &work, &rec, slot, reason, flags, 0, before, topup)
        return _deny(reason, &rec, card_id)

    flags |= priced.flags
    work.balance = balance - total
    work.flags &= ~ENTRY_OPEN
    work.transfer_from = NO_NET
    work.transfers_used = work.transfers_used + 1 if transfer_from != NO_NET else 0
    work.last_station = tap.station
    work.last_time = <uint32_t>time
    work.last_network = network
    work.day_number = <uint16_t>day_number
    work.day_spent = <uint32_t>_min64(U32_MAX, day_spent + priced.fare)
    work.month_number = <uint16_t>month_number
    work.month_spent = <uint32_t>_min64(U32_MAX, month_spent + priced.fare)
    if surcharge:
        reason = R_OVERSTAY
    elif penalty:
        reason = R_MISSING_EXIT
    elif priced.capped:
        reason = R_CAP
    return _write(sam, &work, &rec, slot, reason, flags, total, before, topup)
