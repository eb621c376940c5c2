"""Traffic scenarios: commuters arriving at each gate, with the awkward cases in given shares.

Arrivals at each gate are a Poisson process (`arrivals_per_min`). Each arrival is a plain tap, or
with the configured probabilities: a blocked phone, a low-balance phone, a phone pulled away early
(a torn write if it leaves mid-write), two phones held together, a bystander's phone in range of the
antenna but beyond the threshold, a tailgater, or someone forcing the door. A phone is never at two
gates at once. The plan is pure (seeded, testable); `ScenarioRunner` feeds it to a Sim window by
window so an endless run keeps bounded memory.

Scenario file (TOML), every key optional::

    seed = 1
    duration_s = 600        # 0 = until stopped
    arrivals_per_min = 30   # per gate
    exit_share = 0.5
    blocked_share = 0.01
    low_balance_share = 0.05
    pulled_share = 0.02
    double_share = 0.01
    pocket_share = 0.05
    tailgate_share = 0.01
    forced_share = 0.002
"""

from __future__ import annotations

import random
import threading
import tomllib
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from protocol.serial.messages import Direction

from .population import Population
from .sim import Presentation, Sim

Share = Annotated[float, Field(ge=0.0, le=1.0)]
WINDOW_S = 10.0  # the runner plans this far ahead
BUSY_S = 8.0  # a phone used at a gate is not used again for this long


class ScenarioError(ValueError):
    """A scenario file that cannot be used."""


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    duration_s: Annotated[float, Field(ge=0)] = 0.0
    arrivals_per_min: Annotated[float, Field(ge=0, le=600)] = 30.0
    exit_share: Share = 0.5
    blocked_share: Share = 0.01
    low_balance_share: Share = 0.05
    pulled_share: Share = 0.02
    double_share: Share = 0.01
    pocket_share: Share = 0.05
    tailgate_share: Share = 0.01
    forced_share: Share = 0.0

    @classmethod
    def load(cls, path: str | Path) -> Scenario:
        try:
            with open(path, "rb") as file:
                return cls.model_validate(tomllib.load(file))
        except OSError as error:
            raise ScenarioError(f"cannot read {path}: {error.strerror}") from None
        except tomllib.TOMLDecodeError as error:
            raise ScenarioError(f"{path} is not valid TOML: {error}") from None
        except ValidationError as error:
            raise ScenarioError(f"{path}: {error}") from None


@dataclass(frozen=True, slots=True)
class Arrival:
    """One planned event at a gate. `kind`: tap, pulled, double, pocket, tailgate, forced."""

    at: float
    gate: int
    kind: str
    direction: Direction
    card_id: int = 0
    other_card_id: int = 0  # the second phone (double) or the bystander's (pocket)
    dwell_s: float | None = None


class Planner:
    """Turns a scenario into arrivals, window by window, deterministically for a seed."""

    def __init__(self, scenario: Scenario, population: Population, gates: int,
                 pull_window_s: tuple[float, float] = (0.02, 0.08)) -> None:
        self.scenario = scenario
        self.gates = gates
        self.pull_window_s = pull_window_s
        self._random = random.Random(scenario.seed)
        phones = list(population)
        self._blocked = [p.card_id for p in phones if p.blocked]
        self._low = [p.card_id for p in phones if not p.blocked and p.balance < 300]
        self._normal = [p.card_id for p in phones if not p.blocked and p.balance >= 300]
        self._busy_until: dict[int, float] = {}
        self._next_at = [self._gap() for _ in range(gates)]

    def _gap(self) -> float:
        rate = self.scenario.arrivals_per_min / 60
        return self._random.expovariate(rate) if rate > 0 else float("inf")

    def _pick(self, at: float, prefer: list[int]) -> int | None:
        for pool in (prefer, self._normal, self._low, self._blocked):
            if not pool:
                continue
            for _ in range(8):
                card = self._random.choice(pool)
                if self._busy_until.get(card, -1.0) <= at:
                    self._busy_until[card] = at + BUSY_S
                    return card
        return None

    def plan(self, until: float) -> list[Arrival]:
        """Every arrival before `until` (seconds from the start) not planned yet, in time order."""
        s, rnd, arrivals = self.scenario, self._random, []
        if s.duration_s:
            until = min(until, s.duration_s)
        for gate in range(self.gates):
            while self._next_at[gate] < until:
                at = self._next_at[gate]
                self._next_at[gate] = at + self._gap()
                direction = Direction.EXIT if rnd.random() < s.exit_share else Direction.ENTRY
                if rnd.random() < s.forced_share:
                    arrivals.append(Arrival(at, gate, "forced", direction))
                    continue
                roll = rnd.random()
                prefer = (self._blocked if roll < s.blocked_share
                          else self._low if roll < s.blocked_share + s.low_balance_share else self._normal)
                card = self._pick(at, prefer)
                if card is None:
                    continue
                kind, other, dwell = "tap", 0, None
                roll = rnd.random()
                edges = [s.pulled_share, s.double_share, s.pocket_share, s.tailgate_share]
                if roll < edges[0]:
                    kind, dwell = "pulled", rnd.uniform(*self.pull_window_s)
                elif roll < sum(edges[:2]):
                    kind, other = "double", self._pick(at, self._normal) or 0
                elif roll < sum(edges[:3]):
                    kind, other = "pocket", self._pick(at, self._normal) or 0
                elif roll < sum(edges):
                    kind = "tailgate"
                arrivals.append(Arrival(at, gate, kind, direction, card, other, dwell))
        return sorted(arrivals, key=lambda a: (a.at, a.gate))


class ScenarioRunner:
    """Feeds a scenario to a running Sim, one window ahead, until the duration or `stop()`."""

    def __init__(self, sim: Sim, scenario: Scenario, keep: int = 10_000) -> None:
        self.sim = sim
        self.scenario = scenario
        read_s = sim.config.reader.read_ms / 1000
        write_s = sim.config.reader.write_ms / 1000
        self.planner = Planner(scenario, sim.population, len(sim.gates), (read_s, read_s + 2 * write_s))
        self.presentations: deque[Presentation] = deque(maxlen=keep)
        self.counts: Counter[str] = Counter()
        self._start = 0.0
        self._planned_until = 0.0
        self._stopped = threading.Event()

    def start(self) -> ScenarioRunner:
        self._start = self.sim.now()
        self._plan_window()
        return self

    def stop(self) -> None:
        self._stopped.set()

    @property
    def finished(self) -> bool:
        duration = self.scenario.duration_s
        return self._stopped.is_set() or bool(duration and self._planned_until >= duration)

    def _plan_window(self) -> None:
        if self.finished:
            return
        self._planned_until += WINDOW_S
        for arrival in self.planner.plan(self._planned_until):
            self._schedule(arrival)
        self.sim.scheduler.call_at(self.sim.t0 + self._start + self._planned_until - WINDOW_S / 2,
                                   self._plan_window)

    def _schedule(self, a: Arrival) -> None:
        sim, at = self.sim, self._start + a.at
        self.counts[a.kind] += 1
        if a.kind == "forced":
            sim.force_door(a.gate, a.direction, at=at)
            return
        self.presentations.append(sim.present(a.card_id, a.gate, at, direction=a.direction,
                                              dwell_s=a.dwell_s, tailgater=a.kind == "tailgate"))
        if a.kind == "double" and a.other_card_id:
            self.presentations.append(sim.present(a.other_card_id, a.gate, at, distance_cm=5.0,
                                                  direction=a.direction, walk=False))
        elif a.kind == "pocket" and a.other_card_id:
            self.presentations.append(sim.pocket(a.other_card_id, a.gate, at,
                                                 distance_cm=self.planner._random.uniform(25, 60)))
