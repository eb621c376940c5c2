"""pytest-benchmark: the deny-list, compiled beside the pure-Python twin and a plain Python set.

Run: python3 -m pytest benchmarks/test_denylist_bench.py --benchmark-only
Size: FAREGATE_BENCH_DENYLIST_SIZE (default 200,000 so the run takes seconds; the targets are for
10,000,000: `FAREGATE_BENCH_DENYLIST_SIZE=10000000`, and the twin is then skipped where it would take
minutes). Compare rows of one run: the machine is shared and noisy, ratios hold, absolutes drift.
Lookups are timed in batches of 1,000 calls through the public contains(), half listed ids and half
random ones, so each row's mean / 1000 is the cost of one lookup.
"""

from __future__ import annotations

import os
import random
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fare_core import implementations

SIZE = int(os.environ.get("FAREGATE_BENCH_DENYLIST_SIZE", "200000"))
TWIN_LIMIT = 1_000_000  # above this the twin's Python loops take minutes: skip it
BATCH = 1_000
IMPLEMENTATIONS = {name: modules[1] for name, modules in implementations().items()}

_rng = random.Random(2026)
IDS = array("Q", _rng.randbytes(8 * SIZE))
PROBES = [IDS[_rng.randrange(SIZE)] for _ in range(BATCH // 2)] + [
    _rng.getrandbits(64) for _ in range(BATCH // 2)]
_rng.shuffle(PROBES)
_built: dict[str, Any] = {}


def _module(name: str) -> Any:
    if name not in IMPLEMENTATIONS:
        pytest.skip(f"{name} deny-list not available")
    if name == "python" and SIZE > TWIN_LIMIT:
        pytest.skip(f"the twin is not benchmarked above {TWIN_LIMIT} ids")
    return IMPLEMENTATIONS[name]


def _denylist(name: str) -> Any:
    if name not in _built:
        _built[name] = _module(name).DenyList(IDS, version=1)
    return _built[name]


def _lookup_batch(contains: Callable[[int], bool]) -> Callable[[], int]:
    def run() -> int:
        hits = 0
        for card_id in PROBES:
            if contains(card_id):
                hits += 1
        return hits
    return run


@pytest.mark.parametrize("name", ["cython", "python"])
def test_lookup_batch_of_1000(benchmark: Any, name: str) -> None:
    denylist = _denylist(name)
    hits = benchmark(_lookup_batch(denylist.contains))
    assert hits >= BATCH // 2


def test_lookup_batch_of_1000_python_set_baseline(benchmark: Any) -> None:
    listed = set(IDS)
    hits = benchmark(_lookup_batch(listed.__contains__))
    assert hits >= BATCH // 2


@pytest.mark.parametrize("name", ["cython", "python"])
def test_build_from_uint64_array(benchmark: Any, name: str) -> None:
    module = _module(name)
    denylist = benchmark.pedantic(module.DenyList, args=(IDS,), kwargs={"version": 1}, rounds=3)
    assert len(denylist) == len(set(IDS)) if SIZE <= TWIN_LIMIT else len(denylist) > 0


@pytest.mark.parametrize("name", ["cython", "python"])
def test_load_snapshot(benchmark: Any, name: str, tmp_path: Path) -> None:
    path = tmp_path / "denylist.bin"
    _denylist(name).save(path)
    module = _module(name)
    loaded = benchmark.pedantic(module.DenyList.load, args=(path,), rounds=3)
    assert loaded.checksum == _denylist(name).checksum


@pytest.mark.parametrize("name", ["cython", "python"])
def test_save_snapshot(benchmark: Any, name: str, tmp_path: Path) -> None:
    denylist = _denylist(name)
    path = tmp_path / "denylist.bin"
    benchmark.pedantic(denylist.save, args=(path,), rounds=3)
    assert path.stat().st_size == 48 + 8 * len(denylist)


@pytest.mark.parametrize("name", ["cython", "python"])
def test_apply_delta_of_five_ids(benchmark: Any, name: str) -> None:
    """Each round applies a fresh delta (2 removed, 3 added) to its own copy of the full list."""
    module = _module(name)
    base = _denylist(name)
    rounds = 5
    copies = []
    deltas = []
    listed = base.ids()
    for version in range(2, 2 + rounds):
        copy = module.DenyList.from_bytes(base.to_bytes())
        removed = set(listed[version * 10: version * 10 + 2])
        added = {_rng.getrandbits(64) for _ in range(3)}
        deltas.append(module.DenyListDelta(version=version, base_version=1, add=tuple(added),
                                           remove=tuple(removed),
                                           checksum=_result_checksum(copy, added, removed)))
        copies.append(copy)
    pairs = iter(zip(copies, deltas, strict=True))

    def setup() -> tuple[tuple[Any, Any], dict[str, Any]]:
        copy, delta = next(pairs)
        return (copy, delta), {}

    benchmark.pedantic(lambda copy, delta: copy.apply_delta(delta), setup=setup, rounds=rounds)
    # every round that ran applied its delta (--benchmark-disable runs only the first)
    applied = [copy for copy in copies if copy.version > 1]
    assert applied and applied == copies[: len(applied)]


def _result_checksum(listed: Any, added: set[int], removed: set[int]) -> str:
    """Checksum of `listed` plus `added` minus `removed`, from the reference's own helpers."""
    from fare_core import _denylist_py as reference

    count, lane1, lane2 = reference.parse_checksum(listed.checksum)
    for card_id in added:
        lane1 += reference.splitmix64(card_id)
        lane2 += reference.splitmix64(reference.mix_key(card_id))
    for card_id in removed:
        lane1 -= reference.splitmix64(card_id)
        lane2 -= reference.splitmix64(reference.mix_key(card_id))
    mask = 2**64 - 1
    return reference.checksum_hex(count + len(added) - len(removed), lane1 & mask, lane2 & mask)
