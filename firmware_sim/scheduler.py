"""One thread that runs the simulation's timed actions (RF operations ending, the barrier reaching
its end stop, a commuter pulling a phone away) at their time, one at a time, under the sim lock.

Why a thread and not asyncio: the device is separate hardware. On the controller's event loop the
simulator would be slowed by the controller's stalls (and the other way round), hiding the latency
bugs a gate engineer runs it to find; and asyncio sleeps are rounded to the millisecond by epoll,
too coarse for an 86.8 µs byte time. An exception in an action is kept in `errors` (and the sim
raises it when it closes) so a broken simulation cannot pass a test quietly.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
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
        self.errors: list[BaseException] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def call_at(self, when: float, action: Callable[..., Any], *args: Any) -> Timer:
        timer = Timer(when, action, args)
        with self._wake:
            heapq.heappush(self._queue, (when, next(self._order), timer))
            self._wake.notify()
        return timer

    def call_later(self, delay: float, action: Callable[..., Any], *args: Any) -> Timer:
        return self.call_at(self.clock() + max(0.0, delay), action, *args)

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
                with self.lock:
                    if not timer.cancelled:
                        timer.action(*timer.args)
            except Exception as error:  # keep the simulation running; report at close
                self.errors.append(error)
