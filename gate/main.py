"""`faregate gate --serial URL --config gate.toml [--fare-table FILE]`: run one gate controller until
SIGINT/SIGTERM, printing what it decides tap by tap."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from fare_core import FareCoreError, FareTable
from fare_core.reasons import Reason
from protocol.mqtt.address import NotAnMqttUrl, parse_mqtt_url

from .config import ConfigError, MqttConfig, load_config
from .controller import TapOutcome
from .runtime import GateRuntime
from .state import atomic_write
from .tuning import limit_cpu_latency, use_realtime


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="gate configuration (TOML)")
    parser.add_argument("--serial", help="pyserial URL of the reader: /dev/ttyUSB0, a pty path, socket://...")
    parser.add_argument("--mqtt", help="broker URL (mqtt://host:port), overrides the configuration")
    parser.add_argument("--data-dir", help="journal and state directory, overrides the configuration")
    parser.add_argument(
        "--fare-table",
        type=Path,
        metavar="FILE",
        help="commission the gate offline with a compiled fare table (faregate fares compile -o FILE); "
        "the backend's signed tables replace it when they come",
    )
    parser.add_argument("--log-level", default="INFO")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        config = load_config(args.config, serial=args.serial, data_dir=args.data_dir)
        if args.mqtt:
            config = config.model_copy(update={"mqtt": with_broker_url(config.mqtt, args.mqtt)})
        if args.fare_table is not None:
            install_fare_table(args.fare_table, config.data_dir)
    except ConfigError as exc:
        raise SystemExit(f"faregate gate: {exc}") from exc
    if config.realtime_priority is not None:
        use_realtime(config.realtime_priority)
    # held until the process exits: the kernel drops the request when its file closes
    cpu_limit = limit_cpu_latency(config.cpu_latency_us) if config.cpu_latency_us is not None else None
    try:
        return asyncio.run(_serve(GateRuntime(config)))
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        return 130
    finally:
        if cpu_limit is not None:
            cpu_limit.release()


async def _serve(runtime: GateRuntime) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await runtime.start()
    log = logging.getLogger("faregate.gate")
    if runtime.state.newest_fare_table_version == 0:
        log.warning("no fare table: every tap is refused until the backend sends one "
                    "or the gate is started with --fare-table FILE")
    runtime.controller.on_tap = _print_taps(runtime.controller.on_tap, log)
    # Everything built so far lives as long as the gate: keep it out of the cyclic collector, so a
    # collection during a tap walks only what the taps themselves allocate (shorter tail latency).
    gc.collect()
    gc.freeze()
    runtime.controller.collector.take_over()  # from now on the collector runs between taps only
    log.info("gate %s running on %s", runtime.config.gate_id, runtime.link.url)
    await stop.wait()
    await runtime.stop()
    return 0


def with_broker_url(mqtt: MqttConfig, url: str) -> MqttConfig:
    """The configuration's [mqtt] with --mqtt's URL, validated like the file (a user:password@ in the
    URL is the login, else the file's own username and password stay)."""
    values = mqtt.model_dump()
    values["url"] = url
    try:
        if parse_mqtt_url(url).username:
            values["username"] = values["password"] = None
        return MqttConfig.model_validate(values)
    except (NotAnMqttUrl, ValidationError) as exc:
        raise ConfigError(f"--mqtt {url}: must look like mqtt://[user:password@]host:port") from exc


def install_fare_table(path: Path, data_dir: Path) -> None:
    """Put a compiled fare table where the gate loads it from, after checking it is one; never over a
    newer table the gate already holds (that would undo what the backend sent)."""
    try:
        blob = path.read_bytes()
        table = FareTable.from_bytes(blob)
    except OSError as exc:
        raise ConfigError(f"--fare-table {path}: {exc.strerror}") from exc
    except FareCoreError as exc:
        raise ConfigError(f"--fare-table {path} is not a compiled fare table ({exc}); "
                          f"make one with: faregate fares compile RULES.toml -o {path}") from exc
    target = data_dir / "faretable.fgt"
    if target.exists():
        try:
            held = FareTable.from_bytes(target.read_bytes()).version
        except FareCoreError:
            held = -1  # unreadable: replace it
        if held > table.version:
            raise ConfigError(f"--fare-table {path} is version {table.version} but the gate holds "
                              f"version {held}; delete {target} to go back to an older table")
    data_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(target, blob)
    logging.getLogger("faregate.gate").warning(
        "fare table version %d from %s installed (commissioned offline, not signed by a backend)",
        table.version, path)


def _print_taps(chained: Callable[[TapOutcome], None] | None,
                log: logging.Logger) -> Callable[[TapOutcome], None]:
    """One console line per tap: who, what was decided, what it cost, how fast the barrier opened."""
    def on_tap(outcome: TapOutcome) -> None:
        if chained is not None:
            chained(outcome)
        verdict = "OPEN" if outcome.opened else "REFUSED"
        opened = f", barrier {outcome.tap_to_open_us / 1000:.1f} ms" if outcome.tap_to_open_us else ""
        known = outcome.reason in Reason._value2member_map_
        reason = Reason(outcome.reason).name if known else str(outcome.reason)
        if outcome.extra.get("recovered"):  # the earlier unconfirmed write had landed: no new charge
            reason += f" (recovers tap {outcome.extra.get('recovers_seq')}, its write had landed)"
        log.info("tap %016x: %s %s, fare ¥%d.%02d (wallet read and decided in %.1f ms%s)", outcome.card_id,
                 verdict, reason, outcome.fare // 100, outcome.fare % 100, outcome.decision_us / 1000, opened)
    return on_tap
