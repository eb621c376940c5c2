# cython: language_level=3
"""Compiled deny-list: the same semantics and bytes as fare_core/_denylist_py.py, built for 10 million ids.

Layout in memory: the sorted fmix64 keys of the ids (8 bytes a phone) and a small bucket index of u32
offsets on the top `bits` bits of the key, `bits` chosen so that a bucket holds 512 to 1024 keys (for
10 million ids: 16,384 buckets, a 64 KB index that stays in the CPU's L2 cache, 0.007 byte a phone).
Since fmix64 spreads any id scheme uniformly, the key's next bits predict its place inside the bucket to
within about a dozen keys, so a lookup is one cached index read, one miss into the key array and a
short sequential scan: measured on the 2-core VM, about 20% faster than a 4 MB index with a binary
search in ~10-key buckets, which pays a second miss. Arrays of a few MB ask for transparent huge pages,
which saves the page walk of each miss (another ~25% there). No Python objects are touched.

Everything that touches all the ids (building from a uint64 buffer, verifying a loaded snapshot,
rebuilding after a delta) runs in C without the GIL, so a gate's event loop keeps answering taps while a
thread applies an update. An update builds new arrays beside the old ones and swaps the pointers while
holding the GIL; readers (which hold the GIL) see the old list or the new one, never a mixture, and
updates are serialised by a lock. See the twin's docstring for the checksum and the snapshot layout;
DenyListDelta is the twin's class, re-exported, so both modules validate deltas with the same code.
"""

cimport cython
from cpython.long cimport PyLong_CheckExact
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy, memset

import operator
import os
import sys
import threading
from array import array

from . import _denylist_py as _ref
from .errors import DenyListBaseMismatch, DenyListChecksumMismatch, DenyListCorrupt, DenyListStale

__all__ = ["DenyList", "DenyListDelta"]

DenyListDelta = _ref.DenyListDelta

cdef extern from *:
    """
    #include <stdint.h>
    #include <stdlib.h>
    #if defined(__linux__)
    #include <sys/mman.h>
    #endif
    /* Arrays of a few MB and more are 2 MB-aligned and asked to be backed by huge pages (where the
       kernel offers them through madvise): a lookup in a 10M list then costs two cache misses and no
       page walk, which matters twice as much in a VM (nested paging). Every block is reported to
       tracemalloc (its own domain), so memory measured with tracemalloc includes the list. */
    #define FG_TRACE_DOMAIN 0x46474c44u
    #define FG_HUGE_PAGE ((size_t)2 << 20)
    static void* fg_alloc(size_t size) {
        if (size == 0) size = 1;  /* malloc(0) may return NULL, which would read as "out of memory" */
    #if defined(__linux__) && defined(MADV_HUGEPAGE)
        if (size >= 2 * FG_HUGE_PAGE) {
            void* block = NULL;
            if (posix_memalign(&block, FG_HUGE_PAGE, size) != 0) return NULL;
            (void)madvise(block, size & ~(FG_HUGE_PAGE - 1), MADV_HUGEPAGE);  /* a hint; failure is fine */
            PyTraceMalloc_Track(FG_TRACE_DOMAIN, (uintptr_t)block, size);
            return block;
        }
    #endif
        void* block = malloc(size);
        if (block) PyTraceMalloc_Track(FG_TRACE_DOMAIN, (uintptr_t)block, size);
        return block;
    }
    static void fg_free(void* block) {
        if (block) {
            PyTraceMalloc_Untrack(FG_TRACE_DOMAIN, (uintptr_t)block);
            free(block);
        }
    }
    /* Shrink a block (keep the old one if that fails). */
    static void* fg_shrink(void* block, size_t old_size, size_t size) {
        void* smaller;
        if (size == 0) size = 1;
        PyTraceMalloc_Untrack(FG_TRACE_DOMAIN, (uintptr_t)block);
        smaller = realloc(block, size);
        if (!smaller) {
            PyTraceMalloc_Track(FG_TRACE_DOMAIN, (uintptr_t)block, old_size);
            return block;
        }
        PyTraceMalloc_Track(FG_TRACE_DOMAIN, (uintptr_t)smaller, size);
        return smaller;
    }
    /* MurmurHash3 fmix64 and its inverse: the same constants as fare_core/_denylist_py.py. */
    static inline uint64_t fg_mix_key(uint64_t x) {
        x ^= x >> 33; x *= 0xff51afd7ed558ccdULL;
        x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL;
        return x ^ (x >> 33);
    }
    static inline uint64_t fg_unmix_key(uint64_t x) {
        x ^= x >> 33; x *= 0x9cb4b2f8129337dbULL;
        x ^= x >> 33; x *= 0x4f74430c22a54005ULL;
        return x ^ (x >> 33);
    }
    /* SplitMix64 output for state z (the checksum lanes). */
    static inline uint64_t fg_splitmix64(uint64_t z) {
        z += 0x9e3779b97f4a7c15ULL;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
    }
    static inline uint64_t fg_bswap64(uint64_t x) {
        x = ((x & 0x00ff00ff00ff00ffULL) << 8) | ((x >> 8) & 0x00ff00ff00ff00ffULL);
        x = ((x & 0x0000ffff0000ffffULL) << 16) | ((x >> 16) & 0x0000ffff0000ffffULL);
        return (x << 32) | (x >> 32);
    }
    """
    void* fg_alloc(size_t size) noexcept nogil
    void fg_free(void* block) noexcept nogil
    void* fg_shrink(void* block, size_t old_size, size_t size) noexcept nogil
    uint64_t fg_mix_key(uint64_t x) noexcept nogil
    uint64_t fg_unmix_key(uint64_t x) noexcept nogil
    uint64_t fg_splitmix64(uint64_t z) noexcept nogil
    uint64_t fg_bswap64(uint64_t x) noexcept nogil


cdef enum:
    RADIX_BITS = 11
    RADIX_SIZE = 2048
    RADIX_PASSES = 6  # 6 * 11 >= 64

cdef bint _BIG_ENDIAN = sys.byteorder == "big"
cdef Py_ssize_t _HEADER = _ref.SNAPSHOT_HEADER_SIZE
cdef Py_ssize_t _MAX_COUNT = _ref.MAX_COUNT


# --- C helpers (no GIL) ---------------------------------------------------------------------------

cdef inline void* _alloc_u64(Py_ssize_t count) noexcept nogil:
    return fg_alloc(<size_t>count * 8)


cdef int _radix_sort(uint64_t* data, uint64_t* scratch, Py_ssize_t n) noexcept nogil:
    """Sort in place (LSD radix, 11-bit digits, all histograms in one pass, constant digits skipped).
    Returns -1 if out of memory (data untouched)."""
    cdef Py_ssize_t* counts
    cdef Py_ssize_t* column
    cdef Py_ssize_t i, total, held
    cdef int p, d, shift
    cdef uint64_t x
    cdef uint64_t* src = data
    cdef uint64_t* dst = scratch
    cdef uint64_t* swap
    cdef bint constant
    if n < 2:
        return 0
    counts = <Py_ssize_t*> fg_alloc(RADIX_PASSES * RADIX_SIZE * sizeof(Py_ssize_t))
    if counts == NULL:
        return -1
    memset(counts, 0, RADIX_PASSES * RADIX_SIZE * sizeof(Py_ssize_t))
    for i in range(n):
        x = data[i]
        for p in range(RADIX_PASSES):
            counts[p * RADIX_SIZE + <int>((x >> (p * RADIX_BITS)) & (RADIX_SIZE - 1))] += 1
    for p in range(RADIX_PASSES):
        column = counts + p * RADIX_SIZE
        constant = False
        for d in range(RADIX_SIZE):
            if column[d] == n:
                constant = True
                break
        if constant:
            continue
        total = 0
        for d in range(RADIX_SIZE):
            held = column[d]
            column[d] = total
            total += held
        shift = p * RADIX_BITS
        for i in range(n):
            x = src[i]
            d = <int>((x >> shift) & (RADIX_SIZE - 1))
            dst[column[d]] = x
            column[d] += 1
        swap = src
        src = dst
        dst = swap
    if src != data:
        memcpy(data, src, <size_t>n * 8)
    fg_free(counts)
    return 0


cdef Py_ssize_t _dedup(uint64_t* data, Py_ssize_t n) noexcept nogil:
    """Collapse equal neighbours of a sorted array; returns the new length."""
    cdef Py_ssize_t i, out = 1
    if n == 0:
        return 0
    for i in range(1, n):
        if data[i] != data[out - 1]:
            data[out] = data[i]
            out += 1
    return out


cdef Py_ssize_t _verify_and_hash(const uint64_t* keys, Py_ssize_t n, uint64_t* lane1,
                                 uint64_t* lane2) noexcept nogil:
    """Checksum lanes of the keys in one pass; returns the first position out of strict order, or 0."""
    cdef Py_ssize_t i
    cdef uint64_t key, previous = 0, sum1 = 0, sum2 = 0
    for i in range(n):
        key = keys[i]
        if i and key <= previous:
            return i
        previous = key
        sum1 += fg_splitmix64(fg_unmix_key(key))
        sum2 += fg_splitmix64(key)
    lane1[0] = sum1
    lane2[0] = sum2
    return 0


cdef inline Py_ssize_t _lower_bound(const uint64_t* keys, Py_ssize_t low, Py_ssize_t high,
                                    uint64_t key) noexcept nogil:
    """First position in keys[low:high] whose key is >= `key` (high if none)."""
    cdef Py_ssize_t middle
    while low < high:
        middle = low + ((high - low) >> 1)
        if keys[middle] < key:
            low = middle + 1
        else:
            high = middle
    return low


cdef void _fill_index(const uint64_t* keys, Py_ssize_t n, uint32_t* index, int bits) noexcept nogil:
    """index[b] = first position whose key's top `bits` bits are >= b: one binary search a bucket,
    O(buckets * log n), so rebuilding the index never walks the whole key array."""
    cdef int shift = 64 - bits
    cdef uint64_t bucket, buckets = (<uint64_t>1) << bits
    cdef Py_ssize_t position = 0
    index[0] = 0
    for bucket in range(1, buckets):
        position = _lower_bound(keys, position, n, bucket << shift)
        index[bucket] = <uint32_t>position
    index[buckets] = <uint32_t>n


cdef uint32_t* _new_index(const uint64_t* keys, Py_ssize_t n, int bits) noexcept nogil:
    cdef uint32_t* index = <uint32_t*> fg_alloc((((<size_t>1) << bits) + 1) * sizeof(uint32_t))
    if index != NULL:
        _fill_index(keys, n, index, bits)
    return index


cdef inline unsigned char[::1] _byte_view(uint64_t* data, Py_ssize_t count):
    """A Python buffer over `count` u64 at `data` (not owning it); count must be > 0."""
    return <unsigned char[:count * 8]> (<unsigned char*> data)


# --- the list -------------------------------------------------------------------------------------

cdef class DenyList:
    """A versioned, checksummed set of blocked card ids (see fare_core/_denylist_py.py)."""

    def __cinit__(self):
        self._keys = NULL
        self._index = NULL
        self._count = 0
        self._bits = 0
        self._version = 0
        self._lane1 = 0
        self._lane2 = 0
        self._lock = threading.Lock()

    def __dealloc__(self):
        fg_free(self._keys)
        fg_free(self._index)

    def __init__(self, ids=(), version=0):
        cdef uint64_t checked_version = _ref.check_u64(version, "version")
        cdef const unsigned char[::1] source
        cdef uint64_t* keys = NULL
        cdef uint64_t* scratch = NULL
        cdef uint32_t* index = NULL
        cdef Py_ssize_t i, n, count = 0
        cdef int failed = 0, bits
        cdef uint64_t lane1 = 0, lane2 = 0
        raw = _ref.u64_buffer(ids)
        if raw is None:
            raw = memoryview(_ids_to_array(ids)).cast("B")
        source = raw
        n = source.shape[0] // 8
        try:
            keys = <uint64_t*> _alloc_u64(n)
            scratch = <uint64_t*> _alloc_u64(n)
            if keys == NULL or scratch == NULL:
                raise MemoryError(f"no memory for a deny-list of {n} ids")
            with nogil:
                if n:
                    memcpy(keys, &source[0], <size_t>n * 8)
                for i in range(n):
                    keys[i] = fg_mix_key(keys[i])
                failed = _radix_sort(keys, scratch, n)
                if not failed:
                    count = _dedup(keys, n)
                    _verify_and_hash(keys, count, &lane1, &lane2)
            fg_free(scratch)
            scratch = NULL
            if failed:
                raise MemoryError(f"no memory to sort a deny-list of {n} ids")
            if count > _MAX_COUNT:
                raise ValueError(f"a deny-list holds at most {_MAX_COUNT} ids")
            if count < n:
                keys = <uint64_t*> fg_shrink(keys, <size_t>n * 8, <size_t>count * 8)
            bits = _ref.bits_for(count)
            with nogil:
                index = _new_index(keys, count, bits)
            if index == NULL:
                raise MemoryError(f"no memory for the index of a deny-list of {count} ids")
            self._install(keys, count, index, bits, checked_version, lane1, lane2)
            keys = NULL
        finally:
            fg_free(keys)
            fg_free(scratch)

    cdef int _install(self, uint64_t* keys, Py_ssize_t count, uint32_t* index, int bits,
                      uint64_t version, uint64_t lane1, uint64_t lane2) except -1:
        """Swap in new arrays (taking ownership) and free the old ones; no Python call in between, so
        GIL-holding readers see all of the old list or all of the new."""
        cdef uint64_t* old_keys = self._keys
        cdef uint32_t* old_index = self._index
        self._keys = keys
        self._index = index
        self._count = count
        self._bits = bits
        self._version = version
        self._lane1 = lane1
        self._lane2 = lane2
        fg_free(old_keys)
        fg_free(old_index)
        return 0

    # --- reading ----------------------------------------------------------------------------------

    cdef bint _has_key(self, uint64_t key) noexcept nogil:
        # Keys are uniform, so the key's next 32 bits predict its place within the bucket to within
        # about sqrt(bucket size)/2 keys: one miss into the key array, then a sequential scan that the
        # hardware prefetcher keeps ahead of. Crowded buckets, which only a crafted id set can make,
        # fall back to binary search so a lookup stays O(log n) whatever the ids.
        cdef uint64_t bucket, fraction
        cdef Py_ssize_t low, high, end, middle, position
        cdef const uint64_t* keys = self._keys
        if self._count == 0:
            return False
        bucket = key >> (64 - self._bits)
        low = self._index[bucket]
        end = self._index[bucket + 1]
        if end - low <= 8192:
            if low == end:
                return False
            fraction = (key << self._bits) >> 32
            position = low + <Py_ssize_t>((fraction * <uint64_t>(end - low)) >> 32)
            if keys[position] < key:
                position += 1
                while position < end and keys[position] < key:
                    position += 1
                return position < end and keys[position] == key
            while position > low and keys[position - 1] >= key:
                position -= 1
            return keys[position] == key
        high = end
        while low < high:
            middle = (low + high) >> 1
            if keys[middle] < key:
                low = middle + 1
            else:
                high = middle
        return low < end and keys[low] == key

    cdef bint contains_c(self, unsigned long long card_id) noexcept nogil:
        return self._has_key(fg_mix_key(card_id))

    @property
    def version(self):
        return self._version

    @property
    def checksum(self):
        return _ref.checksum_hex(self._count, self._lane1, self._lane2)

    @property
    def nbytes(self):
        """Bytes the lookup structures occupy: the keys plus the bucket index."""
        return self._count * 8 + (((<Py_ssize_t>1) << self._bits) + 1) * 4

    def __len__(self):
        return self._count

    cdef int _contains_object(self, object card_id) except -1:
        cdef unsigned long long number
        if not PyLong_CheckExact(card_id):
            card_id = operator.index(card_id)  # TypeError for floats, strings, None (as the twin)
        try:
            number = card_id
        except OverflowError:  # negative or wider than 64 bits: never on the list
            return 0
        return self.contains_c(number)

    @cython.always_allow_keywords(False)
    def contains(self, card_id):
        """True if `card_id` is blocked. An int outside 0..2**64-1 is never blocked; a non-integer
        raises TypeError."""
        return self._contains_object(card_id) == 1

    def __contains__(self, card_id):
        return self._contains_object(card_id) == 1

    def ids(self):
        """Every blocked card id, ascending, as an array('Q') (iterate it, index it or .tobytes())."""
        cdef Py_ssize_t i, count
        cdef uint64_t* out
        cdef uint64_t* scratch = NULL
        cdef unsigned char[::1] view
        cdef int failed = 0
        with self._lock:  # the arrays are read without the GIL: no update may free them meanwhile
            count = self._count
            result = array("Q", [0]) * count
            if count == 0:
                return result
            view = memoryview(result).cast("B")
            out = <uint64_t*> &view[0]
            scratch = <uint64_t*> _alloc_u64(count)
            if scratch == NULL:
                raise MemoryError("no memory to sort the deny-list ids")
            with nogil:
                for i in range(count):
                    out[i] = fg_unmix_key(self._keys[i])
                failed = _radix_sort(out, scratch, count)
            fg_free(scratch)
            if failed:
                raise MemoryError("no memory to sort the deny-list ids")
            return result

    def __repr__(self):
        return f"{type(self).__name__}(version={self.version}, count={len(self)}, checksum={self.checksum})"

    # --- updating -----------------------------------------------------------------------------------

    def apply_delta(self, delta):
        """Apply `delta` entirely or not at all (see the twin for the errors); the list is unchanged on
        any error."""
        if not isinstance(delta, DenyListDelta):
            raise TypeError(f"expected a DenyListDelta, got {type(delta).__name__}")
        with self._lock:
            self._apply_delta(delta)

    cdef _apply_delta(self, delta):
        cdef uint64_t version = delta.version
        cdef uint64_t base = delta.base_version
        cdef tuple added = delta.add
        cdef tuple removed = delta.remove
        cdef Py_ssize_t n_add = len(added), n_remove = len(removed), i, j, r, count
        cdef Py_ssize_t source, target, position
        cdef bint removing, listed
        cdef uint64_t lane1 = self._lane1, lane2 = self._lane2, card_id, key
        cdef uint64_t* add_keys = NULL
        cdef uint64_t* remove_keys = NULL
        cdef uint64_t* scratch = NULL
        cdef uint64_t* new_keys = NULL
        cdef uint32_t* new_index = NULL
        cdef const uint64_t* old_keys = self._keys
        cdef Py_ssize_t old_count = self._count
        cdef int bits, failed = 0
        if version <= self._version:
            raise DenyListStale(f"deny-list delta to version {version} is not newer than the "
                                f"list held (version {self._version})")
        if base != self._version:
            raise DenyListBaseMismatch(f"deny-list delta applies to version {base}, "
                                       f"the list held is version {self._version}")
        try:
            add_keys = <uint64_t*> _alloc_u64(n_add)
            remove_keys = <uint64_t*> _alloc_u64(n_remove)
            scratch = <uint64_t*> _alloc_u64(n_add if n_add > n_remove else n_remove)
            if add_keys == NULL or remove_keys == NULL or scratch == NULL:
                raise MemoryError("no memory to apply a deny-list delta")
            for i in range(n_remove):
                card_id = removed[i]
                key = fg_mix_key(card_id)
                if not self._has_key(key):
                    raise DenyListCorrupt(f"deny-list delta removes card {card_id:016x}, which is not listed")
                lane1 -= fg_splitmix64(card_id)
                lane2 -= fg_splitmix64(key)
                remove_keys[i] = key
            for i in range(n_add):
                card_id = added[i]
                key = fg_mix_key(card_id)
                if self._has_key(key):
                    raise DenyListCorrupt(f"deny-list delta adds card {card_id:016x}, "
                                          "which is already listed")
                lane1 += fg_splitmix64(card_id)
                lane2 += fg_splitmix64(key)
                add_keys[i] = key
            count = old_count + n_add - n_remove
            if count > _MAX_COUNT:
                raise DenyListCorrupt(f"deny-list delta would grow the list past {_MAX_COUNT} ids")
            result = _ref.checksum_hex(count, lane1, lane2)
            if result != delta.checksum:
                raise DenyListChecksumMismatch(f"deny-list version {version} would have checksum "
                                               f"{result}, the delta says {delta.checksum}")
            if _radix_sort(add_keys, scratch, n_add) or _radix_sort(remove_keys, scratch, n_remove):
                raise MemoryError("no memory to apply a deny-list delta")
            if _dedup(add_keys, n_add) != n_add or _dedup(remove_keys, n_remove) != n_remove:
                raise DenyListCorrupt("deny-list delta lists a card id twice")
            bits = _ref.bits_for(count)
            new_keys = <uint64_t*> _alloc_u64(count)
            new_index = <uint32_t*> fg_alloc((((<size_t>1) << bits) + 1) * sizeof(uint32_t))
            if new_keys == NULL or new_index == NULL:
                raise MemoryError("no memory to apply a deny-list delta")
            with nogil:
                # Old keys minus the removed ones plus the added ones, copied run by run (memcpy)
                # between the few change points, so a small delta costs one pass of memory bandwidth.
                source = target = j = r = 0
                while not failed and (j < n_add or r < n_remove):
                    removing = r < n_remove and (j >= n_add or remove_keys[r] < add_keys[j])
                    if removing:
                        key = remove_keys[r]
                        r += 1
                    else:
                        key = add_keys[j]
                        j += 1
                    position = _lower_bound(old_keys, source, old_count, key)
                    memcpy(new_keys + target, old_keys + source, <size_t>(position - source) * 8)
                    target += position - source
                    source = position
                    listed = position < old_count and old_keys[position] == key
                    if removing != listed:  # excluded by the checks above; never install such a list
                        failed = 1
                    elif removing:
                        source += 1
                    else:
                        new_keys[target] = key
                        target += 1
                if not failed:
                    memcpy(new_keys + target, old_keys + source, <size_t>(old_count - source) * 8)
                    target += old_count - source
                    if target == count:
                        _fill_index(new_keys, count, new_index, bits)
                    else:
                        failed = 1
            if failed:  # unreachable after the membership checks above; refuse rather than install
                raise DenyListCorrupt("deny-list delta does not fit the list held")
            self._install(new_keys, count, new_index, bits, version, lane1, lane2)
            new_keys = NULL
            new_index = NULL
        finally:
            fg_free(add_keys)
            fg_free(remove_keys)
            fg_free(scratch)
            fg_free(new_keys)
            fg_free(new_index)

    def replace_with(self, DenyList snapshot not None):
        """Adopt a full snapshot, only if it is newer (else DenyListStale and nothing changes)."""
        cdef uint64_t* keys = NULL
        cdef uint32_t* index = NULL
        cdef size_t index_size
        with self._lock:
            if snapshot._version <= self._version:
                raise DenyListStale(f"deny-list snapshot version {snapshot.version} is not newer than the "
                                    f"list held (version {self._version})")
            index_size = (((<size_t>1) << snapshot._bits) + 1) * sizeof(uint32_t)
            keys = <uint64_t*> _alloc_u64(snapshot._count)
            index = <uint32_t*> fg_alloc(index_size)
            if keys == NULL or index == NULL:
                fg_free(keys)
                fg_free(index)
                raise MemoryError("no memory to copy a deny-list snapshot")
            # Copied holding the GIL, so `snapshot` cannot be updated (and its arrays freed) meanwhile.
            if snapshot._count:
                memcpy(keys, snapshot._keys, <size_t>snapshot._count * 8)
            memcpy(index, snapshot._index, index_size)
            self._install(keys, snapshot._count, index, snapshot._bits, snapshot._version,
                          snapshot._lane1, snapshot._lane2)

    def diff(self, DenyList newer not None):
        """The delta that turns this list into `newer` (DenyListStale if `newer` is not newer)."""
        cdef Py_ssize_t i = 0, j = 0
        cdef uint64_t mine, theirs
        if newer._version <= self._version:
            raise DenyListStale(f"version {newer._version} is not newer than version {self._version}")
        added = []
        removed = []
        # Holds the GIL throughout, so neither list can be updated during the walk.
        while i < self._count or j < newer._count:
            if j >= newer._count:
                removed.append(fg_unmix_key(self._keys[i]))
                i += 1
            elif i >= self._count:
                added.append(fg_unmix_key(newer._keys[j]))
                j += 1
            else:
                mine = self._keys[i]
                theirs = newer._keys[j]
                if mine == theirs:
                    i += 1
                    j += 1
                elif mine < theirs:
                    removed.append(fg_unmix_key(mine))
                    i += 1
                else:
                    added.append(fg_unmix_key(theirs))
                    j += 1
        return DenyListDelta(version=newer.version, base_version=self.version, add=tuple(sorted(added)),
                             remove=tuple(sorted(removed)), checksum=newer.checksum)

    # --- bytes and files ----------------------------------------------------------------------------

    def to_bytes(self):
        """The snapshot (layout in the twin's docstring)."""
        cdef Py_ssize_t i, count = self._count
        cdef bytes header = _ref.snapshot_header(self._version, count, self._lane1, self._lane2)
        cdef bytes blob = PyBytes_FromStringAndSize(NULL, _HEADER + count * 8)
        cdef char* data = PyBytes_AS_STRING(blob)
        cdef uint64_t* payload = <uint64_t*> (data + _HEADER)
        memcpy(data, PyBytes_AS_STRING(header), _HEADER)
        if count:
            memcpy(payload, self._keys, <size_t>count * 8)
        if _BIG_ENDIAN:
            for i in range(count):
                payload[i] = fg_bswap64(payload[i])
        return blob

    cdef _adopt(self, uint64_t* keys, Py_ssize_t count, uint64_t version, uint64_t lane1, uint64_t lane2):
        """Verify a snapshot's keys (order, checksum) and install them; takes ownership of `keys`."""
        cdef Py_ssize_t i, bad = 0
        cdef uint64_t found1 = 0, found2 = 0
        cdef uint32_t* index = NULL
        cdef int bits = _ref.bits_for(count)
        try:
            with nogil:
                if _BIG_ENDIAN:
                    for i in range(count):
                        keys[i] = fg_bswap64(keys[i])
                bad = _verify_and_hash(keys, count, &found1, &found2)
                if bad == 0 and found1 == lane1 and found2 == lane2:
                    index = _new_index(keys, count, bits)
            if bad:
                raise DenyListCorrupt(f"deny-list snapshot keys out of order at position {bad}")
            if found1 != lane1 or found2 != lane2:
                raise DenyListChecksumMismatch("deny-list snapshot ids do not match the checksum in its header")
            if index == NULL:
                raise MemoryError(f"no memory for the index of a deny-list of {count} ids")
            self._install(keys, count, index, bits, version, lane1, lane2)
            keys = NULL
        finally:
            fg_free(keys)

    @classmethod
    def from_bytes(cls, blob):
        """Decode and verify a snapshot: DenyListCorrupt if malformed, DenyListChecksumMismatch if the
        ids do not match the checksum in its header."""
        cdef const unsigned char[::1] data = memoryview(blob).cast("B")
        cdef Py_ssize_t size = data.shape[0]
        cdef uint64_t* keys
        cdef DenyList self
        version, count, lane1, lane2 = _ref.parse_snapshot_header(data, size)
        self = cls()
        keys = <uint64_t*> _alloc_u64(count)
        if keys == NULL:
            raise MemoryError(f"no memory for a deny-list of {count} ids")
        if count:
            memcpy(keys, &data[_HEADER], <size_t>count * 8)
        self._adopt(keys, count, version, lane1, lane2)
        return self

    def save(self, path):
        """Write the snapshot to `path` atomically (temp file, fsync, os.replace, fsync the directory)."""
        with self._lock:  # the file is written from our arrays without the GIL: keep updates out
            header = _ref.snapshot_header(self._version, self._count, self._lane1, self._lane2)
            if self._count and not _BIG_ENDIAN:
                _ref.atomic_write(path, [header, _byte_view(self._keys, self._count)])
            else:
                _ref.atomic_write(path, [self.to_bytes()])

    @classmethod
    def load(cls, path):
        """Read and verify a snapshot file written by save(), straight into the list's own array."""
        cdef uint64_t* keys = NULL
        cdef DenyList self
        cdef Py_ssize_t wanted, got = 0
        with open(path, "rb", buffering=0) as handle:
            size = os.fstat(handle.fileno()).st_size
            header = _read_up_to(handle, _HEADER)
            version, count, lane1, lane2 = _ref.parse_snapshot_header(header, size)
            self = cls()
            keys = <uint64_t*> _alloc_u64(count)
            if keys == NULL:
                raise MemoryError(f"no memory for a deny-list of {count} ids")
            try:
                wanted = count * 8
                if wanted:
                    view = memoryview(_byte_view(keys, count))
                    while got < wanted:
                        step = handle.readinto(view[got:])
                        if not step:
                            break
                        got += step
                if got != wanted:
                    raise DenyListCorrupt(f"deny-list file {os.fspath(path)!r} shrank while being read")
            except BaseException:
                fg_free(keys)
                raise
        self._adopt(keys, count, version, lane1, lane2)
        return self


def _ids_to_array(ids):
    """array('Q') of an iterable of card ids: ValueError if one is outside 0..2**64-1."""
    items = ids if isinstance(ids, (list, tuple)) else list(ids)
    try:
        return array("Q", items)
    except (OverflowError, TypeError):
        for card_id in items:
            _ref.check_u64(card_id, "card id")
        raise


def _read_up_to(handle, Py_ssize_t size):
    chunks = []
    cdef Py_ssize_t got = 0
    while got < size:
        chunk = handle.read(size - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
