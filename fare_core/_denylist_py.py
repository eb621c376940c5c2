"""Deny-list of blocked card ids: the reference semantics, in pure Python (the twin of _denylist.pyx).

A gate asks one question on every tap: is this phone blocked? The answer must be exact (a false deny
strands a commuter, a false allow lets a blocked phone ride), fast for 10 million ids, and the list must
survive reboots and accept small updates without ever running half-updated.

Storage order. Ids are stored as *keys*: ``key = fmix64(card_id)``, the MurmurHash3 64-bit finalizer,
a bijection on 64-bit integers (its inverse is below), so the key array *is* the set of ids. Keys are
uniformly spread whatever numbering scheme an issuer uses (sequential ids, ids sharing a prefix), which
lets the compiled module find a key with a small bucket index on the top bits of the key and an
interpolated guess within the bucket: 8 bytes a phone for the keys, plus 64 KB of index. This twin keeps
the same sorted ``array('Q')`` of keys and searches it with bisect; both write byte-identical snapshots.

Checksum (of a whole list, carried by every snapshot and delta). An order-independent set hash that a
delta updates in O(size of the delta): ``count``, ``lane1 = Σ splitmix64(card_id) mod 2**64`` and
``lane2 = Σ splitmix64(key) mod 2**64``, where splitmix64(x) is Vigna's SplitMix64 output for state x
(Stafford's "Mix13" of ``x + 0x9e3779b97f4a7c15``). Shown as 48 hex digits: count, lane1, lane2, each
16 digits. It catches corruption and mis-application (a lost, doubled or altered id changes a lane with
probability about 1 - 2**-64 each); it is NOT a defence against an adversary, who could craft
collisions in a sum of hashes. The channel that carries deltas (MQTT) is authenticated instead.
Because the checksum is exact only if every add is new and every removal present, a delta that adds an
id already listed or removes one that is absent is malformed (DenyListCorrupt), never "idempotent".

Snapshot bytes (little-endian)::

    off size  field
      0    4  magic b"FGDL"
      4    2  layout = 1
      6    2  flags = 0
      8    8  version (u64)
     16    8  count (u64)
     24    8  lane1 (u64)
     32    8  lane2 (u64)
     40    8  BLAKE2b-64 of bytes 0..39 (personalised), so a flipped header bit is caught too
     48  8*n  keys, strictly ascending (u64)

The payload needs no digest of its own: a changed key either breaks the strict order or changes the set,
and therefore a lane.

A delta is only an object here (DenyListDelta): on the wire it travels as the MQTT message
protocol.mqtt.DenyListDeltaMessage, and a gate persists the snapshot, never a delta.

Concurrency: an update builds the new list beside the old one and swaps it in at once, so a reader on
another thread sees the old list or the new one, never a mixture; updates are serialised by a lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import operator
import os
import struct
import sys
import tempfile
import threading
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from .errors import DenyListBaseMismatch, DenyListChecksumMismatch, DenyListCorrupt, DenyListStale

__all__ = ["DenyList", "DenyListDelta"]

U64_MAX = (1 << 64) - 1

# MurmurHash3 fmix64 (storage order) and its inverse: `x ^= x >> 33` is its own inverse, the
# multipliers are odd so they have inverses mod 2**64.
FMIX_C1 = 0xFF51AFD7ED558CCD
FMIX_C2 = 0xC4CEB9FE1A85EC53
FMIX_C1_INV = 0x4F74430C22A54005
FMIX_C2_INV = 0x9CB4B2F8129337DB
# SplitMix64 (checksum lanes).
SPLITMIX_GAMMA = 0x9E3779B97F4A7C15
SPLITMIX_C1 = 0xBF58476D1CE4E5B9
SPLITMIX_C2 = 0x94D049BB133111EB

SNAPSHOT_MAGIC = b"FGDL"
LAYOUT = 1
_SNAPSHOT_HEAD = struct.Struct("<4sHHQQQQ")  # magic, layout, flags, version, count, lane1, lane2
SNAPSHOT_DIGEST_SIZE = 8
SNAPSHOT_HEADER_SIZE = _SNAPSHOT_HEAD.size + SNAPSHOT_DIGEST_SIZE  # 48
_SNAPSHOT_PERSON = b"faregate-dl-snap"
_CHECKSUM_HEX_LEN = 48
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
MAX_COUNT = (1 << 32) - 1  # the compiled bucket index holds u32 offsets


def mix_key(card_id: int) -> int:
    """fmix64: the storage key of a card id (a bijection on 64-bit integers)."""
    x = card_id ^ (card_id >> 33)
    x = (x * FMIX_C1) & U64_MAX
    x ^= x >> 33
    x = (x * FMIX_C2) & U64_MAX
    return x ^ (x >> 33)


def unmix_key(key: int) -> int:
    """Inverse of mix_key: the card id stored as `key`."""
    x = key ^ (key >> 33)
    x = (x * FMIX_C2_INV) & U64_MAX
    x ^= x >> 33
    x = (x * FMIX_C1_INV) & U64_MAX
    return x ^ (x >> 33)


def splitmix64(x: int) -> int:
    """SplitMix64 output for state x: the per-element hash summed into the checksum lanes."""
    z = (x + SPLITMIX_GAMMA) & U64_MAX
    z = ((z ^ (z >> 30)) * SPLITMIX_C1) & U64_MAX
    z = ((z ^ (z >> 27)) * SPLITMIX_C2) & U64_MAX
    return z ^ (z >> 31)


def checksum_hex(count: int, lane1: int, lane2: int) -> str:
    return f"{count:016x}{lane1:016x}{lane2:016x}"


def parse_checksum(text: object, field: str = "checksum") -> tuple[int, int, int]:
    """(count, lane1, lane2) from 48 hex digits, or DenyListCorrupt naming the field."""
    if not isinstance(text, str) or len(text) != _CHECKSUM_HEX_LEN or not _HEX_DIGITS.issuperset(text):
        raise DenyListCorrupt(f"{field}: expected {_CHECKSUM_HEX_LEN} hex digits, got {text!r:.80}")
    return int(text[:16], 16), int(text[16:32], 16), int(text[32:], 16)


def check_u64(value: object, what: str) -> int:
    """An int in 0..2**64-1 (TypeError if not an integer, ValueError if out of range)."""
    number = operator.index(value)  # type: ignore[arg-type]
    if not 0 <= number <= U64_MAX:
        raise ValueError(f"{what} must be in 0..2**64-1, got {number}")
    return number


def u64_buffer(ids: object) -> memoryview | None:
    """The raw native-endian bytes of a buffer of uint64 ids, or None if `ids` is not a buffer.

    Only unsigned 64-bit buffers are accepted ('Q', or 'L' where it is 8 bytes): reading a bytes object
    or a buffer of signed or narrower integers as card ids would silently misread them.
    """
    try:
        view = memoryview(ids)  # type: ignore[arg-type]
    except TypeError:
        return None
    fmt = view.format
    native = fmt.lstrip("@=")
    if fmt.startswith("<" if sys.byteorder == "little" else ">"):
        native = fmt[1:]
    if view.itemsize != 8 or native not in ("Q", "L") or fmt.startswith("!"):
        raise TypeError(f"a buffer of card ids must hold unsigned 64-bit integers (format 'Q'), "
                        f"got format {fmt!r} with itemsize {view.itemsize}")
    if view.ndim != 1:
        raise TypeError(f"a buffer of card ids must be one-dimensional, got {view.ndim} dimensions")
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    return view.cast("B")


def bits_for(count: int) -> int:
    """Bucket-index bits of the compiled module for a list of `count` ids: 512 to 1024 ids a bucket,
    so the index of a 10M list is 64 KB and stays in cache (see _denylist.pyx)."""
    return max(1, min(28, count.bit_length() - 10))


# --- snapshot header --------------------------------------------------------------------------


def snapshot_header(version: int, count: int, lane1: int, lane2: int) -> bytes:
    head = _SNAPSHOT_HEAD.pack(SNAPSHOT_MAGIC, LAYOUT, 0, version, count, lane1, lane2)
    digest = hashlib.blake2b(head, digest_size=SNAPSHOT_DIGEST_SIZE, person=_SNAPSHOT_PERSON).digest()
    return head + digest


def parse_snapshot_header(header: bytes | memoryview, total_size: int) -> tuple[int, int, int, int]:
    """(version, count, lane1, lane2) of a snapshot whose first bytes are `header` and whose full size
    is `total_size`; DenyListCorrupt if anything does not add up."""
    header = bytes(header[:SNAPSHOT_HEADER_SIZE])
    if len(header) < SNAPSHOT_HEADER_SIZE:
        raise DenyListCorrupt(f"deny-list snapshot truncated: {total_size} bytes, the header alone is "
                              f"{SNAPSHOT_HEADER_SIZE}")
    head, digest = header[: _SNAPSHOT_HEAD.size], header[_SNAPSHOT_HEAD.size :]
    magic, layout, flags, version, count, lane1, lane2 = _SNAPSHOT_HEAD.unpack(head)
    if magic != SNAPSHOT_MAGIC:
        raise DenyListCorrupt(f"not a deny-list snapshot: magic {magic!r}, expected {SNAPSHOT_MAGIC!r}")
    expected = hashlib.blake2b(head, digest_size=SNAPSHOT_DIGEST_SIZE, person=_SNAPSHOT_PERSON).digest()
    if digest != expected:
        raise DenyListCorrupt("deny-list snapshot header is corrupt (header digest mismatch)")
    if layout != LAYOUT or flags != 0:
        raise DenyListCorrupt(f"unknown deny-list snapshot layout {layout} (flags {flags:#x})")
    if count > MAX_COUNT:
        raise DenyListCorrupt(f"deny-list snapshot claims {count} ids, more than {MAX_COUNT}")
    if total_size != SNAPSHOT_HEADER_SIZE + 8 * count:
        raise DenyListCorrupt(f"deny-list snapshot is {total_size} bytes, its header says "
                              f"{SNAPSHOT_HEADER_SIZE + 8 * count} ({count} ids)")
    return version, count, lane1, lane2


# --- files ------------------------------------------------------------------------------------


def atomic_write(path: str | os.PathLike[str], chunks: Sequence[bytes | memoryview]) -> None:
    """Write `chunks` to `path` so that a crash at any moment leaves the old file or the new one.

    Temp file in the same directory (same file system, so the rename is atomic), fsync, os.replace,
    then fsync the directory so the rename itself survives a power cut. A crash leaves at most a
    stray ``.<name>.*.tmp`` file beside it, which never shadows the real one.
    """
    target = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(target))
    fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with open(fd, "wb", buffering=0) as out:
            for chunk in chunks:
                view = memoryview(chunk).cast("B")
                while view:
                    written = out.write(view)
                    if not written:  # pragma: no cover - a raw file either writes or raises
                        raise OSError(f"short write to {temp}")
                    view = view[written:]
            os.fsync(out.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_file(path: str | os.PathLike[str]) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


# --- delta ------------------------------------------------------------------------------------


def _card_ids(values: object, field: str) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise DenyListCorrupt(f"{field}: expected a sequence of card ids, got {type(values).__name__}")
    ids: list[int] = []
    for position, value in enumerate(values):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= U64_MAX:
            raise DenyListCorrupt(f"{field}[{position}]: expected a card id in 0..2**64-1, got {value!r:.40}")
        ids.append(value)
    ids.sort()
    for before, after in itertools.pairwise(ids):
        if before == after:
            raise DenyListCorrupt(f"{field}: card id {after:016x} appears twice")
    return tuple(ids)


def _version_field(value: object, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= U64_MAX:
        raise DenyListCorrupt(f"{field}: expected an integer in 0..2**64-1, got {value!r:.40}")
    return value


@dataclass(frozen=True, slots=True)
class DenyListDelta:
    """The change from version `base_version` to `version`: ids added and removed, and the checksum of
    the resulting list. Validated on construction (DenyListCorrupt naming the field); `add` and
    `remove` are kept sorted, so equal deltas compare equal."""

    version: int
    base_version: int
    add: tuple[int, ...]
    remove: tuple[int, ...]
    checksum: str

    def __post_init__(self) -> None:
        version = _version_field(self.version, "version")
        base = _version_field(self.base_version, "base_version")
        if version <= base:
            raise DenyListCorrupt(f"version: {version} is not newer than base_version {base}")
        add = _card_ids(self.add, "add")
        remove = _card_ids(self.remove, "remove")
        if len(add) > MAX_COUNT or len(remove) > MAX_COUNT:
            raise DenyListCorrupt(f"add/remove: at most {MAX_COUNT} ids each")
        both = set(add).intersection(remove)
        if both:
            raise DenyListCorrupt(f"add/remove: card id {min(both):016x} is both added and removed")
        parse_checksum(self.checksum)
        object.__setattr__(self, "add", add)
        object.__setattr__(self, "remove", remove)
        object.__setattr__(self, "checksum", self.checksum.lower())

# --- the list ---------------------------------------------------------------------------------


class _State(NamedTuple):
    """Everything a lookup or an update reads, swapped as one object so readers never see a mixture."""

    version: int
    keys: array[int]  # sorted fmix64 keys; never mutated once published
    lane1: int
    lane2: int


def _lanes(keys: Iterable[int]) -> tuple[int, int]:
    lane1 = lane2 = 0
    for key in keys:
        lane1 += splitmix64(unmix_key(key))
        lane2 += splitmix64(key)
    return lane1 & U64_MAX, lane2 & U64_MAX


def _keys_from_ids(ids: object) -> array[int]:
    raw = u64_buffer(ids)
    if raw is not None:
        values = array("Q")
        values.frombytes(raw)
        unique = {mix_key(card_id) for card_id in values}
    else:
        if not isinstance(ids, Iterable):
            raise TypeError(f"ids must be an iterable of card ids or a uint64 buffer, "
                            f"got {type(ids).__name__}")
        unique = {mix_key(check_u64(card_id, "card id")) for card_id in ids}
    if len(unique) > MAX_COUNT:
        raise ValueError(f"a deny-list holds at most {MAX_COUNT} ids")
    return array("Q", sorted(unique))


def _key_index(keys: array[int], key: int) -> int:
    """Position of `key` in `keys`, or -1."""
    position = bisect_left(keys, key)
    return position if position < len(keys) and keys[position] == key else -1


class DenyList:
    """A versioned, checksummed set of blocked card ids (see the module docstring)."""

    __slots__ = ("__weakref__", "_lock", "_state")

    def __init__(self, ids: Iterable[int] | object = (), version: int = 0) -> None:
        version = check_u64(version, "version")
        keys = _keys_from_ids(ids)
        self._lock = threading.Lock()
        self._state = _State(version, keys, *_lanes(keys))

    @classmethod
    def _from_state(cls, state: _State) -> DenyList:
        self = cls.__new__(cls)
        self._lock = threading.Lock()
        self._state = state
        return self

    # --- reading ----------------------------------------------------------------------------

    @property
    def version(self) -> int:
        return self._state.version

    @property
    def checksum(self) -> str:
        state = self._state
        return checksum_hex(len(state.keys), state.lane1, state.lane2)

    @property
    def nbytes(self) -> int:
        """Bytes the lookup structures occupy (the key array; the compiled module adds its index)."""
        keys = self._state.keys
        return keys.itemsize * len(keys)

    def __len__(self) -> int:
        return len(self._state.keys)

    def contains(self, card_id: int) -> bool:
        """True if `card_id` is blocked. An int outside 0..2**64-1 is never blocked; a non-integer
        raises TypeError."""
        number = operator.index(card_id)
        if not 0 <= number <= U64_MAX:
            return False
        return _key_index(self._state.keys, mix_key(number)) >= 0

    def __contains__(self, card_id: object) -> bool:
        return self.contains(card_id)  # type: ignore[arg-type]

    def ids(self) -> array[int]:
        """Every blocked card id, ascending, as an array('Q') (iterate it, index it or .tobytes())."""
        return array("Q", sorted(unmix_key(key) for key in self._state.keys))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(version={self.version}, count={len(self)}, checksum={self.checksum})"

    # --- updating ---------------------------------------------------------------------------

    def apply_delta(self, delta: DenyListDelta) -> None:
        """Apply `delta` entirely or not at all.

        DenyListStale if it is not newer than this list, DenyListBaseMismatch if it applies to another
        version, DenyListCorrupt if it adds a listed id or removes an unlisted one,
        DenyListChecksumMismatch if the result would not match its checksum. On any error the list is
        exactly as before.
        """
        if not isinstance(delta, DenyListDelta):
            raise TypeError(f"expected a DenyListDelta, got {type(delta).__name__}")
        with self._lock:
            state = self._state
            if delta.version <= state.version:
                raise DenyListStale(f"deny-list delta to version {delta.version} is not newer than the "
                                    f"list held (version {state.version})")
            if delta.base_version != state.version:
                raise DenyListBaseMismatch(f"deny-list delta applies to version {delta.base_version}, "
                                           f"the list held is version {state.version}")
            keys = state.keys
            lane1, lane2 = state.lane1, state.lane2
            for card_id in delta.remove:
                key = mix_key(card_id)
                if _key_index(keys, key) < 0:
                    raise DenyListCorrupt(f"deny-list delta removes card {card_id:016x}, which is not listed")
                lane1 -= splitmix64(card_id)
                lane2 -= splitmix64(key)
            for card_id in delta.add:
                key = mix_key(card_id)
                if _key_index(keys, key) >= 0:
                    raise DenyListCorrupt(f"deny-list delta adds card {card_id:016x}, "
                                          "which is already listed")
                lane1 += splitmix64(card_id)
                lane2 += splitmix64(key)
            count = len(keys) + len(delta.add) - len(delta.remove)
            if count > MAX_COUNT:
                raise DenyListCorrupt(f"deny-list delta would grow the list past {MAX_COUNT} ids")
            result = checksum_hex(count, lane1 & U64_MAX, lane2 & U64_MAX)
            if result != delta.checksum:
                raise DenyListChecksumMismatch(f"deny-list version {delta.version} would have checksum "
                                               f"{result}, the delta says {delta.checksum}")
            new_keys = array("Q", keys)
            for key in sorted(mix_key(card_id) for card_id in delta.remove):
                del new_keys[bisect_left(new_keys, key)]
            for key in sorted(mix_key(card_id) for card_id in delta.add):
                new_keys.insert(bisect_left(new_keys, key), key)
            self._state = _State(delta.version, new_keys, lane1 & U64_MAX, lane2 & U64_MAX)

    def replace_with(self, snapshot: DenyList) -> None:
        """Adopt a full snapshot, only if it is newer (else DenyListStale and nothing changes)."""
        if not isinstance(snapshot, DenyList):
            raise TypeError(f"expected a {DenyList.__name__}, got {type(snapshot).__name__}")
        with self._lock:
            if snapshot.version <= self._state.version:
                raise DenyListStale(f"deny-list snapshot version {snapshot.version} is not newer than the "
                                    f"list held (version {self._state.version})")
            self._state = snapshot._state  # states are never mutated, so sharing one is safe

    def diff(self, newer: DenyList) -> DenyListDelta:
        """The delta that turns this list into `newer` (DenyListStale if `newer` is not newer)."""
        if not isinstance(newer, DenyList):
            raise TypeError(f"expected a {DenyList.__name__}, got {type(newer).__name__}")
        mine, theirs = self._state, newer._state
        if theirs.version <= mine.version:
            raise DenyListStale(f"version {theirs.version} is not newer than version {mine.version}")
        old, new = set(mine.keys), set(theirs.keys)
        return DenyListDelta(
            version=theirs.version,
            base_version=mine.version,
            add=tuple(sorted(unmix_key(key) for key in new - old)),
            remove=tuple(sorted(unmix_key(key) for key in old - new)),
            checksum=newer.checksum,
        )

    # --- bytes and files ----------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The snapshot (see the module docstring for the layout)."""
        state = self._state
        keys = state.keys
        if sys.byteorder != "little":  # pragma: no cover - big-endian hosts
            keys = array("Q", keys)
            keys.byteswap()
        return snapshot_header(state.version, len(state.keys), state.lane1, state.lane2) + keys.tobytes()

    @classmethod
    def from_bytes(cls, blob: bytes | bytearray | memoryview) -> DenyList:
        """Decode and verify a snapshot: DenyListCorrupt if malformed, DenyListChecksumMismatch if the
        ids do not match the checksum in its header."""
        data = memoryview(blob).cast("B")
        version, count, lane1, lane2 = parse_snapshot_header(data, len(data))
        keys = array("Q")
        keys.frombytes(data[SNAPSHOT_HEADER_SIZE:])
        if sys.byteorder != "little":  # pragma: no cover - big-endian hosts
            keys.byteswap()
        for position in range(1, count):
            if keys[position - 1] >= keys[position]:
                raise DenyListCorrupt(f"deny-list snapshot keys out of order at position {position}")
        if _lanes(keys) != (lane1, lane2):
            raise DenyListChecksumMismatch("deny-list snapshot ids do not match the checksum in its header")
        return cls._from_state(_State(version, keys, lane1, lane2))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the snapshot to `path` atomically (see atomic_write)."""
        atomic_write(path, [self.to_bytes()])

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DenyList:
        """Read and verify a snapshot file written by save()."""
        return cls.from_bytes(read_file(path))
