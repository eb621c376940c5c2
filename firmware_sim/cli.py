"""`faregate sim`: emulate a station's readers and gate mechanisms on pseudo-terminals or TCP.

    faregate sim                                   # one gate on a new pty; prints its path
    faregate sim --link /tmp/gate0                 # ... with a stable symlink to it
    faregate sim --gates 4 --link /tmp/gate{gate}  # four gates, /tmp/gate0 .. /tmp/gate3
    faregate sim --tcp 7000                        # socket://127.0.0.1:7000 (gate n on 7000 + n)
    faregate sim --config device.toml --population phones.csv --scenario rush.toml

The port lines go to stdout (one per gate, flushed) so a script can read them; the run stops cleanly
on SIGINT or SIGTERM (or after the scenario's duration) and prints a one-line JSON summary.
"""

from __future__ import annotations

import argparse
import gc
import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from .config import ConfigError, DeviceConfig, load_config
from .population import Population, PopulationError
from .scenario import Scenario, ScenarioError, ScenarioRunner
from .sim import Sim


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--link", metavar="PATH",
                        help="stable symlink to each gate's pty; '{gate}' in PATH is the gate number")
    parser.add_argument("--tcp", metavar="PORT", type=int,
                        help="serve on 127.0.0.1:PORT (gate n on PORT + n) instead of a pty; 0 = any port")
    parser.add_argument("--gates", type=int, default=1, help="number of gates (default 1)")
    parser.add_argument("--baud", type=int, help="line speed (default 115200, or the config file's)")
    parser.add_argument("--config", metavar="FILE",
                        help="device configuration (TOML): timings, faults, key")
    parser.add_argument("--population", metavar="FILE", help="phones from a .csv or .json file")
    parser.add_argument("--phones", type=int, default=1000,
                        help="generate this many phones when no --population is given (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed for generated phones")
    parser.add_argument("--save-population", metavar="FILE",
                        help="write the phones (with their card ids) to a CSV file")
    parser.add_argument("--scenario", metavar="FILE", help="traffic scenario (TOML); default: no traffic")
    parser.add_argument("--rate", type=float, metavar="PER_MIN",
                        help="commuters a minute a gate, with the scenario's other defaults")
    parser.add_argument("--duration", type=float, metavar="S",
                        help="stop after S seconds (default: until SIGINT/SIGTERM)")


def _link_paths(pattern: str | None, gates: int) -> list[str | Path] | None:
    if pattern is None:
        return None
    if "{gate}" in pattern:
        return [pattern.format(gate=n) for n in range(gates)]
    return [pattern] if gates == 1 else [f"{pattern}{n}" for n in range(gates)]


def _build(args: argparse.Namespace) -> tuple[DeviceConfig, Population, Scenario | None]:
    config = load_config(args.config)
    if args.baud is not None:
        if args.baud <= 0:
            raise ConfigError("--baud must be positive")
        config = config.model_copy(update={"link": config.link.model_copy(update={"baud": args.baud})})
    if args.population:
        population = Population.load(args.population)
    else:
        population = Population.generate(args.phones, seed=args.seed)
    scenario = Scenario.load(args.scenario) if args.scenario else None
    if args.rate is not None:
        scenario = (scenario or Scenario(seed=args.seed)).model_copy(update={"arrivals_per_min": args.rate})
    return config, population, scenario


def run(args: argparse.Namespace) -> int:
    if args.gates < 1:
        print("faregate sim: --gates must be at least 1", file=sys.stderr)
        return 2
    try:
        config, population, scenario = _build(args)
    except (ConfigError, PopulationError, ScenarioError) as error:
        print(f"faregate sim: {error}", file=sys.stderr)
        return 2
    if args.save_population:
        population.save_csv(args.save_population)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            transport = "tcp" if args.tcp is not None else "pty"
            sim = Sim(config, population, gates=args.gates, transport=transport,
                      links=_link_paths(args.link, args.gates), tcp_port=args.tcp or 0)
        except OSError as error:
            print(f"faregate sim: cannot open the ports: {error}", file=sys.stderr)
            return 1
        with sim:
            for device in sim.gates:
                slave = getattr(device.link, "slave_path", "")
                extra = f" -> {slave}" if slave and slave != device.url else ""
                print(f"gate {device.gate}: {device.url}{extra}", flush=True)
            # The population, wallets and modules live as long as the run: keep them out of the
            # collector's full passes, which otherwise pause every device thread 20-30 ms at times.
            gc.collect()
            gc.freeze()
            runner = ScenarioRunner(sim, scenario).start() if scenario else None
            duration = args.duration
            if duration is None:
                duration = scenario.duration_s if scenario else 0.0
            deadline = sim.now() + duration if duration else float("inf")
            while not stop.wait(min(0.5, max(0.0, deadline - sim.now()))) and sim.now() < deadline:
                pass
            if runner is not None:
                runner.stop()
            summary = {gate.gate: gate.describe() for gate in sim.gates}
            counts = dict(runner.counts) if runner else {}
        print(json.dumps({"stopped_after_s": round(sim.now(), 3), "planned_arrivals": counts,
                          "gates": summary}, default=str), flush=True)
        return 0
    finally:
        gc.unfreeze()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
