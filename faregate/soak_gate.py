"""One gate of the soak in a process of its own, so the soak can kill it with SIGKILL as a power cut
kills a gate's controller board: `python -m faregate.soak_gate CONFIG.json [--clock-offset S]`.

It is `faregate gate` (the same GateRuntime) with two differences the soak needs: the configuration
is the JSON of a GateConfig (what SimStation.prepare makes), and `--clock-offset` runs the gate's
tap clock that many seconds off the true time, as a gate whose clock jumped would (the taps it
journals carry the wrong time; their wallet counters are still right).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import time
from pathlib import Path

from gate.config import parse_config
from gate.runtime import GateRuntime


async def serve(config_path: Path, clock_offset_s: float) -> int:
    config = parse_config(json.loads(config_path.read_text(encoding="utf-8")), source=str(config_path))
    runtime = GateRuntime(config, clock=lambda: time.time() + clock_offset_s)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await runtime.start()
    logging.getLogger("faregate.soak_gate").info("gate %s running on %s, clock offset %+.0f s",
                                                 config.gate_id, runtime.link.url, clock_offset_s)
    await stop.wait()
    await runtime.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m faregate.soak_gate", description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="the gate configuration as JSON")
    parser.add_argument("--clock-offset", type=float, default=0.0, help="seconds added to the tap clock")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return asyncio.run(serve(args.config, args.clock_offset))


if __name__ == "__main__":
    raise SystemExit(main())
