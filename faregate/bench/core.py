"""`faregate bench core`: decide() and the deny-list, each beside a baseline measured in the same run.

Every figure is a median over many batches of calls timed with perf_counter_ns, so a noisy shared
machine moves the tails, not the median. Baselines: the pure-Python twin for decide(), an empty call
of a C builtin (the floor of any call from Python), and a Python set of the same ids for deny-list
lookups and memory. The set is the honest rival: it looks up about as fast (often faster, being one
hash probe in C), and the deny-list's case is memory and load time, which the output shows beside it.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fare_core
from fare_core import implementations
from fare_core.reasons import Direction
from fare_core.record import CardRecord
from fare_core.table_data import TableData

MASTER_KEY = bytes(range(16))
CARD = 0x1122334455667788


def per_call_ns(call: Callable[[], object], batch: int, batches: int) -> float:
    """Median over `batches` of the mean time of one call in a batch of `batch` calls, in ns."""
    samples = []
    for _ in range(batches):
        start = time.perf_counter_ns()
        for _ in range(batch):
            call()
        samples.append((time.perf_counter_ns() - start) / batch)
    return statistics.median(samples)


def per_item_ns(call: Callable[[Any], object], items: list[Any], batches: int) -> float:
    """Median over `batches` passes of the mean time of `call(item)` in a plain for loop, in ns: the
    way a caller does lookups, without a lambda or iterator in between."""
    samples = []
    for _ in range(batches):
        start = time.perf_counter_ns()
        for item in items:
            call(item)
        samples.append((time.perf_counter_ns() - start) / len(items))
    return statistics.median(samples)


def bench_table() -> TableData:
    """A Guangzhou-sized table (300 stations, 4 categories, 2 bands) from the shipped example rules if
    the compiler is there, else a synthetic one of the same size."""
    from fare_core import compiler, rules

    example = Path(fare_core.__file__).with_name("examples") / "guangzhou.toml"
    return compiler.compile_rules(rules.load_rules(example), version=1, created_at=0)


def bench_table_variant(tiers: bool) -> TableData:
    """The shipped example without any monthly scheme (`tiers=False`), or with every rule of issue 13
    in play at once (`tiers=True`): six spend tiers for adults (counted on the metro only), a weekly
    cap, Europe/London's summer time over 20 years (40 offset changes to search) and 30 holiday dates."""
    import tomllib

    from fare_core import compiler, rules

    example = Path(fare_core.__file__).with_name("examples") / "guangzhou.toml"
    with example.open("rb") as file:
        data = tomllib.load(file)
    adult = {k: v for k, v in data["rider_categories"]["adult"].items() if k != "monthly"}
    if tiers:
        adult["monthly"] = {"basis": "spend", "counted_networks": ["metro"], "surcharges_count": True,
                            "tiers": [{"from_fen": f, "percent_off": p} for f, p in (
                                (5000, 5), (10000, 20), (15000, 50), (20000, 40), (30000, 10), (40000, 0))]}
        adult["weekly_cap_fen"] = 6000
        del data["utc_offset_min"]
        data.update(time_zone="Europe/London", valid_from="2020-01-01", valid_until="2040-01-01",
                    calendars=[{"dates": [f"{year}-{month:02d}-01" for year in (2026, 2027)
                                          for month in range(1, 13) if month != 11] + ["2026-11-25"],
                                "price_as": "sun"}])
    data["rider_categories"] = {**data["rider_categories"], "adult": adult}
    return compiler.compile_rules(rules.rules_from_data(data), version=1, created_at=0)


def _exit_tap_inputs(core: Any, table: TableData) -> tuple[bytes, Any, Any, Any]:
    """A wallet with an open entry and the exit tap that closes it: the most work decide() does. The
    month has 17,000 fen spent and the week 1,000: a table's tier lookup walks past its first tiers
    and its weekly cap is checked (tiers above 17,000 are not reached)."""
    sam = core.Sam(MASTER_KEY)
    ids = list(table.station_ids)
    origin, dest = ids[0], ids[len(ids) // 2]
    when = 1795500000  # 2026-11-24 around 10:40 CST, a Tuesday
    day = (when + 8 * 3600) // 86400 - 10957
    record = CardRecord(card_id=CARD, balance=50_000, counter=10, flags=1, entry_station=origin,
                        entry_time=when - 1800, last_network=255, transfer_from=255,
                        month_number=(2026 - 2000) * 12 + 10, month_spent=17_000, month_rides=40,
                        week_start=day - 1, week_spent=1_000)
    wallet = core.new_wallet(record, sam)
    return wallet, core.Tap(CARD, dest, Direction.EXIT, when), core.FareTable(table), sam


def bench_decide(table: TableData, denylists: dict[str, Any],
                 variants: dict[str, TableData] | None = None) -> dict[str, float]:
    """decide() on `table` per implementation (keyed by its name), then on each variant table
    (`<name>_<variant>`), all in this run, interleaved per implementation."""
    impls = implementations()
    out: dict[str, float] = {}
    for name, (core, _dl) in impls.items():
        fast = name == "cython"
        dl = denylists[name]
        for key, data in (("", table), *((f"_{v}", t) for v, t in (variants or {}).items())):
            wallet, tap, fare_table, sam = _exit_tap_inputs(core, data)
            decision = core.decide(wallet, tap, fare_table, dl, sam)
            assert decision.allowed and decision.record is not None, decision

            def call(core: Any = core, w: bytes = wallet, t: Any = tap, f: Any = fare_table, d: Any = dl,
                     s: Any = sam) -> object:
                return core.decide(w, t, f, d, s)

            out[name + key] = per_call_ns(call, batch=2000 if fast else 20, batches=101 if fast else 31)
        body = CardRecord(card_id=CARD).body()
        out[f"mac_{name}"] = per_call_ns(functools.partial(sam.mac, CARD, body),
                                         batch=2000 if fast else 20, batches=51 if fast else 21)
    empty = b""
    out["call_floor"] = per_call_ns(lambda: len(empty), batch=2000, batches=101)
    return out


def bench_denylist(entries: int, workdir: Path) -> dict[str, Any]:
    impls = implementations()
    compiled = impls.get("cython", impls["python"])[1]
    ids = array("Q")
    ids.frombytes(os.urandom(8 * entries))
    build_start = time.perf_counter()
    dl = compiled.DenyList(ids, version=1)
    build_s = time.perf_counter() - build_start
    path = workdir / "denylist.snapshot"
    dl.save(path)
    del dl
    load_times = []
    for _ in range(3):
        start = time.perf_counter()
        loaded = compiled.DenyList.load(path)
        load_times.append(time.perf_counter() - start)
        del loaded
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    dl = compiled.DenyList.load(path)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    probes = [ids[i] for i in range(0, min(entries, 5000))] + [
        int.from_bytes(os.urandom(8), "little") for _ in range(5000)]
    assert all(dl.contains(p) for p in probes[:min(entries, 5000)])
    random.Random(1).shuffle(probes)
    lookup = per_item_ns(dl.contains, probes, batches=51)
    floor = per_item_ns(id, probes, batches=51)
    set_figures = bench_python_set(ids, probes)
    return {
        "denylist_entries": entries,
        "denylist_build_s": round(build_s, 3),
        "denylist_load_s": round(statistics.median(load_times), 4),
        "denylist_lookup_ns_median": round(lookup, 1),
        "denylist_lookup_call_floor_ns": round(floor, 1),
        "denylist_bytes_per_entry": round(held / entries, 2),
        **set_figures,
        "denylist": dl,
    }


def bench_python_set(ids: array[int], probes: list[int]) -> dict[str, float]:
    """The same ids in a Python set: lookup, memory and build time at the deny-list's own size.

    Memory is the set's table plus its int objects (sys.getsizeof), not tracemalloc, which would
    slow the build it also times."""
    start = time.perf_counter()
    rival = set(ids)
    build_s = time.perf_counter() - start
    held = sys.getsizeof(rival) + sum(map(sys.getsizeof, rival))
    lookup = per_item_ns(rival.__contains__, probes, batches=51)
    del rival
    return {
        "denylist_lookup_ns_median_python_set": round(lookup, 1),
        "python_set_bytes_per_entry": round(held / len(ids), 2),
        "python_set_build_s": round(build_s, 3),
    }


def run_core_bench(entries: int) -> dict[str, Any]:
    table = bench_table()
    with tempfile.TemporaryDirectory(prefix="faregate-bench-") as tmp:
        dl_figures = bench_denylist(entries, Path(tmp))
    big = dl_figures.pop("denylist")
    impls = implementations()
    twin_list = impls["python"][1].DenyList(range(1, 100_001), version=1)
    denylists = {"python": twin_list, "cython": big}
    variants = {"no_tiers": bench_table_variant(tiers=False), "tiers": bench_table_variant(tiers=True)}
    decide = bench_decide(table, denylists, variants)
    fast = "cython" if "cython" in decide else "python"
    compiled = decide[fast]
    result = {
        "implementation": fast,
        "decide_ns_median": round(compiled, 1),
        "decide_ns_median_twin": round(decide["python"], 1),
        "decide_speedup": round(decide["python"] / compiled, 1),
        # issue 13: the same exit tap without any monthly scheme, and with every new rule in play
        "decide_ns_median_no_tiers": round(decide[f"{fast}_no_tiers"], 1),
        "decide_ns_median_tiers": round(decide[f"{fast}_tiers"], 1),
        "decide_ns_median_twin_no_tiers": round(decide["python_no_tiers"], 1),
        "decide_ns_median_twin_tiers": round(decide["python_tiers"], 1),
        "decide_speedup_tiers": round(decide["python_tiers"] / decide[f"{fast}_tiers"], 1),
        "mac_ns_median": round(decide.get("mac_cython", decide["mac_python"]), 1),
        "mac_ns_median_twin": round(decide["mac_python"], 1),
        "python_call_floor_ns": round(decide["call_floor"], 1),
        "fare_table_stations": table.n_stations,
        **dl_figures,
        "targets": {"decide_ns_median": 5000, "decide_speedup": 20, "decide_ns_median_tiers": 5000,
                    "decide_speedup_tiers": 20, "denylist_lookup_ns_median": 300,
                    "denylist_load_s": 1.0, "denylist_bytes_per_entry": 12},
    }
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--denylist-size", type=int, default=10_000_000, metavar="N",
                        help="phones on the deny-list (default 10,000,000)")


def run(args: argparse.Namespace) -> int:
    if args.denylist_size < 1:
        raise SystemExit("--denylist-size must be at least 1")
    result = run_core_bench(args.denylist_size)
    print(json.dumps(result) if args.json else report(result))
    return 0


def report(result: dict[str, Any]) -> str:
    """The figures as a person reads them: each beside its same-run baseline and its target."""
    t = result["targets"]
    n = result["denylist_entries"]

    def against(value: float, target: float, unit: str, most: bool = True) -> str:
        ok = value <= target if most else value >= target
        return f"[{'meets' if ok else 'MISSES'} target {'<=' if most else '>='} {target:,}{unit}]"

    lines = [
        f"fare_core bench ({result['implementation']}; fare table of {result['fare_table_stations']}"
        f" stations, deny-list of {n:,} phones)",
        "",
        f"decide(), exit tap   {result['decide_ns_median']:>9,.0f} ns median;"
        f" twin {result['decide_ns_median_twin']:,.0f} ns, {result['decide_speedup']:,.0f}x slower"
        f"  {against(result['decide_ns_median'], t['decide_ns_median'], ' ns')}"
        f" {against(result['decide_speedup'], t['decide_speedup'], 'x', most=False)}",
        f"  with tiers etc.    {result['decide_ns_median_tiers']:>9,.0f} ns median;"
        f" without tiers {result['decide_ns_median_no_tiers']:,.0f} ns; twin"
        f" {result['decide_ns_median_twin_tiers']:,.0f} / {result['decide_ns_median_twin_no_tiers']:,.0f} ns"
        f"  {against(result['decide_ns_median_tiers'], t['decide_ns_median_tiers'], ' ns')}"
        f" {against(result['decide_speedup_tiers'], t['decide_speedup_tiers'], 'x', most=False)}",
        f"MAC (SipHash-2-4)    {result['mac_ns_median']:>9,.0f} ns median;"
        f" twin {result['mac_ns_median_twin']:,.0f} ns; an empty Python call"
        f" {result['python_call_floor_ns']:.0f} ns",
        "",
        f"deny-list lookup     {result['denylist_lookup_ns_median']:>9,.1f} ns median;"
        f" Python set of the same ids {result['denylist_lookup_ns_median_python_set']:,.1f} ns;"
        f" call floor {result['denylist_lookup_call_floor_ns']:.1f} ns"
        f"  {against(result['denylist_lookup_ns_median'], t['denylist_lookup_ns_median'], ' ns')}",
        f"deny-list memory     {result['denylist_bytes_per_entry']:>9,.2f} bytes a phone;"
        f" Python set {result['python_set_bytes_per_entry']:,.2f}"
        f"  {against(result['denylist_bytes_per_entry'], t['denylist_bytes_per_entry'], ' bytes')}",
        f"deny-list load       {result['denylist_load_s']:>9,.3f} s from disk;"
        f" building the Python set took {result['python_set_build_s']:,.2f} s"
        f"  {against(result['denylist_load_s'], t['denylist_load_s'], ' s')}",
        "",
    ]
    if result["denylist_lookup_ns_median"] <= result["denylist_lookup_ns_median_python_set"]:
        lines.append("The deny-list looked up as fast as the set in this run; its case is memory and load.")
    else:
        lines.append("The Python set looked up faster in this run; the deny-list's case is memory and load.")
    return "\n".join(lines)
