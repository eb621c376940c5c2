"""The `faregate` command: one entry point, each subcommand in the package that owns it.

A subcommand module exposes `add_arguments(parser)` and `run(args) -> int`; it is imported only when
its subcommand runs, so `faregate sim` never pays for FastAPI and `faregate bench core` never for MQTT.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("faregate.demo", "run a whole simulated station: broker, backend, gates, commuters"),
    "soak": ("faregate.soak", "commuters and every fault at random, then check every fen is accounted for"),
    "sim": ("firmware_sim.cli", "emulate an RF-SIM reader and gate mechanism on a pseudo-terminal"),
    "gate": ("gate.main", "run a gate controller on a serial port"),
    "backend": ("backend.cli", "run the backend: MQTT ingest, REST API, dashboard"),
    "relay": ("backend.relay_cli", "link station servers to the NATS cluster, both ways"),
    "fares": ("fare_core.cli", "validate and compile fare rules into a fare table artefact"),
}

BENCHMARKS: dict[str, tuple[str, str]] = {
    "core": ("faregate.bench.core", "fare_core decide() and deny-list, compiled beside the twin"),
    "loop": ("faregate.bench.loop", "tap-to-open latency over the simulated serial loop"),
    "ingest": ("faregate.bench.ingest", "taps per second through a real broker into the database"),
    "city": ("faregate.bench.city", "thousands of gates through station servers: taps, deny propagation"),
}


def _add_lazy(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], name: str, module: str,
              help_text: str, argv: Sequence[str]) -> None:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(_module=module)
    # Import the module only when this subcommand is the one being run (keeps --help cheap).
    if list(argv[:1]) == [name]:
        importlib.import_module(module).add_arguments(parser)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faregate", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        _add_lazy(sub, name, module, help_text, argv)
    bench = sub.add_parser("bench", help="benchmarks; each prints one JSON object with --json")
    bench_sub = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, (module, help_text) in BENCHMARKS.items():
        _add_lazy(bench_sub, name, module, help_text, argv[1:] if argv[:1] == ["bench"] else ())
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(args_list).parse_args(args_list)
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
