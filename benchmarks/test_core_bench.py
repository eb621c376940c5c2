"""pytest-benchmark: decide() compiled beside its pure-Python twin, on the same exit tap, with the shipped
example's table, the same without a monthly scheme, and with tiers, a weekly cap, summer time and
holidays all in play.

Run: python3 -m pytest benchmarks/test_core_bench.py --benchmark-only
Compare the two rows of one run (the machine is shared and noisy; ratios hold, absolutes drift).
`faregate bench core --json` gives the same figures as one JSON object, with the deny-list ones.
"""

from __future__ import annotations

from typing import Any

import pytest

from fare_core import implementations
from faregate.bench.core import _exit_tap_inputs, bench_table, bench_table_variant

TABLES = {"example": bench_table(), "no_tiers": bench_table_variant(tiers=False),
          "tiers": bench_table_variant(tiers=True)}  # issue 13: every new rule in play at once


@pytest.mark.parametrize("table_name", sorted(TABLES))
@pytest.mark.parametrize("name", sorted(implementations()))
def test_decide_exit_tap(benchmark: Any, name: str, table_name: str) -> None:
    core, denylist = implementations()[name]
    wallet, tap, table, sam = _exit_tap_inputs(core, TABLES[table_name])
    blocked = denylist.DenyList(range(1, 10_001), version=1)
    decision = benchmark(core.decide, wallet, tap, table, blocked, sam)
    assert decision.allowed and decision.fare > 0
