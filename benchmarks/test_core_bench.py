"""pytest-benchmark: decide() compiled beside its pure-Python twin, on the same exit tap.

Run: python3 -m pytest benchmarks/test_core_bench.py --benchmark-only
Compare the two rows of one run (the machine is shared and noisy; ratios hold, absolutes drift).
`faregate bench core --json` gives the same figures as one JSON object, with the deny-list ones.
"""

from __future__ import annotations

from typing import Any

import pytest

from fare_core import implementations
from faregate.bench.core import _exit_tap_inputs, bench_table

TABLE = bench_table()


@pytest.mark.parametrize("name", sorted(implementations()))
def test_decide_exit_tap(benchmark: Any, name: str) -> None:
    core, denylist = implementations()[name]
    wallet, tap, table, sam = _exit_tap_inputs(core, TABLE)
    blocked = denylist.DenyList(range(1, 10_001), version=1)
    decision = benchmark(core.decide, wallet, tap, table, blocked, sam)
    assert decision.allowed and decision.fare > 0
