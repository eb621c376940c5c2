"""`faregate gate --serial URL --config gate.toml`: run one gate controller until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal

from .config import ConfigError, load_config
from .runtime import GateRuntime
from .tuning import limit_cpu_latency, use_realtime


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="gate configuration (TOML)")
    parser.add_argument("--serial", help="pyserial URL of the reader: /dev/ttyUSB0, a pty path, socket://...")
    parser.add_argument("--mqtt", help="broker URL (mqtt://host:port), overrides the configuration")
    parser.add_argument("--data-dir", help="journal and state directory, overrides the configuration")
    parser.add_argument("--log-level", default="INFO")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        config = load_config(args.config, serial=args.serial, data_dir=args.data_dir)
        if args.mqtt:
            config = config.model_copy(update={"mqtt": config.mqtt.model_copy(update={"url": args.mqtt})})
    except ConfigError as exc:
        raise SystemExit(f"faregate gate: {exc}") from exc
    if config.realtime_priority is not None:
        use_realtime(config.realtime_priority)
    # held until the process exits: the kernel drops the request when its file closes
    cpu_limit = limit_cpu_latency(config.cpu_latency_us) if config.cpu_latency_us is not None else None
    try:
        return asyncio.run(_serve(GateRuntime(config)))
    finally:
        if cpu_limit is not None:
            cpu_limit.release()


async def _serve(runtime: GateRuntime) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await runtime.start()
    # Everything built so far lives as long as the gate: keep it out of the cyclic collector, so a
    # collection during a tap walks only what the taps themselves allocate (shorter tail latency).
    gc.collect()
    gc.freeze()
    runtime.controller.collector.take_over()  # from now on the collector runs between taps only
    logging.getLogger(__name__).info("gate %s running on %s", runtime.config.gate_id, runtime.link.url)
    await stop.wait()
    await runtime.stop()
    return 0
