"""The scripted API: a station's gates on real ports, commuters who tap, and the ground truth.

    with Sim(gates=2, population=Population.generate(100, seed=1)) as sim:
        port = serial.serial_for_url(sim.url(0))          # the controller under test opens this
        tap = sim.present(card_id, gate=0, at=0.5)         # seconds after the sim started
        sim.wait(tap, timeout=5)
        tap.barrier_opened_at, tap.displays, tap.wallet_after, sim.record(card_id)
        sim.inject(0, FaultKind.BIT_FLIP); sim.hang(0, 1.0); sim.unplug(0, 0.5)
        sim.during_write(0, card_id, phase=20, fault="pull")  # torn after 20 of 64 bytes landed
        handset = sim.clone(card_id); sim.present(card_id, gate=1, handset=handset)

It runs in threads (one scheduler, two per gate), usable in-process by tests and benchmarks and by the
CLI; see scheduler.py for why threads rather than asyncio.

A commuter (`present`) holds the phone to the reader at `distance_cm`; when the gate reacts (display
or buzzer) they pull it away after `react_s`, or after `dwell_s` if given (a pulled phone, for torn
writes), or when their patience runs out. Each BarrierOpen is claimed by the commuters waiting at that
gate in arrival order; a commuter walks through once the barrier is open, and a tailgater right
behind them if asked. `pocket` puts a bystander's phone near the reader without any intent to pass.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import fare_core
from protocol.serial.messages import BarrierPosition, Direction

from .barrier import UNLIMITED
from .config import DeviceConfig
from .device import GateDevice, Record
from .faults import FaultKind
from .population import Phone, Population
from .reader import ANSWERED, Presence
from .scheduler import Scheduler, Timer
from .transport import Link, PtyLink, TcpLink
from .wallets import WalletStore


@dataclass(slots=True)
class Presentation:
    """One commuter at one gate; times are seconds since the sim started, None until it happens."""

    card_id: int
    gate: int
    direction: Direction
    at: float
    distance_cm: float
    dwell_s: float | None
    walk: bool
    tailgater: bool
    patience_s: float
    react_s: float
    handset: int = 0  # 0 the genuine phone, >= 1 a clone (Sim.clone)
    presented_at: float | None = None
    withdrawn_at: float | None = None
    authorised_at: float | None = None  # the controller sent BarrierOpen for this commuter
    barrier_opened_at: float | None = None  # the barrier reached OPEN for them
    passed_at: float | None = None  # the passage sensor counted them
    gave_up: bool = False
    denied: bool = False  # the gate showed a refusal (DENY style)
    displays: list[tuple[float, str, str, str]] = field(default_factory=list)  # (t, style, zh, en)
    wallet_before: bytes | None = field(default=None, repr=False)
    wallet_after: bytes | None = field(default=None, repr=False)
    done: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)
    _reacting: bool = field(default=False, repr=False)
    _walking: bool = field(default=False, repr=False)
    _timers: list[Timer] = field(default_factory=list, repr=False, compare=False)

    @property
    def display(self) -> tuple[str, str] | None:
        """The last text shown to this commuter (zh, en)."""
        return (self.displays[-1][2], self.displays[-1][3]) if self.displays else None


class Sim:
    """Gates, phones and commuters; see the module docstring."""

    def __init__(self, config: DeviceConfig | None = None, population: Population | None = None,
                 gates: int = 1, transport: str = "pty", links: list[str | Path] | None = None,
                 tcp_port: int = 0) -> None:
        if gates < 1:
            raise ValueError("a station needs at least one gate")
        if transport not in ("pty", "tcp"):
            raise ValueError(f"transport is 'pty' or 'tcp', not {transport!r}")
        if links is not None and len(links) != gates:
            raise ValueError(f"{gates} gate(s) need {gates} link path(s), got {len(links)}")
        self.config = config or DeviceConfig()
        self.population = population or Population()
        self.lock = threading.RLock()
        self.scheduler = Scheduler(self.lock)
        self.wallets = WalletStore(self.config.wallets.key)
        self.population.issue(self.wallets)
        self.t0 = self.scheduler.clock()
        self.gates: list[GateDevice] = []
        self._active: dict[int, list[Presentation]] = {}
        self._walkers: dict[int, deque[Presentation | None]] = {}
        self._boot_ids = itertools.count(int(time.time()) & 0xFFFF or 1)
        self._started = False
        try:
            for gate in range(gates):
                link: Link
                if transport == "pty":
                    link = PtyLink(links[gate] if links else None, self.config.link.baud)
                else:
                    link = TcpLink(tcp_port + gate if tcp_port else 0)
                device = GateDevice(gate, self.config, link, self.wallets, self.scheduler,
                                    next(self._boot_ids))
                device.listeners.append(self._on_record)
                self.gates.append(device)
                self._active[gate] = []
                self._walkers[gate] = deque()
        except BaseException:
            for device in self.gates:
                device.link.close()
            raise

    # ------------------------------------------------------------ life cycle

    def start(self) -> Sim:
        self.scheduler.start()
        for device in self.gates:
            device.start()
        self._started = True
        return self

    def close(self) -> None:
        """Stop every thread and close every port; raise the first error a timed action hit."""
        for device in self.gates:
            device.stop()
        self.scheduler.stop()
        for presentation in (p for ps in self._active.values() for p in ps):
            presentation.done.set()
        if self.scheduler.errors:
            raise RuntimeError("the simulation hit an error") from self.scheduler.errors[0]

    def __enter__(self) -> Sim:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def now(self) -> float:
        """Seconds since the sim was created (inside a timed action, at its device time: scheduler.py)."""
        return self.scheduler.now() - self.t0

    def url(self, gate: int = 0) -> str:
        """What the controller of `gate` opens with serial.serial_for_url."""
        return self.gates[gate].url

    def gate(self, gate: int) -> GateDevice:
        return self.gates[gate]

    # ------------------------------------------------------------ ground truth

    def add_phone(self, phone: Phone) -> None:
        with self.lock:
            self.population.add(phone)
            self.wallets.issue(phone.record())

    def wallet(self, card_id: int, handset: int = 0) -> bytes:
        """The true wallet bytes of a phone (or of one of its clones) now."""
        return self.wallets.wallet(card_id, handset)

    def record(self, card_id: int, handset: int = 0) -> fare_core.CardRecord:
        """The record in force on the phone (fare_core.WalletError if none is valid)."""
        return self.wallets.record(card_id, handset)[0]

    def clone(self, card_id: int) -> int:
        """A cloned SIM: a second handset with a byte-exact copy of the wallet now, under the same card
        id. Returns its handset number for `present(..., handset=)`. Keep a phone and its clone at
        different gates: one reader tells phones apart by card id only."""
        with self.lock:
            return self.wallets.clone(card_id)

    # ------------------------------------------------------------ commuters

    def present(self, card_id: int, gate: int = 0, at: float | None = None, *, distance_cm: float = 3.0,
                direction: Direction = Direction.ENTRY, dwell_s: float | None = None, walk: bool = True,
                tailgater: bool = False, patience_s: float = 4.0, react_s: float = 0.15,
                handset: int = 0) -> Presentation:
        """A commuter taps phone `card_id` at `gate` at time `at` (sim seconds; None = now)."""
        if card_id not in self.wallets:
            raise KeyError(f"phone {card_id:016x} is not in the population")
        if handset not in self.wallets.handsets(card_id):
            raise KeyError(f"phone {card_id:016x} has no handset {handset}")
        self._check_gate(gate)
        when = self.now() if at is None else at
        presentation = Presentation(card_id, gate, Direction(direction), when, distance_cm, dwell_s, walk,
                                    tailgater, patience_s, react_s, handset)
        self.scheduler.call_at(self.t0 + when, self._arrive, presentation)
        return presentation

    def pocket(self, card_id: int, gate: int = 0, at: float | None = None, *, distance_cm: float = 40.0,
               dwell_s: float = 3.0) -> Presentation:
        """A bystander's phone near the reader for `dwell_s`: it must never be transacted."""
        return self.present(card_id, gate, at, distance_cm=distance_cm, dwell_s=dwell_s, walk=False,
                            patience_s=dwell_s)

    def withdraw(self, card_id: int, gate: int = 0, at: float | None = None) -> None:
        """Pull phone `card_id` away from `gate`'s reader (mid-write: a torn write)."""
        self._check_gate(gate)
        when = self.now() if at is None else at

        def pull() -> None:
            for p in list(self._active[gate]):
                if p.card_id == card_id:
                    self._withdraw(p)
            self.gates[gate].reader.remove(card_id)

        self.scheduler.call_at(self.t0 + when, pull)

    def move(self, card_id: int, distance_cm: float, gate: int = 0, at: float | None = None) -> None:
        """Move a phone that is in `gate`'s field to `distance_cm` (out of range ends an RF operation)."""
        self._check_gate(gate)
        when = self.now() if at is None else at

        def shift() -> None:
            presence = self.gates[gate].reader.field.get(card_id)
            if presence is not None:
                presence.distance_cm = distance_cm
                self.gates[gate].reader.place(presence)

        self.scheduler.call_at(self.t0 + when, shift)

    def force_door(self, gate: int = 0, direction: Direction = Direction.ENTRY,
                   at: float | None = None) -> None:
        """Someone pushes through without tapping (forced door if closed, tailgating if open)."""
        self._check_gate(gate)
        when = self.now() if at is None else at
        self.scheduler.call_at(self.t0 + when, self.gates[gate].barrier.person_enters, Direction(direction))
        self.scheduler.call_at(self.t0 + when, self._walkers[gate].append, None)

    def at_gate(self, gate: int) -> list[Presentation]:
        """The commuters at `gate` now (arrived, not yet finished)."""
        self._check_gate(gate)
        with self.lock:
            return [p for p in self._active[gate] if p.presented_at is not None]

    def wait(self, presentation: Presentation, timeout: float = 10.0) -> Presentation:
        """Block until the commuter has finished (passed, or given up); TimeoutError otherwise."""
        if not presentation.done.wait(timeout):
            raise TimeoutError(f"commuter with {presentation.card_id:016x} still at gate "
                               f"{presentation.gate} after {timeout} s")
        return presentation

    def wait_for(self, predicate: Any, timeout: float = 5.0, interval: float = 0.005) -> None:
        """Poll `predicate()` (under the sim lock) until true; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if predicate():
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout} s")
            time.sleep(interval)

    # ------------------------------------------------------------ faults

    def inject(self, gate: int, kind: FaultKind | str, direction: str = "to_gate", count: int = 1) -> None:
        """A one-shot line fault on the next `count` frames to the controller (or reads by the device)."""
        self._check_gate(gate)
        self.gates[gate].inject(FaultKind(kind), direction, count)

    def hang(self, gate: int, seconds: float) -> None:
        self._check_gate(gate)
        self.gates[gate].hang(seconds)

    def unplug(self, gate: int, down_s: float) -> None:
        self._check_gate(gate)
        self.gates[gate].unplug(down_s)

    def power_cycle(self, gate: int, down_s: float) -> None:
        self._check_gate(gate)
        self.gates[gate].power_cycle(down_s)

    def during_write(self, gate: int, card_id: int | None, phase: int, fault: str = "pull",
                     down_s: float = 1.0, action: Any = None) -> threading.Event:
        """A fault at an exact phase of the next write to `card_id` (None: any phone) at `gate`:
        `phase` is the bytes of the slot landed (0..63), reader.WRITTEN (all landed, not yet verified
        nor answered) or reader.ANSWERED (the answer just sent). `fault`: "pull" (the commuter pulls
        the phone away: a torn write), "power" (the gate's power is cut for `down_s`), or "call"
        (run `action()` under the sim lock, e.g. to kill the controller at that instant). Returns an
        event set once the fault has happened; `disarm` forgets a fault whose write never came."""
        self._check_gate(gate)
        device = self.gates[gate]
        if fault == "pull":
            if phase == ANSWERED:
                raise ValueError("a phone pulled after the answer tears nothing; use a later tap")

            def pull() -> None:
                op = device.reader.busy
                card = op.card_id if op is not None else card_id
                for p in list(self._active[gate]):
                    if p.card_id == card:
                        self._withdraw(p)
                if card is not None:
                    device.reader.remove(card)

            run: Any = pull
        elif fault == "power":
            def cut() -> None:
                device.cut_power(down_s)

            run = cut
        elif fault == "call" and action is not None:
            run = action
        else:
            raise ValueError(f"fault is 'pull', 'power' or 'call' (with an action), not {fault!r}")
        happened = threading.Event()

        def fire() -> None:
            happened.set()
            run()

        with self.lock:
            device.reader.arm_write(card_id, phase, fire)
        return happened

    def disarm(self, gate: int, card_id: int | None = None) -> int:
        """Forget the faults armed at `gate` for `card_id` (None: all) whose write has not come."""
        self._check_gate(gate)
        with self.lock:
            return self.gates[gate].reader.disarm(card_id)

    def _check_gate(self, gate: int) -> None:
        if not 0 <= gate < len(self.gates):
            raise IndexError(f"no gate {gate}; this station has {len(self.gates)}")

    # ------------------------------------------------------------ commuter behaviour (under the lock)

    def _arrive(self, p: Presentation) -> None:
        phone = self.population.phones.get(p.card_id)
        p.presented_at = self.now()
        p.wallet_before = self.wallets.wallet(p.card_id, p.handset)
        self._active[p.gate].append(p)
        slowness, flaky = (phone.slowness, phone.flaky_write) if phone else (1.0, False)
        self.gates[p.gate].reader.place(Presence(p.card_id, p.distance_cm, slowness, flaky, p.handset))
        barrier = self.gates[p.gate].barrier
        if p.walk and barrier.authorised == UNLIMITED and barrier.direction == p.direction:
            p.authorised_at = p.presented_at  # free passage (emergency exit): just walk through
            if barrier.position is BarrierPosition.OPEN:
                self._start_walk(p)
        if p.dwell_s is not None:
            p._timers.append(self.scheduler.call_later(p.dwell_s, self._withdraw, p))
        p._timers.append(self.scheduler.call_later(p.patience_s, self._give_up, p))

    def _withdraw(self, p: Presentation) -> None:
        if p.withdrawn_at is None:
            p.withdrawn_at = self.now()
            self.gates[p.gate].reader.remove(p.card_id)
            self._maybe_finish(p)

    def _give_up(self, p: Presentation) -> None:
        self._withdraw(p)
        if not p._walking:
            p.gave_up = True
            self._finish(p)

    def _maybe_finish(self, p: Presentation) -> None:
        if p.withdrawn_at is None:
            return
        if not p.walk or p.passed_at is not None:
            self._finish(p)
        elif p.denied and p.authorised_at is None:
            p.gave_up = True  # refused: walks off (otherwise waits for the barrier until patience ends)
            self._finish(p)

    def _finish(self, p: Presentation) -> None:
        if p.done.is_set():
            return
        for timer in p._timers:
            timer.cancel()
        if p in self._active[p.gate]:
            self._active[p.gate].remove(p)
        p.wallet_after = self.wallets.wallet(p.card_id, p.handset)
        p.done.set()

    def _on_record(self, record: Record) -> None:
        gate = record.gate
        active = [p for p in self._active[gate] if p.presented_at is not None]
        now = record.t - self.t0
        if record.kind in ("display", "buzzer"):
            for p in active:
                if record.kind == "display" and record.data["zh"] + record.data["en"]:
                    p.displays.append((now, record.data["style"], record.data["zh"], record.data["en"]))
                    p.denied = p.authorised_at is None and record.data["style"] == "DENY"
                if p.dwell_s is None and not p._reacting and p.withdrawn_at is None:
                    p._reacting = True
                    p._timers.append(self.scheduler.call_later(p.react_s, self._withdraw, p))
        elif record.kind == "authorise":
            passages = record.data["passages"]
            direction = Direction[record.data["direction"]]
            waiting = [p for p in active if p.walk and p.authorised_at is None and p.direction == direction]
            for p in waiting if passages == 0 else waiting[:passages]:
                p.authorised_at = now
                if self.gates[gate].barrier.position is BarrierPosition.OPEN:
                    self._start_walk(p)
        elif record.kind == "barrier" and record.data["position"] == "OPEN":
            for p in active:
                if p.authorised_at is not None and not p._walking:
                    self._start_walk(p)
        elif record.kind == "passage" and self._walkers[gate]:
            walker = self._walkers[gate].popleft()
            if walker is not None:
                walker.passed_at = now
                self._maybe_finish(walker)

    def _start_walk(self, p: Presentation) -> None:
        p._walking = True
        p.barrier_opened_at = self.now()
        if p.dwell_s is None and not p._reacting:  # the open barrier is feedback enough
            p._reacting = True
            p._timers.append(self.scheduler.call_later(p.react_s, self._withdraw, p))
        walk_delay = 0.2
        p._timers.append(self.scheduler.call_later(walk_delay, self._step_in, p))
        if p.tailgater:
            self.scheduler.call_later(walk_delay + 0.3, self._tailgate, p.gate, p.direction)

    def _step_in(self, p: Presentation) -> None:
        self._walkers[p.gate].append(p)
        self.gates[p.gate].barrier.person_enters(p.direction)

    def _tailgate(self, gate: int, direction: Direction) -> None:
        self._walkers[gate].append(None)
        self.gates[gate].barrier.person_enters(direction)
