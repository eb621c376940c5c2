"""Deny-list: exact membership, deltas applied whole or not at all, snapshots that survive a crash.

Every test runs on both implementations through the `impl` fixture (compiled and pure-Python twin);
the last ones check that the two write the same bytes.
"""

from __future__ import annotations

import os
import random
from array import array
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fare_core
from fare_core import (
    DenyListBaseMismatch,
    DenyListChecksumMismatch,
    DenyListCorrupt,
    DenyListError,
    DenyListStale,
)
from fare_core import _denylist_py as reference

U64_MAX = 2**64 - 1
card_ids = st.integers(min_value=0, max_value=U64_MAX)
# Edge ids, ids sharing a prefix, and small sequential ids, beside uniform ones.
id_sets = st.lists(
    st.one_of(card_ids, st.integers(0, 300), st.integers(U64_MAX - 300, U64_MAX),
              st.integers(0, 2**16).map(lambda low: (0x86_0000_0000 << 16) | low)),
    max_size=300,
).map(set)
property_settings = settings(max_examples=60, deadline=None,
                             suppress_health_check=[HealthCheck.function_scoped_fixture])


def state_of(denylist: Any, probes: list[int]) -> tuple[Any, ...]:
    """Everything a refused update must leave alone."""
    return (denylist.version, denylist.checksum, len(denylist), list(denylist.ids()),
            [denylist.contains(card_id) for card_id in probes])


def delta_between(module: Any, old_ids: set[int], new_ids: set[int], base: int, version: int) -> Any:
    """A delta built from the two sets directly (not through diff()), with the true result checksum."""
    result = module.DenyList(new_ids, version=version)
    return module.DenyListDelta(version=version, base_version=base, add=tuple(new_ids - old_ids),
                                       remove=tuple(old_ids - new_ids), checksum=result.checksum)


# --- membership -----------------------------------------------------------------------------------


@property_settings
@given(ids=id_sets, others=st.lists(card_ids, max_size=50))
def test_membership_matches_a_python_set(impl: Any, ids: set[int], others: list[int]) -> None:
    denylist = impl.denylist.DenyList(ids, version=7)
    assert len(denylist) == len(ids)
    assert list(denylist.ids()) == sorted(ids)
    for card_id in ids:
        assert denylist.contains(card_id)
        assert card_id in denylist
    for card_id in others:
        assert denylist.contains(card_id) == (card_id in ids)
        for near in (card_id - 1, card_id + 1):
            assert denylist.contains(near) == (near in ids)


def test_sequential_ids_and_the_extremes(impl: Any) -> None:
    ids = set(range(20_000)) | {U64_MAX, U64_MAX - 1, 2**63, 2**32}
    denylist = impl.denylist.DenyList(ids)
    assert len(denylist) == len(ids)
    for card_id in (0, 1, 19_999, U64_MAX, U64_MAX - 1, 2**63, 2**32):
        assert denylist.contains(card_id)
    for card_id in (20_000, 20_001, U64_MAX - 2, 2**63 - 1, 2**63 + 1, 2**32 + 1, 2**32 - 1):
        assert not denylist.contains(card_id)
    assert list(denylist.ids()) == sorted(ids)


def test_out_of_range_ints_are_never_listed_and_non_ints_are_refused(impl: Any) -> None:
    denylist = impl.denylist.DenyList([0, U64_MAX])
    for card_id in (-1, -(2**64), 2**64, 2**64 + 1, 2**200):
        assert not denylist.contains(card_id)
        assert card_id not in denylist
    for not_an_id in (1.0, "1", None, b"\x01"):
        with pytest.raises(TypeError):
            denylist.contains(not_an_id)
        with pytest.raises(TypeError):
            _ = not_an_id in denylist


def test_empty_list(impl: Any) -> None:
    denylist = impl.denylist.DenyList()
    assert len(denylist) == 0 and denylist.version == 0
    assert not denylist.contains(0) and not denylist.contains(U64_MAX)
    assert list(denylist.ids()) == []
    assert impl.denylist.DenyList.from_bytes(denylist.to_bytes()).checksum == denylist.checksum


def test_buffer_of_uint64_equals_iterable_and_duplicates_collapse(impl: Any) -> None:
    rng = random.Random(5)
    ids = [rng.getrandbits(64) for _ in range(3_000)] + [0, U64_MAX]
    ids += ids[:500]  # duplicates
    from_buffer = impl.denylist.DenyList(array("Q", ids), version=3)
    from_list = impl.denylist.DenyList(ids, version=3)
    from_generator = impl.denylist.DenyList((card_id for card_id in ids), version=3)
    assert len(from_buffer) == len(set(ids))
    assert from_buffer.to_bytes() == from_list.to_bytes() == from_generator.to_bytes()
    assert from_buffer.contains(ids[0]) and from_buffer.contains(U64_MAX)


@pytest.mark.parametrize("buffer", [b"\x01" * 16, bytearray(8), array("q", [1, 2]), array("I", [1, 2]),
                                    memoryview(array("Q", [1, 2, 3, 4])).cast("B").cast("Q", (2, 2))])
def test_buffers_that_are_not_flat_uint64_are_refused(impl: Any, buffer: object) -> None:
    with pytest.raises(TypeError):
        impl.denylist.DenyList(buffer)


@pytest.mark.parametrize("bad", [[-1], [2**64], [1, 2, 2**70]])
def test_out_of_range_ids_raise_value_error(impl: Any, bad: list[int]) -> None:
    with pytest.raises(ValueError, match="card id"):
        impl.denylist.DenyList(bad)


def test_bad_constructor_arguments(impl: Any) -> None:
    with pytest.raises(TypeError):
        impl.denylist.DenyList([1, "2"])
    with pytest.raises(TypeError):
        impl.denylist.DenyList(42)
    with pytest.raises(ValueError, match="version"):
        impl.denylist.DenyList([1], version=-1)
    with pytest.raises(ValueError, match="version"):
        impl.denylist.DenyList([1], version=2**64)


def test_version_and_checksum_are_read_only(impl: Any) -> None:
    denylist = impl.denylist.DenyList([1, 2], version=4)
    with pytest.raises(AttributeError):
        denylist.version = 5
    with pytest.raises(AttributeError):
        denylist.checksum = "0" * 48
    assert denylist.version == 4


def test_checksum_depends_on_the_set_only(impl: Any) -> None:
    rng = random.Random(9)
    ids = [rng.getrandbits(64) for _ in range(500)]
    shuffled = ids[:]
    rng.shuffle(shuffled)
    one = impl.denylist.DenyList(ids, version=1)
    assert impl.denylist.DenyList(shuffled, version=99).checksum == one.checksum
    assert int(one.checksum[:16], 16) == 500
    changed = impl.denylist.DenyList([*ids[1:], ids[0] ^ 1], version=1)
    assert changed.checksum != one.checksum
    assert impl.denylist.DenyList(ids[1:], version=1).checksum != one.checksum


def test_memory_stays_under_twelve_bytes_a_phone(impl: Any) -> None:
    ids = array("Q", random.Random(1).randbytes(8 * 100_000))
    denylist = impl.denylist.DenyList(ids)
    assert 8 * len(denylist) <= denylist.nbytes <= 12 * len(denylist)


# --- deltas ---------------------------------------------------------------------------------------


def test_delta_applies(impl: Any) -> None:
    old_ids = {1, 2, 3, 2**64 - 1}
    new_ids = {2, 3, 4, 5, 0}
    denylist = impl.denylist.DenyList(old_ids, version=10)
    delta = delta_between(impl.denylist, old_ids, new_ids, base=10, version=11)
    assert delta.add == (0, 4, 5) and delta.remove == (1, 2**64 - 1)
    denylist.apply_delta(delta)
    assert denylist.version == 11
    assert denylist.checksum == delta.checksum
    assert list(denylist.ids()) == sorted(new_ids)
    assert denylist.contains(0) and not denylist.contains(1) and not denylist.contains(2**64 - 1)


@property_settings
@given(old_ids=id_sets, new_ids=id_sets, step=st.integers(1, 2**32))
def test_diff_then_apply_reproduces_the_newer_list(impl: Any, old_ids: set[int], new_ids: set[int],
                                                    step: int) -> None:
    old = impl.denylist.DenyList(old_ids, version=5)
    newer = impl.denylist.DenyList(new_ids, version=5 + step)
    delta = old.diff(newer)
    assert (delta.version, delta.base_version) == (5 + step, 5)
    assert set(delta.add) == new_ids - old_ids and set(delta.remove) == old_ids - new_ids
    old.apply_delta(delta)
    assert old.version == newer.version
    assert old.to_bytes() == newer.to_bytes()
    for card_id in old_ids | new_ids:
        assert old.contains(card_id) == (card_id in new_ids)


def test_diff_refuses_an_older_list(impl: Any) -> None:
    newer = impl.denylist.DenyList([1], version=3)
    with pytest.raises(DenyListStale):
        newer.diff(impl.denylist.DenyList([2], version=3))
    with pytest.raises(DenyListStale):
        newer.diff(impl.denylist.DenyList([2], version=2))


def _refusals(module: Any) -> list[tuple[str, Any, type[Exception]]]:
    """Deltas that a list {10, 20, 30} at version 5 must refuse, and the error each must raise."""
    good = delta_between(module, {10, 20, 30}, {10, 20, 40}, base=5, version=6)
    make = module.DenyListDelta
    return [
        ("same version", make(version=5, base_version=4, add=(40,), remove=(), checksum=good.checksum),
         DenyListStale),
        ("older version", make(version=3, base_version=2, add=(), remove=(30,), checksum=good.checksum),
         DenyListStale),
        ("wrong base", make(version=7, base_version=6, add=(40,), remove=(30,), checksum=good.checksum),
         DenyListBaseMismatch),
        ("wrong base, older", make(version=6, base_version=4, add=(40,), remove=(30,),
                                   checksum=good.checksum), DenyListBaseMismatch),
        ("bad checksum", make(version=6, base_version=5, add=(40,), remove=(30,),
                              checksum=good.checksum[:-1] + ("0" if good.checksum[-1] != "0" else "1")),
         DenyListChecksumMismatch),
        ("checksum of another list", make(version=6, base_version=5, add=(40,), remove=(),
                                          checksum=good.checksum), DenyListChecksumMismatch),
        ("add present", make(version=6, base_version=5, add=(40, 20), remove=(30,), checksum=good.checksum),
         DenyListCorrupt),
        ("remove absent", make(version=6, base_version=5, add=(40,), remove=(30, 50),
                               checksum=good.checksum), DenyListCorrupt),
    ]


@pytest.mark.parametrize("case", range(8))
def test_every_refused_delta_leaves_the_list_unchanged(impl: Any, case: int) -> None:
    name, delta, error = _refusals(impl.denylist)[case]
    denylist = impl.denylist.DenyList({10, 20, 30}, version=5)
    probes = [10, 20, 30, 40, 50]
    before = state_of(denylist, probes)
    with pytest.raises(error):
        denylist.apply_delta(delta)
    assert state_of(denylist, probes) == before, name
    # ... and the right delta still applies afterwards.
    denylist.apply_delta(delta_between(impl.denylist, {10, 20, 30}, {10, 20, 40}, base=5, version=6))
    assert list(denylist.ids()) == [10, 20, 40]


def test_a_delta_cannot_be_applied_twice(impl: Any) -> None:
    denylist = impl.denylist.DenyList({1, 2}, version=1)
    delta = delta_between(impl.denylist, {1, 2}, {2, 3}, base=1, version=2)
    denylist.apply_delta(delta)
    before = state_of(denylist, [1, 2, 3])
    with pytest.raises(DenyListStale):
        denylist.apply_delta(delta)
    assert state_of(denylist, [1, 2, 3]) == before


def test_apply_delta_wants_a_delta(impl: Any) -> None:
    with pytest.raises(TypeError):
        impl.denylist.DenyList().apply_delta({"version": 1})


@pytest.mark.parametrize(("fields", "named"), [
    ({"version": 5, "base_version": 5}, "version"),
    ({"version": 4, "base_version": 5}, "version"),
    ({"version": -1, "base_version": 0}, "version"),
    ({"version": 2**64}, "version"),
    ({"base_version": -1}, "base_version"),
    ({"version": True}, "version"),
    ({"add": (1, 1)}, "add"),
    ({"add": (2**64,)}, "add"),
    ({"remove": (-1,)}, "remove"),
    ({"remove": ("1",)}, "remove"),
    ({"add": "12"}, "add"),
    ({"add": (3,), "remove": (3,)}, "add/remove"),
    ({"checksum": "00"}, "checksum"),
    ({"checksum": "z" * 48}, "checksum"),
    ({"checksum": 7}, "checksum"),
])
def test_malformed_delta_is_refused_naming_the_field(impl: Any, fields: dict[str, Any], named: str) -> None:
    values: dict[str, Any] = {"version": 2, "base_version": 1, "add": (1,), "remove": (2,),
                              "checksum": "0" * 48}
    values.update(fields)
    with pytest.raises(DenyListCorrupt, match=f"^{named}"):
        impl.denylist.DenyListDelta(**values)


def test_delta_is_frozen_and_normalised(impl: Any) -> None:
    delta = impl.denylist.DenyListDelta(version=2, base_version=1, add=[9, 3], remove=(7, 1),
                                        checksum="AB" * 24)
    assert delta.add == (3, 9) and delta.remove == (1, 7) and delta.checksum == "ab" * 24
    with pytest.raises(AttributeError):
        delta.version = 3


# --- snapshots and files --------------------------------------------------------------------------


def test_snapshot_round_trip(impl: Any) -> None:
    rng = random.Random(3)
    ids = {rng.getrandbits(64) for _ in range(2_000)} | {0, U64_MAX}
    denylist = impl.denylist.DenyList(ids, version=2**64 - 1)
    blob = denylist.to_bytes()
    assert len(blob) == 48 + 8 * len(ids)
    copy = impl.denylist.DenyList.from_bytes(blob)
    assert (copy.version, copy.checksum, list(copy.ids())) == (2**64 - 1, denylist.checksum, sorted(ids))
    assert impl.denylist.DenyList.from_bytes(memoryview(blob)).to_bytes() == blob


def test_every_truncated_or_garbled_snapshot_is_refused(impl: Any) -> None:
    blob = impl.denylist.DenyList([5, 6, 7, U64_MAX], version=9).to_bytes()
    for length in range(len(blob)):
        with pytest.raises(DenyListCorrupt):
            impl.denylist.DenyList.from_bytes(blob[:length])
    with pytest.raises(DenyListCorrupt):
        impl.denylist.DenyList.from_bytes(blob + bytes(8))
    for position in range(len(blob)):
        for bit in (0x01, 0x10, 0x80):
            garbled = bytearray(blob)
            garbled[position] ^= bit
            with pytest.raises((DenyListCorrupt, DenyListChecksumMismatch)):
                impl.denylist.DenyList.from_bytes(bytes(garbled))


def test_snapshot_with_a_swapped_or_doubled_key_is_refused(impl: Any) -> None:
    blob = bytearray(impl.denylist.DenyList([5, 6, 7], version=1).to_bytes())
    first, second = blob[48:56], blob[56:64]
    swapped = blob[:48] + second + first + blob[64:]
    with pytest.raises(DenyListCorrupt, match="order"):
        impl.denylist.DenyList.from_bytes(bytes(swapped))
    doubled = blob[:48] + first + first + blob[64:]
    with pytest.raises(DenyListCorrupt, match="order"):
        impl.denylist.DenyList.from_bytes(bytes(doubled))


def test_save_and_load(impl: Any, tmp_path: Path) -> None:
    path = tmp_path / "denylist.bin"
    ids = set(range(1_000, 3_000)) | {U64_MAX}
    impl.denylist.DenyList(ids, version=1).save(path)
    newer = impl.denylist.DenyList(ids | {7}, version=2)
    newer.save(str(path))  # replaces the old file
    loaded = impl.denylist.DenyList.load(path)
    assert (loaded.version, loaded.checksum, list(loaded.ids())) == (2, newer.checksum, sorted(ids | {7}))
    assert path.read_bytes() == newer.to_bytes()
    assert sorted(os.listdir(tmp_path)) == ["denylist.bin"]  # no temp file left behind
    empty = tmp_path / "empty.bin"
    impl.denylist.DenyList().save(empty)
    assert len(impl.denylist.DenyList.load(empty)) == 0


def test_a_crash_leftover_temp_file_does_not_matter(impl: Any, tmp_path: Path) -> None:
    path = tmp_path / "denylist.bin"
    impl.denylist.DenyList([1, 2], version=1).save(path)
    leftover = tmp_path / ".denylist.bin.crashed.tmp"
    leftover.write_bytes(impl.denylist.DenyList([1, 2, 3], version=2).to_bytes()[:60])  # half-written
    assert list(impl.denylist.DenyList.load(path).ids()) == [1, 2]
    impl.denylist.DenyList([4], version=3).save(path)
    assert impl.denylist.DenyList.load(path).version == 3


def test_failed_save_keeps_the_old_file(impl: Any, tmp_path: Path) -> None:
    path = tmp_path / "denylist.bin"
    impl.denylist.DenyList([1], version=1).save(path)
    with pytest.raises(OSError):
        impl.denylist.DenyList([2], version=2).save(tmp_path / "missing-dir" / "denylist.bin")
    target_dir = tmp_path / "a-directory"
    target_dir.mkdir()
    with pytest.raises(OSError):
        impl.denylist.DenyList([2], version=2).save(target_dir)  # cannot replace a directory
    assert sorted(os.listdir(tmp_path)) == ["a-directory", "denylist.bin"]
    assert impl.denylist.DenyList.load(path).version == 1


@pytest.mark.parametrize("damage", ["truncate", "flip", "append", "empty", "foreign"])
def test_load_refuses_a_corrupt_file(impl: Any, tmp_path: Path, damage: str) -> None:
    path = tmp_path / "denylist.bin"
    impl.denylist.DenyList(range(100), version=4).save(path)
    blob = bytearray(path.read_bytes())
    if damage == "truncate":
        blob = blob[:-3]
    elif damage == "flip":
        blob[48 + 8 * 50] ^= 0x04
    elif damage == "append":
        blob += b"\x00" * 8
    elif damage == "empty":
        blob = bytearray()
    else:
        blob = bytearray(b"PK\x03\x04" + bytes(100))
    path.write_bytes(bytes(blob))
    with pytest.raises(DenyListError):
        impl.denylist.DenyList.load(path)


def test_load_of_a_missing_file(impl: Any, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        impl.denylist.DenyList.load(tmp_path / "nope.bin")


def test_replace_with_adopts_only_newer_snapshots(impl: Any) -> None:
    held = impl.denylist.DenyList([1, 2, 3], version=5)
    probes = [1, 2, 3, 4]
    before = state_of(held, probes)
    for version in (4, 5):
        with pytest.raises(DenyListStale):
            held.replace_with(impl.denylist.DenyList([4], version=version))
        assert state_of(held, probes) == before
    snapshot = impl.denylist.DenyList([3, 4], version=8)
    held.replace_with(snapshot)
    assert (held.version, held.checksum, list(held.ids())) == (8, snapshot.checksum, [3, 4])
    # The two lists stay independent afterwards.
    held.apply_delta(delta_between(impl.denylist, {3, 4}, {4}, base=8, version=9))
    assert list(snapshot.ids()) == [3, 4] and snapshot.version == 8
    with pytest.raises(TypeError):
        held.replace_with([1, 2])


# --- the twin and the compiled module agree -------------------------------------------------------


def test_mixer_inverse_round_trips() -> None:
    rng = random.Random(11)
    for card_id in [0, 1, U64_MAX, 2**63, *(rng.getrandbits(64) for _ in range(1_000))]:
        assert reference.unmix_key(reference.mix_key(card_id)) == card_id
    assert reference.FMIX_C1 * reference.FMIX_C1_INV % 2**64 == 1
    assert reference.FMIX_C2 * reference.FMIX_C2_INV % 2**64 == 1


def test_snapshot_layout_golden_vector(impl: Any) -> None:
    # Pins the on-disk format: a change here breaks every gate's saved list.
    blob = impl.denylist.DenyList([1], version=2).to_bytes()
    key = reference.mix_key(1)
    lane1, lane2 = reference.splitmix64(1), reference.splitmix64(key)
    assert blob[:40] == (b"FGDL" + (1).to_bytes(2, "little") + bytes(2) + (2).to_bytes(8, "little")
                         + (1).to_bytes(8, "little") + lane1.to_bytes(8, "little")
                         + lane2.to_bytes(8, "little"))
    assert blob[48:] == key.to_bytes(8, "little")
    assert impl.denylist.DenyList([1]).checksum == f"{1:016x}{lane1:016x}{lane2:016x}"


needs_both = pytest.mark.skipif("cython" not in fare_core.implementations(),
                                reason="the compiled module is not built")


@needs_both
@settings(max_examples=40, deadline=None)
@given(old_ids=id_sets, new_ids=id_sets, probes=st.lists(card_ids, max_size=30))
def test_compiled_and_twin_agree(old_ids: set[int], new_ids: set[int], probes: list[int]) -> None:
    compiled = fare_core.implementations()["cython"][1]
    twin = fare_core.implementations()["python"][1]
    old_c, old_t = compiled.DenyList(old_ids, version=1), twin.DenyList(old_ids, version=1)
    new_c, new_t = compiled.DenyList(new_ids, version=2), twin.DenyList(new_ids, version=2)
    assert old_c.to_bytes() == old_t.to_bytes() and old_c.checksum == old_t.checksum
    assert new_c.to_bytes() == new_t.to_bytes() and new_c.checksum == new_t.checksum
    delta_c, delta_t = old_c.diff(new_c), old_t.diff(new_t)
    assert delta_c == delta_t
    old_c.apply_delta(delta_t)
    old_t.apply_delta(delta_c)
    assert old_c.to_bytes() == old_t.to_bytes() == new_t.to_bytes()
    for card_id in [*probes, *old_ids, *new_ids]:
        assert old_c.contains(card_id) == old_t.contains(card_id) == (card_id in new_ids)
    assert twin.DenyList.from_bytes(new_c.to_bytes()).checksum == compiled.DenyList.from_bytes(
        new_t.to_bytes()).checksum


@needs_both
def test_compiled_and_twin_read_each_others_files(tmp_path: Path) -> None:
    compiled = fare_core.implementations()["cython"][1]
    twin = fare_core.implementations()["python"][1]
    ids = array("Q", random.Random(2).randbytes(8 * 20_000))
    compiled.DenyList(ids, version=3).save(tmp_path / "c.bin")
    twin.DenyList(ids, version=3).save(tmp_path / "t.bin")
    assert (tmp_path / "c.bin").read_bytes() == (tmp_path / "t.bin").read_bytes()
    from_twin_file = compiled.DenyList.load(tmp_path / "t.bin")
    assert from_twin_file.checksum == twin.DenyList.load(tmp_path / "c.bin").checksum
    assert list(from_twin_file.ids()) == sorted(set(ids))


@needs_both
def test_both_modules_refuse_with_the_same_errors() -> None:
    compiled = fare_core.implementations()["cython"][1]
    twin = fare_core.implementations()["python"][1]
    assert compiled.DenyListDelta is twin.DenyListDelta  # one delta codec for both
    for module in (compiled, twin):
        held = module.DenyList({10, 20, 30}, version=5)
        for _name, delta, error in _refusals(module):
            with pytest.raises(error) as raised:
                held.apply_delta(delta)
            assert type(raised.value) is error


def test_lookups_during_updates_on_another_thread_see_a_whole_list(impl: Any) -> None:
    """The compiled module applies deltas without the GIL: readers must never see a torn list."""
    import threading

    rng = random.Random(4)
    ids = {rng.getrandbits(64) for _ in range(20_000)}
    stable = sorted(ids)[:100]
    denylist = impl.denylist.DenyList(ids, version=1)
    current, deltas = set(ids), []
    for version in range(2, 12):
        changed = (current - set(stable)) and {min(current - set(stable))}
        newer = (current - changed) | {rng.getrandbits(64)}
        deltas.append(delta_between(impl.denylist, current, newer, base=version - 1, version=version))
        current = newer
    done = threading.Event()
    errors: list[BaseException] = []

    def update() -> None:
        try:
            for delta in deltas:
                denylist.apply_delta(delta)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)
        finally:
            done.set()

    worker = threading.Thread(target=update)
    worker.start()
    try:
        while not done.is_set():
            assert all(denylist.contains(card_id) for card_id in stable)
            assert len(denylist) == len(ids)
    finally:
        worker.join(timeout=60)
    assert not errors and not worker.is_alive()
    assert denylist.version == 11 and list(denylist.ids()) == sorted(current)
