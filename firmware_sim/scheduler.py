"""One thread that runs the simulation's timed actions (RF operations ending, the barrier reaching
its end stop, a commuter pulling a phone away) at their time, one at a time, under the sim lock.

Why a thread and not asyncio: the device is separate hardware. On the controller's event loop the
simulator would be slowed by the controller's stalls (and the other way round), hiding the latency
bugs a gate engineer runs it to find; and asyncio sleeps are rounded to the millisecond by epoll,
too coarse for an 86.8 µs byte time. An exception in an action is kept in `errors` (and the sim
raises it when it closes) so a broken simulation cannot pass a test quietly.

Device time. Python wakes up late (a timed wait oversleeps, a thread waits for the interpreter lock)
and real hardware would not: a reader's RF read ends exactly `read_ms` after the request arrived, and
its answer starts onto the line at that instant. So every action runs *at* a device time: a timer's
action at the time it was due, a frame's handling (device.py) at the time its last byte arrived.
Inside an action `now()` is that time, and everything the action starts is measured from it: a
`call_later` delay, an RF operation's start, a record's timestamp, the moment a frame it sends was
ready for the line (the Pacer then delivers its bytes no earlier than that time plus their wire
time). The device time is never ahead of the clock, so nothing happens before it could have; the
simulator's own lateness is simply not added on top. Outside an action `now()` is the clock.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any


class Timer:
    """A scheduled action; `cancel()` stops it if it has not run yet."""

    __slots__ = ("action", "args", "cancelled", "when")

    def __init__(self, when: float, action: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.action = action
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    def __init__(self, lock: threading.RLock, clock: Callable[[], float] = time.monotonic,
                 name: str = "sim-scheduler") -> None:
        self.lock = lock
        self.clock = clock
        self._queue: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._wake = threading.Condition(threading.Lock())
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._acting = threading.local()  # .at: the device time of the action this thread runs
        self.errors: list[BaseException] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def now(self) -> float:
        """The device time: that of the action this thread is running, else the clock."""
        at: float | None = getattr(self._acting, "at", None)
        return self.clock() if at is None else at

    @contextlib.contextmanager
    def acting_at(self, when: float) -> Iterator[None]:
        """Run the body under the lock as an action at device time `when` (capped at the clock)."""
        with self.lock:
            previous = getattr(self._acting, "at", None)
            self._acting.at = min(when, self.clock())
            try:
                yield
            finally:
                self._acting.at = previous

    def call_at(self, when: float, action: Callable[..., Any], *args: Any) -> Timer:
        timer = Timer(when, action, args)
        with self._wake:
            heapq.heappush(self._queue, (when, next(self._order), timer))
            self._wake.notify()
        return timer

    def call_later(self, delay: float, action: Callable[..., Any], *args: Any) -> Timer:
        """Run `action` `delay` seconds after the device time (inside an action: after its time)."""
        return self.call_at(self.now() + max(0.0, delay), action, *args)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopping:
                    if self._queue:
                        delay = self._queue[0][0] - self.clock()
                        if delay <= 0:
                            break
                        self._wake.wait(delay)
                    else:
                        self._wake.wait()
                if self._stopping:
                    return
                _, _, timer = heapq.heappop(self._queue)
            if timer.cancelled:
                continue
            try:
                with self.acting_at(timer.when):
                    if not timer.cancelled:
                        timer.action(*timer.args)
            except Exception as error:  # keep the simulation running; report at close
                self.errors.append(error)
