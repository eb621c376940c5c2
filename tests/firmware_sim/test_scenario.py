"""Scenarios: the plan is deterministic and follows its shares; the runner drives a real sim."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from firmware_sim.population import Population
from firmware_sim.scenario import Planner, Scenario, ScenarioError, ScenarioRunner
from firmware_sim.sim import Sim


def _plan(scenario: Scenario, gates: int = 3, until: float = 600.0) -> list:  # type: ignore[type-arg]
    population = Population.generate(3000, seed=1, blocked_share=0.05, low_balance_share=0.1)
    return Planner(scenario, population, gates).plan(until)


def test_plan_is_seeded_and_paced() -> None:
    scenario = Scenario(seed=9, arrivals_per_min=30, pulled_share=0.1, double_share=0.1, pocket_share=0.1,
                        tailgate_share=0.1, forced_share=0.02, exit_share=0.3)
    plan = _plan(scenario)
    assert plan == _plan(scenario)
    assert plan != _plan(scenario.model_copy(update={"seed": 10}))
    per_gate = Counter(a.gate for a in plan)
    assert all(240 < n < 360 for n in per_gate.values())  # 30 a minute for 10 minutes, Poisson
    kinds = Counter(a.kind for a in plan)
    assert kinds["pulled"] > 40 and kinds["double"] > 40 and kinds["pocket"] > 40 and kinds["forced"] > 5
    exits = sum(a.direction == 1 for a in plan)
    assert 0.2 < exits / len(plan) < 0.4
    assert all(a.dwell_s is not None for a in plan if a.kind == "pulled")
    assert [a.at for a in plan] == sorted(a.at for a in plan)


def test_a_phone_is_never_at_two_gates_at_once() -> None:
    plan = _plan(Scenario(seed=2, arrivals_per_min=120, double_share=0.2), gates=4, until=120)
    last: dict[int, float] = {}
    for arrival in plan:
        for card in (arrival.card_id, arrival.other_card_id):
            if card:
                assert arrival.at - last.get(card, -100.0) >= 8.0
                last[card] = arrival.at


def test_duration_bounds_the_plan() -> None:
    plan = _plan(Scenario(duration_s=30, arrivals_per_min=60))
    assert plan and max(a.at for a in plan) < 30


def test_scenario_file(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("arrivals_per_min = 12\npulled_share = 0.5\n", encoding="utf-8")
    assert Scenario.load(path).pulled_share == 0.5
    path.write_text("pulled_share = 1.5\n", encoding="utf-8")
    with pytest.raises(ScenarioError, match="pulled_share"):
        Scenario.load(path)
    path.write_text("arrivals = 3\n", encoding="utf-8")
    with pytest.raises(ScenarioError, match="arrivals"):
        Scenario.load(path)


def test_runner_presents_phones_at_a_live_sim(make_sim: Callable[..., Sim]) -> None:
    sim = make_sim(population=Population.generate(50, seed=3), gates=2)
    runner = ScenarioRunner(sim, Scenario(seed=1, arrivals_per_min=600, duration_s=1.0,
                                          pocket_share=0.3)).start()
    sim.wait_for(lambda: runner.presentations and all(
        p.presented_at is not None for p in runner.presentations if p.at < sim.now() - 0.2), timeout=5)
    sim.wait_for(lambda: sum(len(g.records("phone")) for g in sim.gates) >= 2, timeout=5)
    runner.stop()
    assert runner.finished and sum(runner.counts.values()) >= 2
