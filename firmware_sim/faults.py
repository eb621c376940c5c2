"""Line faults: what a noisy cable, a flaky UART and a bad connector do to the bytes.

One `LineFaults` per direction (device -> controller, controller -> device). Two ways to use it:
rates (per byte, seeded, for soak runs and scenarios) and one-shot faults armed for the next frames
(deterministic, for tests: "flip one bit in the next frame"). Noise bursts also hit an idle line, so
they are produced by the device on a timer (`next_noise_delay`) rather than only inside frames.
Hang and unplug are device faults, see device.GateDevice.hang / unplug.
"""

from __future__ import annotations

import enum
import random
import threading
from dataclasses import dataclass


class FaultKind(enum.Enum):
    BIT_FLIP = "bit_flip"  # one bit of one byte inverted
    DROP = "drop"  # one byte lost
    DUPLICATE = "duplicate"  # one byte received twice
    NOISE = "noise"  # a burst of random bytes inserted


@dataclass(frozen=True, slots=True)
class FaultRates:
    """Per-byte probabilities and noise bursts per second (Poisson). All zero = a clean line."""

    bit_flip: float = 0.0
    drop: float = 0.0
    duplicate: float = 0.0
    noise_bursts_per_s: float = 0.0
    noise_burst_bytes: int = 8

    def __post_init__(self) -> None:
        for name in ("bit_flip", "drop", "duplicate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} rate {value} is not a probability")
        if self.noise_bursts_per_s < 0 or self.noise_burst_bytes < 1:
            raise ValueError("noise bursts need a rate >= 0 and at least one byte")

    @property
    def clean(self) -> bool:
        return self.bit_flip == self.drop == self.duplicate == 0.0


class LineFaults:
    """Corrupts a byte stream in one direction; counts what it did (tests compare the counts)."""

    def __init__(self, rates: FaultRates | None = None, seed: int = 0) -> None:
        self.rates = rates or FaultRates()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._armed: list[FaultKind] = []
        self.injected: dict[FaultKind, int] = dict.fromkeys(FaultKind, 0)

    def arm(self, kind: FaultKind, count: int = 1) -> None:
        """Apply `kind` once to each of the next `count` chunks that pass (a frame, or a read)."""
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            self._armed.extend([kind] * count)

    @property
    def armed(self) -> int:
        with self._lock:
            return len(self._armed)

    def apply(self, data: bytes) -> bytes:
        """`data` as the far end receives it."""
        if not data:
            return data
        with self._lock:
            kind = self._armed.pop(0) if self._armed else None
            if kind is None and self.rates.clean:
                return data
            buffer = bytearray(data)
            if kind is not None:
                self._one(kind, buffer)
            if not self.rates.clean:
                buffer = self._by_rate(buffer)
            return bytes(buffer)

    def _one(self, kind: FaultKind, buffer: bytearray) -> None:
        at = self._random.randrange(len(buffer))
        if kind is FaultKind.BIT_FLIP:
            buffer[at] ^= 1 << self._random.randrange(8)
        elif kind is FaultKind.DROP:
            del buffer[at]
        elif kind is FaultKind.DUPLICATE:
            buffer.insert(at, buffer[at])
        else:
            buffer[at:at] = self.noise()
        self.injected[kind] += 1

    def _by_rate(self, buffer: bytearray) -> bytearray:
        rates, rnd, out = self.rates, self._random, bytearray()
        for byte in buffer:
            if rnd.random() < rates.drop:
                self.injected[FaultKind.DROP] += 1
                continue
            if rnd.random() < rates.bit_flip:
                byte ^= 1 << rnd.randrange(8)
                self.injected[FaultKind.BIT_FLIP] += 1
            out.append(byte)
            if rnd.random() < rates.duplicate:
                out.append(byte)
                self.injected[FaultKind.DUPLICATE] += 1
        return out

    def noise(self) -> bytes:
        """One burst of random bytes."""
        return self._random.randbytes(self.rates.noise_burst_bytes)

    def next_noise_delay(self) -> float | None:
        """Seconds until the next noise burst (exponential), or None when noise is off."""
        if self.rates.noise_bursts_per_s <= 0:
            return None
        with self._lock:
            return self._random.expovariate(self.rates.noise_bursts_per_s)

    def count_noise(self) -> None:
        with self._lock:
            self.injected[FaultKind.NOISE] += 1
