"""The gate's collector policy: automatic collection off, young passes between taps, a full pass at
most every full_every_s, and cycles are still freed."""

from __future__ import annotations

import gc
import weakref

from gate.collector import CollectBetweenTaps


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_young_passes_between_taps_and_a_full_one_at_most_every_interval() -> None:
    clock = Clock()
    collector = CollectBetweenTaps(full_every_s=30.0, clock=clock)
    for _ in range(5):
        collector.between_taps()
        clock.now += 1.0
    assert (collector.young, collector.full) == (5, 0)
    clock.now += 30.0
    collector.between_taps()
    collector.between_taps()  # right after a full pass: young again
    assert (collector.young, collector.full) == (6, 1)


def test_take_over_turns_automatic_collection_off_and_cycles_are_still_freed() -> None:
    was_enabled = gc.isenabled()
    clock = Clock()
    collector = CollectBetweenTaps(full_every_s=30.0, clock=clock)
    try:
        collector.take_over()
        assert not gc.isenabled()
        cycle = Node()
        gone = weakref.ref(cycle)
        del cycle
        for _ in range(3):
            gc.collect(0)  # an older generation may hold it: only a full pass is sure to
        clock.now += 31.0
        collector.between_taps()
        assert gone() is None and collector.full == 1
    finally:
        if was_enabled:
            gc.enable()
