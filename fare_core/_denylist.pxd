# Declarations of the compiled deny-list, so fare_core._core can `cimport` it and test membership at C
# level (no Python call on the decide() hot path).

from libc.stdint cimport uint32_t, uint64_t


cdef class DenyList:
    # Sorted fmix64 keys of the blocked card ids (fg_alloc'ed, fg_free'd: 2 MB-aligned with a huge-page hint when large).
    cdef uint64_t* _keys
    # Bucket index: keys whose top `_bits` bits equal b lie in _keys[_index[b]:_index[b + 1]].
    cdef uint32_t* _index
    cdef Py_ssize_t _count
    cdef int _bits
    cdef uint64_t _version
    cdef uint64_t _lane1
    cdef uint64_t _lane2
    # threading.Lock serialising updates (readers never take it).
    cdef object _lock
    cdef object __weakref__

    # Exact membership of a card id. Call it holding the GIL (or with no concurrent update): an update
    # frees the old arrays with the GIL held, right after swapping in the new ones.
    cdef bint contains_c(self, unsigned long long card_id) noexcept nogil
    cdef bint _has_key(self, uint64_t key) noexcept nogil
    cdef int _install(self, uint64_t* keys, Py_ssize_t count, uint32_t* index, int bits,
                      uint64_t version, uint64_t lane1, uint64_t lane2) except -1
    cdef int _contains_object(self, object card_id) except -1
    cdef _apply_delta(self, delta)
    cdef _adopt(self, uint64_t* keys, Py_ssize_t count, uint64_t version, uint64_t lane1, uint64_t lane2)
