"""`faregate bench core`: each figure beside a baseline of the same size, readable without --json."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from faregate.bench.core import report


@pytest.fixture(scope="module")
def figures() -> dict[str, object]:
    done = subprocess.run([sys.executable, "-m", "faregate.cli", "bench", "core", "--json",
                           "--denylist-size", "50000"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_the_set_baseline_holds_the_same_ids_and_its_memory_is_measured(figures: dict[str, object]) -> None:
    assert figures["denylist_entries"] == 50_000
    set_bytes = figures["python_set_bytes_per_entry"]
    list_bytes = figures["denylist_bytes_per_entry"]
    assert isinstance(set_bytes, float) and isinstance(list_bytes, float)
    assert set_bytes > 4 * list_bytes  # a set of Python ints: tens of bytes a phone, not 8


def test_the_plain_report_names_each_baseline_and_target(figures: dict[str, object]) -> None:
    text = report(figures)
    assert "Python set of the same ids" in text and "twin" in text
    assert text.count("target") >= 5
    assert "{" not in text  # no raw dict printed for a person


def test_the_plain_report_says_which_lookup_won(figures: dict[str, object]) -> None:
    slower = dict(figures, denylist_lookup_ns_median=1e6)
    assert "Python set looked up faster" in report(slower)
    assert "MISSES target" in report(slower)
