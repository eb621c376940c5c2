"""The scheduler's timers and device time: never early, in order, and measured from the action."""

from __future__ import annotations

import threading
import time

from firmware_sim.scheduler import Scheduler


def _started() -> Scheduler:
    scheduler = Scheduler(threading.RLock())
    scheduler.start()
    return scheduler


def test_a_timer_never_runs_before_its_time_and_runs_at_its_device_time() -> None:
    scheduler = _started()
    ran: list[tuple[float, float, float]] = []  # (due, device time, clock) as seen by the action
    done = threading.Event()
    try:
        base = time.monotonic()
        dues = [base + 0.0005 * i for i in range(40)]
        for due in dues:
            scheduler.call_at(due, lambda due=due: ran.append((due, scheduler.now(), time.monotonic())))
        scheduler.call_at(dues[-1], done.set)
        assert done.wait(5)
    finally:
        scheduler.stop()
    assert not scheduler.errors
    assert len(ran) == len(dues)
    for due, device_time, clock in ran:
        assert clock >= due  # never early
        assert device_time == due <= clock  # the action runs at its due time, never ahead of the clock


def test_timers_run_in_time_order_and_ties_in_the_order_scheduled() -> None:
    lock = threading.RLock()
    scheduler = Scheduler(lock)
    order: list[str] = []
    done = threading.Event()
    base = time.monotonic() + 0.05
    scheduler.call_at(base + 0.010, order.append, "c")
    scheduler.call_at(base, order.append, "a")
    scheduler.call_at(base + 0.005, order.append, "b1")
    scheduler.call_at(base + 0.005, order.append, "b2")
    cancelled = scheduler.call_at(base + 0.001, order.append, "never")
    cancelled.cancel()
    scheduler.call_at(base + 0.010, done.set)
    scheduler.start()
    try:
        assert done.wait(5)
    finally:
        scheduler.stop()
    assert order == ["a", "b1", "b2", "c"]


def test_call_later_in_an_action_counts_from_the_action_time_and_never_runs_early() -> None:
    scheduler = _started()
    seen: dict[str, float] = {}
    done = threading.Event()

    def second() -> None:
        seen["second_device"], seen["second_clock"] = scheduler.now(), time.monotonic()
        done.set()

    def first() -> None:
        time.sleep(0.003)  # the simulator is slow here; the follow-up is still due 10 ms after `first`
        seen["first"] = scheduler.now()
        seen["follow_up_when"] = scheduler.call_later(0.010, second).when

    try:
        due = time.monotonic() + 0.01
        scheduler.call_at(due, first)
        assert done.wait(5)
    finally:
        scheduler.stop()
    assert seen["first"] == due
    assert seen["follow_up_when"] == due + 0.010
    assert seen["second_device"] == due + 0.010 <= seen["second_clock"]


def test_device_time_is_the_clock_outside_an_action_and_belongs_to_the_acting_thread() -> None:
    scheduler = Scheduler(threading.RLock())
    before = time.monotonic()
    assert before <= scheduler.now() <= time.monotonic()
    inside = threading.Event()
    leave = threading.Event()
    past = time.monotonic() - 1.0

    def act() -> None:
        with scheduler.acting_at(past):
            assert scheduler.now() == past
            inside.set()
            leave.wait(5)

    worker = threading.Thread(target=act)
    worker.start()
    try:
        assert inside.wait(5)
        before = time.monotonic()
        assert before <= scheduler.now() <= time.monotonic()  # this thread is not in that action
    finally:
        leave.set()
        worker.join()


def test_device_time_is_never_ahead_of_the_clock() -> None:
    scheduler = Scheduler(threading.RLock())
    with scheduler.acting_at(time.monotonic() + 10.0):
        assert scheduler.now() <= time.monotonic()
    assert scheduler.now() <= time.monotonic()
