"""How a gate asks the operating system for low latency: real-time scheduling and a CPU wake-up
latency limit. Both are requests a deployment may refuse; the gate then runs anyway and says so,
since a gate that refused to start would let nobody through.

Why the wake-up limit: between taps a gate's cores are idle and the kernel puts them to sleep (a
C-state on a board, a halt on a virtual machine). Each serial byte that ends a frame must wake a core
first: on the 2-core KVM machine of the README's figures that wake-up cost tens to hundreds of
microseconds, three times per tap, and it was most of the above-the-floor tail. Linux's PM QoS
interface, /dev/cpu_dma_latency, holds a limit on the exit latency of the idle states cpuidle may
use for as long as the file stays open; 0 keeps idle cores polling. It is the setting latency
benchmarks such as cyclictest hold, and what tuned's latency-performance profile applies. The cost
is power: a polling core does not sleep.
"""

from __future__ import annotations

import logging
import os
import struct

log = logging.getLogger(__name__)

PM_QOS_CPU_LATENCY = "/dev/cpu_dma_latency"


def use_realtime(priority: int) -> bool:
    """Run this process (and the threads it starts) under SCHED_FIFO at `priority`.

    Why: a gate is a soft real-time device; under normal scheduling any busy process on its two cores
    can delay the answer to a phone by milliseconds (faregate bench loop --realtime shows how much).
    """
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (AttributeError, OSError) as error:
        log.warning("realtime_priority %d not granted (%s): running with normal scheduling", priority, error)
        return False
    log.info("running under SCHED_FIFO, priority %d", priority)
    return True


class CpuLatencyLimit:
    """A held PM QoS request: idle CPUs wake within `microseconds` until `release()` (or exit)."""

    def __init__(self, microseconds: int, path: str = PM_QOS_CPU_LATENCY) -> None:
        if not 0 <= microseconds <= 2_000_000_000:
            raise ValueError(f"cpu latency must be 0..2e9 µs, not {microseconds}")
        self.microseconds = microseconds
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(self._fd, struct.pack("=i", microseconds))  # the kernel reads a native s32
        except OSError:
            os.close(self._fd)
            self._fd = None
            raise

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> CpuLatencyLimit:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


def current_cpu_latency_limit(path: str = PM_QOS_CPU_LATENCY) -> int | None:
    """The limit in force now (the lowest of all held requests), or None where it cannot be read."""
    try:
        with open(path, "rb") as device:
            raw = device.read(4)
    except OSError:
        return None
    return int(struct.unpack("=i", raw)[0]) if len(raw) == 4 else None


def limit_cpu_latency(microseconds: int) -> CpuLatencyLimit | None:
    """Hold a CPU wake-up latency limit for this process's lifetime; None (and a warning) if refused."""
    try:
        limit = CpuLatencyLimit(microseconds)
    except OSError as error:
        log.warning("cpu_latency_us %d not granted (%s): idle CPUs may sleep deeply", microseconds, error)
        return None
    log.info("idle CPUs held to a %d µs wake-up latency", microseconds)
    return limit
