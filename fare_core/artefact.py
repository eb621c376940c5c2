"""The fare table artefact: TableData as versioned, checksummed bytes that a gate loads in milliseconds.

Byte layout (layout 3), every integer little-endian whatever the host:

    offset  size  field
    ------  ----  ------------------------------------------------------------------
         0     4  magic b"FGFT"
         4     2  u16 layout (3)
         6     2  u16 header size (96; 64 in layouts 1 and 2)
         8     4  u32 table version
        12     8  i64 created_at (UTC seconds)
        20     2  i16 utc_offset_min (before the first offset change)
        22     2  u16 day_start_min
        24     2  u16 S = n_stations
        26     1  u8  N = n_networks
        27     1  u8  C = n_categories
        28     1  u8  B = n_bands
        29     3  reserved, zero
        32     4  u32 max_transfers
        36     4  u32 max_inside_s
        40     4  u32 overstay_surcharge
        44     4  u32 same_station_window_s
        48     4  u32 anti_passback_s
        52     4  u32 denylisted_exit (0 let out charged, 1 refuse; table_data.DENYLISTED_EXIT_*)
        56     4  u32 max_balance
        60     4  u32 L = length of the labels block
        64     4  u32 T = monthly tiers, all categories
        68     4  u32 K = UTC offset changes
        72     4  u32 H = date overrides
        76     2  u16 month_start_min
        78     1  u8  week_rolling
        79     1  u8  overdraft_taps
        80     4  u32 overdraft_limit
        84    12  reserved, zero
    ------  ----  ------------------------------------------------------------------
        96        arrays, back to back, in this order (u16/u32/i32 items little-endian):
                  station_ids          u16 x S
                  station_network      u8  x S
                  network_flat         u8  x N
                  band_of_minute       u8  x 10080
                  fares                u32 x B*C*S*S
                  flat_fares           u32 x B*C*N
                  transfer_discount    u32 x N*N
                  transfer_percent     u8  x N*N
                  transfer_window_s    u32 x N*N
                  daily_cap            u32 x C
                  monthly_threshold    u32 x C   (layouts 1, 2 only: one spend tier a category)
                  monthly_percent      u8  x C   (layouts 1, 2 only)
                  same_station_fare    u32 x C
                  missing_exit_fare    u32 x C*S
                  min_entry_balance    u32 x C   (from layout 2)
                  monthly_flags        u8  x C   (from layout 3, as every array below)
                  monthly_tier_first   u32 x C+1
                  monthly_tier_from    u32 x T
                  monthly_tier_percent u8  x T
                  monthly_networks     u8  x C*N
                  weekly_cap           u32 x C
                  offset_change_at     u32 x K
                  offset_change_min    i32 x K
                  date_override_day    u32 x H
                  date_override_as     u8  x H
                  labels               L bytes of UTF-8 JSON:
                                       {"name", "networks", "categories", "bands", "extra"}
    end-32    32  SHA-256 of every byte before it

The file's size follows from the header, so a truncated or padded file is caught before its checksum is
even computed; the SHA-256 then catches any changed byte; TableData.validate() catches a well-formed
file with impossible contents. Arrays are loaded with array.frombytes (one memcpy each), never an
element-by-element loop. checksum_of() is the stored SHA-256 (`head -c -32 FILE | sha256sum` by hand).

Layouts 1 and 2 still load, as their rules meant: each category's monthly threshold and percent as one
spend tier on every network, the month turning at the service day's start (as those tables did), no
weekly cap, one fixed UTC offset, no date overrides, no overdraft. Layout 1 (before the deny-list and
per-category minimum rules) holds one u32 min_entry_balance at offset 52 and no min_entry_balance
array: it loads as that minimum for every category the table charges something, none for a category
it never charges (TableData.charges_nothing), and a deny-listed phone inside the paid area let out and
charged. pack() writes layout 3 only; any other layout is refused by name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
import sys
from array import array
from collections.abc import Callable

from fare_core.errors import FareTableError
from fare_core.table_data import (
    DENYLISTED_EXIT_LET_OUT,
    MINUTES_PER_WEEK,
    MONTH_COUNTS,
    MONTH_DISCOUNTED,
    TableData,
    minimum_for_paying_categories,
    single_tier_schemes,
)

MAGIC = b"FGFT"
LAYOUT = 3
READABLE_LAYOUTS = (1, 2, 3)
DIGEST_SIZE = 32
_HEADER = struct.Struct("<4sHHIqhHHBBB3x8I")
_HEADER3 = struct.Struct("<3IHBBI12x")  # T, K, H, month_start_min, week_rolling, overdraft_taps, limit
OLD_HEADER_SIZE = _HEADER.size
HEADER_SIZE = OLD_HEADER_SIZE + _HEADER3.size
_BIG_ENDIAN = sys.byteorder == "big"


@dataclasses.dataclass(frozen=True)
class _Dims:
    s: int
    n: int
    c: int
    b: int
    t: int = 0
    k: int = 0
    h: int = 0


# (field, typecode or None for raw bytes, items as a function of the table's dimensions, layouts)
_ALL, _OLD = (1, 2, 3), (1, 2)
_ARRAYS: tuple[tuple[str, str | None, Callable[[_Dims], int], tuple[int, ...]], ...] = (
    ("station_ids", "H", lambda d: d.s, _ALL),
    ("station_network", None, lambda d: d.s, _ALL),
    ("network_flat", None, lambda d: d.n, _ALL),
    ("band_of_minute", None, lambda d: MINUTES_PER_WEEK, _ALL),
    ("fares", "I", lambda d: d.b * d.c * d.s * d.s, _ALL),
    ("flat_fares", "I", lambda d: d.b * d.c * d.n, _ALL),
    ("transfer_discount", "I", lambda d: d.n * d.n, _ALL),
    ("transfer_percent", None, lambda d: d.n * d.n, _ALL),
    ("transfer_window_s", "I", lambda d: d.n * d.n, _ALL),
    ("daily_cap", "I", lambda d: d.c, _ALL),
    ("monthly_threshold", "I", lambda d: d.c, _OLD),
    ("monthly_percent", None, lambda d: d.c, _OLD),
    ("same_station_fare", "I", lambda d: d.c, _ALL),
    ("missing_exit_fare", "I", lambda d: d.c * d.s, _ALL),
    ("min_entry_balance", "I", lambda d: d.c, (2, 3)),
    ("monthly_flags", None, lambda d: d.c, (3,)),
    ("monthly_tier_first", "I", lambda d: d.c + 1, (3,)),
    ("monthly_tier_from", "I", lambda d: d.t, (3,)),
    ("monthly_tier_percent", None, lambda d: d.t, (3,)),
    ("monthly_networks", None, lambda d: d.c * d.n, (3,)),
    ("weekly_cap", "I", lambda d: d.c, (3,)),
    ("offset_change_at", "I", lambda d: d.k, (3,)),
    ("offset_change_min", "i", lambda d: d.k, (3,)),
    ("date_override_day", "I", lambda d: d.h, (3,)),
    ("date_override_as", None, lambda d: d.h, (3,)),
)
_ITEM_SIZE = {"H": 2, "I": 4, "i": 4, None: 1}
assert HEADER_SIZE == 96
assert array("H").itemsize == 2 and array("I").itemsize == 4 and array("i").itemsize == 4, \
    "this host's C int is not 32 bits"


def checksum_of(blob: bytes) -> str:
    """The artefact's identity on the wire and in logs: the hex SHA-256 it carries in its last 32 bytes.

    Reading the stored digest costs nothing, where hashing a 300-station table again would double its
    load time; unpack() is what proves the digest right, so check a received blob with unpack() first.
    """
    if len(blob) < DIGEST_SIZE:
        raise FareTableError(f"fare table truncated: {len(blob)} bytes hold no checksum")
    return bytes(blob[-DIGEST_SIZE:]).hex()


def _le_bytes(values: array[int]) -> bytes:
    if _BIG_ENDIAN:
        values = array(values.typecode, values)
        values.byteswap()
    return values.tobytes()


def pack(table: TableData) -> bytes:
    """Serialise a table (validated first) into artefact bytes; the same table always gives the same bytes."""
    try:
        table.validate()
    except ValueError as exc:
        raise FareTableError(f"cannot pack an inconsistent table: {exc}") from None
    labels = json.dumps(
        {"name": table.name, "networks": list(table.network_names), "categories": list(table.category_names),
         "bands": list(table.band_names), "extra": dict(table.extra)},
        ensure_ascii=False, sort_keys=True, separators=(",", ":"),
    ).encode("utf-8")
    try:
        header = _HEADER.pack(
            MAGIC, LAYOUT, HEADER_SIZE, table.version, table.created_at, table.utc_offset_min,
            table.day_start_min, table.n_stations, table.n_networks, table.n_categories, table.n_bands,
            table.max_transfers, table.max_inside_s, table.overstay_surcharge, table.same_station_window_s,
            table.anti_passback_s, table.denylisted_exit, table.max_balance, len(labels),
        ) + _HEADER3.pack(
            len(table.monthly_tier_from), len(table.offset_change_at), len(table.date_override_day),
            table.month_start_min, table.week_rolling, table.overdraft_taps, table.overdraft_limit,
        )
    except struct.error as exc:
        raise FareTableError(f"cannot pack table header: {exc}") from None
    parts = [header]
    for name, typecode, _, layouts in _ARRAYS:
        if LAYOUT not in layouts:
            continue
        value = getattr(table, name)
        if typecode is None:
            parts.append(bytes(value))
        else:
            if not isinstance(value, array) or value.typecode != typecode:
                value = array(typecode, value)
            parts.append(_le_bytes(value))
    parts.append(labels)
    body = b"".join(parts)
    return body + hashlib.sha256(body).digest()


def _array(typecode: str, data: memoryview) -> array[int]:
    values = array(typecode)
    values.frombytes(data)
    if _BIG_ENDIAN:
        values.byteswap()
    return values


def unpack(blob: bytes) -> TableData:
    """Load artefact bytes; raise FareTableError if they are truncated, corrupt, unknown or inconsistent."""
    view = memoryview(blob)
    if len(view) < OLD_HEADER_SIZE + DIGEST_SIZE:
        raise FareTableError(f"fare table truncated: {len(view)} bytes, shorter than the "
                             f"{OLD_HEADER_SIZE + DIGEST_SIZE}-byte minimum")
    (magic, layout, header_size, version, created_at, utc_offset_min, day_start_min, s, n, c, b,
     max_transfers, max_inside_s, overstay_surcharge, same_station_window_s, anti_passback_s,
     header_52, max_balance, labels_size) = _HEADER.unpack_from(view)
    if magic != MAGIC:
        raise FareTableError(f"not a fare table: magic {bytes(magic)!r}, expected {MAGIC!r}")
    if layout not in READABLE_LAYOUTS:
        raise FareTableError(f"fare table layout {layout} is not supported (this build reads layouts "
                             f"{', '.join(map(str, READABLE_LAYOUTS))})")
    want_header = HEADER_SIZE if layout == LAYOUT else OLD_HEADER_SIZE
    if header_size != want_header:
        raise FareTableError(f"fare table header size {header_size}, expected {want_header}")
    if len(view) < want_header + DIGEST_SIZE:
        raise FareTableError(f"fare table truncated: {len(view)} bytes, shorter than its header")
    month_start_min, week_rolling, overdraft_taps, overdraft_limit = day_start_min, 0, 0, 0
    dims = _Dims(s, n, c, b)
    if layout == LAYOUT:
        t, k, h, month_start_min, week_rolling, overdraft_taps, overdraft_limit = _HEADER3.unpack_from(
            view, OLD_HEADER_SIZE)
        dims = _Dims(s, n, c, b, t, k, h)
    arrays = [(name, typecode, count(dims))
              for name, typecode, count, layouts in _ARRAYS if layout in layouts]
    sizes = [items * _ITEM_SIZE[typecode] for _, typecode, items in arrays]
    expected = header_size + sum(sizes) + labels_size + DIGEST_SIZE
    if len(view) != expected:
        what = "truncated" if len(view) < expected else "has trailing bytes"
        raise FareTableError(f"fare table {what}: {len(view)} bytes, its header describes {expected}")
    body = view[:-DIGEST_SIZE]
    if hashlib.sha256(body).digest() != view[-DIGEST_SIZE:]:
        raise FareTableError("fare table checksum mismatch: the file is corrupt")

    fields: dict[str, object] = {}
    offset = header_size
    for (name, typecode, _), size in zip(arrays, sizes, strict=True):
        chunk = view[offset:offset + size]
        fields[name] = bytes(chunk) if typecode is None else _array(typecode, chunk)
        offset += size
    try:
        labels = json.loads(bytes(view[offset:offset + labels_size]).decode("utf-8"))
        denylisted_exit = DENYLISTED_EXIT_LET_OUT if layout == 1 else header_52
        if layout == 1:  # one minimum for everyone, and no deny-list rule: see the module docstring
            fields["min_entry_balance"] = array("I", [0] * c)  # replaced below, once fares are known
        if layout != LAYOUT:  # one spend threshold a category, on every network: see the docstring
            threshold = fields.pop("monthly_threshold")
            percent = fields.pop("monthly_percent")
            first, froms, percents = single_tier_schemes(
                list(threshold), list(percent))  # type: ignore[call-overload]
            fields.update(
                monthly_flags=bytes(c), monthly_tier_first=first, monthly_tier_from=froms,
                monthly_tier_percent=percents,
                monthly_networks=bytes([MONTH_COUNTS | MONTH_DISCOUNTED]) * (c * n),
                weekly_cap=array("I", [0] * c), offset_change_at=array("I"), offset_change_min=array("i"),
                date_override_day=array("I"), date_override_as=b"")
        table = TableData(
            version=version, created_at=created_at, name=str(labels["name"]),
            utc_offset_min=utc_offset_min, day_start_min=day_start_min,
            network_names=tuple(map(str, labels["networks"])),
            category_names=tuple(map(str, labels["categories"])),
            band_names=tuple(map(str, labels["bands"])),
            extra={str(k): str(v) for k, v in labels["extra"].items()},
            max_transfers=max_transfers, max_inside_s=max_inside_s, overstay_surcharge=overstay_surcharge,
            same_station_window_s=same_station_window_s, anti_passback_s=anti_passback_s,
            max_balance=max_balance, denylisted_exit=denylisted_exit, month_start_min=month_start_min,
            week_rolling=week_rolling, overdraft_limit=overdraft_limit, overdraft_taps=overdraft_taps,
            **fields,  # type: ignore[arg-type]
        )
        if layout == 1:
            table.validate()  # the sizes charges_nothing() reads
            table = dataclasses.replace(
                table, min_entry_balance=minimum_for_paying_categories(table, header_52))
        if (table.n_networks, table.n_categories, table.n_bands) != (n, c, b):
            raise ValueError(f"labels name {table.n_networks} networks, {table.n_categories} categories, "
                             f"{table.n_bands} bands; the header says {n}, {c}, {b}")
        table.validate()
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FareTableError(f"fare table inconsistent: {exc}") from None
    return table
