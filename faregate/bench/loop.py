"""`faregate bench loop`: tap-to-open latency over the simulated serial loop, beside its floor.

The gate runs as its own process (`faregate gate`, exactly as deployed), so it shares no interpreter
lock with the simulator; the simulator in this process presents phones one after another on a real
pseudo-terminal paced at the given baud rate and timestamps, in device time (firmware_sim/scheduler.py),
when each phone entered the field (the moment it was due there) and when the BarrierOpen command's
last byte arrived. Device time keeps the simulator's own thread wake-ups out of the figure while no
byte is delivered before the line could carry it and no RF operation ends before its configured time.

Each phone is presented on a quiet line: once the previous commuter's Passage and BarrierChanged
events have been delivered and the barrier is closed, plus QUIET_S. Presented straight after the
previous commuter passed, a FieldChanged waited 2.1 ms behind those 24 bytes, which is in no tap's
floor. The collector is frozen over the measurement (a full pass over the setup's objects paused the
simulator 20-30 ms).

The floor of one entry tap is what no gate software can remove: the bytes' own time on the wire
(FieldChanged, ReadWallet, Wallet, WriteSlot, WriteResult, BarrierOpen at 10 bits a byte) plus the
device's configured RF read, write and verify times. host_overhead = tap_to_open - floor.
`--twin` runs the gate on the pure-Python fare_core, the same-run baseline for the compiled core.
`--realtime` runs the simulator, the gate (its realtime_priority setting) and the plain loop under
SCHED_FIFO, as a gate is deployed when its latency tail matters; `--cpu-latency` holds idle CPUs to a
wake-up latency (gate/tuning.py) so that a byte ending a frame does not first wait for a sleeping core;
`machine_steal_ms` reports what the hypervisor took from the machine meanwhile, the one source of
stalls neither removes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import serial

import fare_core
from backend.broker import free_port
from fare_core import artefact, compiler, read_wallet, rules
from firmware_sim.config import BarrierConfig, DeviceConfig, LinkConfig
from firmware_sim.population import Phone, Population
from firmware_sim.sim import Sim
from gate.journal import Journal
from gate.tuning import CpuLatencyLimit, current_cpu_latency_limit
from protocol.serial import (
    BarrierOpen,
    BarrierPosition,
    Direction,
    FieldChanged,
    PhoneSignal,
    ReadWallet,
    RfStatus,
    Wallet,
    WriteOutcome,
    WriteResult,
    WriteSlot,
)
from protocol.serial.timing import wire_time

EXAMPLE = Path(fare_core.__file__).with_name("examples") / "tiny.toml"
#: Idle time before each tap once the line is quiet and the barrier closed (the controller finishes
#: handling the previous tap's events).
QUIET_S = 0.02


def tap_bytes() -> int:
    """Bytes on the line for one entry tap, from the protocol's own encoders."""
    frames = [
        FieldChanged((PhoneSignal(1, -40),)), ReadWallet(1), Wallet(1, RfStatus.OK, bytes(128)),
        WriteSlot(1, 1, bytes(64)), WriteResult(1, 1, WriteOutcome.OK, 64), BarrierOpen(Direction.ENTRY),
    ]
    return sum(len(f.to_bytes(0)) for f in frames)


def plain_loop(url: str, baud: int, master_key: bytes, taps: int) -> None:
    """The baseline controller: a blocking pyserial loop doing the same exchange as a gate (read,
    decide, write, open, display) with nothing else: no asyncio, no journal, no MQTT, no retries.
    Run in its own process like the gate, it shows what the simulator and the OS cost by themselves."""
    from protocol.serial import Display, DisplayStyle, FrameDecoder, parse

    port = serial.serial_for_url(url, baudrate=baud, timeout=5.0)
    decoder = FrameDecoder()
    sam = fare_core.Sam(master_key)
    table = fare_core.FareTable(compiler.compile_rules(rules.load_rules(EXAMPLE), version=1))
    nobody = fare_core.DenyList()
    events: list[Any] = []
    seq = 0

    def request(message: Any) -> Any:
        nonlocal seq
        seq = seq % 255 + 1
        port.write(message.to_bytes(seq))
        while True:
            for frame in decoder.feed(port.read(max(1, port.in_waiting))):
                if frame.seq == seq and frame.command >= 0x80 and frame.command < 0xC0:
                    return parse(frame)
                if frame.command >= 0xC0:
                    events.append(parse(frame))

    served = 0
    while served < taps:
        while not events:
            for frame in decoder.feed(port.read(max(1, port.in_waiting))):
                events.append(parse(frame))
        event = events.pop(0)
        if not isinstance(event, FieldChanged) or len(event.phones) != 1:
            continue
        card = event.phones[0].card_id
        wallet = request(ReadWallet(card))
        tap = fare_core.Tap(card, 1, fare_core.Direction.ENTRY, int(time.time()))
        decision = fare_core.decide(wallet.wallet, tap, table, nobody, sam)
        if decision.record is None:  # every bench phone can pay; a denial means a broken setup
            raise RuntimeError(f"bench tap denied: {decision!r}")
        request(WriteSlot(card, decision.slot, decision.record))
        request(BarrierOpen(Direction.ENTRY, 1, 5000))
        request(Display(DisplayStyle.OK, 3000, decision.display_zh, decision.display_en))
        served += 1
    port.close()


def scrape_recent(port: int) -> dict[tuple[str, str], float]:
    """The gate's faregate_recent_ms gauges from its /metrics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = {}
    pattern = r'faregate_recent_ms\{[^}]*quantile="([^"]+)"[^}]*what="([^"]+)"[^}]*\} (\S+)'
    for match in re.finditer(pattern, text):
        found[(match.group(2), match.group(1))] = round(float(match.group(3)), 3)
    return found


def wait_gate_ready(sim: Sim, metrics_port: int, timeout_s: float) -> None:
    """Until the gate process has restored its barrier, display and field (three requests on the line)
    and serves its metrics (it does so once its controller runs): a commuter presented earlier could
    give up before a slow start (a loaded machine, the twin's import) got to the first tap."""
    device_gate = sim.gate(0)
    sim.wait_for(lambda: len(device_gate.records("rx")) >= 3, timeout=timeout_s)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", metrics_port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("the gate did not come up") from None
            time.sleep(0.05)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_loop(taps: int, baud: int, twin: bool = False, plain: bool = False,
             timeout_s: float = 600.0, realtime: int | None = None,
             cpu_latency_us: int | None = None) -> dict[str, Any]:
    device = DeviceConfig(link=LinkConfig(baud=baud), barrier=BarrierConfig(travel_ms=20, passage_ms=40))
    cards = [0x5EED0000 + i for i in range(taps)]
    population = Population([Phone(card_id=c, balance=100_000) for c in cards])
    table = compiler.compile_rules(rules.load_rules(EXAMPLE), version=1)
    with tempfile.TemporaryDirectory(prefix="faregate-loop-") as tmp, Sim(device, population) as sim:
        data = Path(tmp) / "gate"
        data.mkdir()
        (data / "faretable.fgt").write_bytes(artefact.pack(table))
        config = Path(tmp) / "gate.toml"
        metrics_port = free_port()
        config.write_text(
            f'station_id = 1\ngate_no = 1\ndirection = "entry"\ndata_dir = "{data}"\nbaud = {baud}\n'
            f'metrics_port = {metrics_port}\n'
            + (f"realtime_priority = {realtime}\n" if realtime is not None else "")
            + (f"cpu_latency_us = {cpu_latency_us}\n" if cpu_latency_us is not None else "")
            + f'sam_key_hex = "{device.wallets.master_key}"\n[mqtt]\nurl = "mqtt://127.0.0.1:1"\n',
            encoding="utf-8")
        env = dict(os.environ, FARE_CORE_NO_EXTENSIONS="1" if twin else os.environ.get(
            "FARE_CORE_NO_EXTENSIONS", ""))
        command = ([sys.executable, "-m", "faregate.bench.loop", "--plain", sim.url(0), str(baud),
                    device.wallets.master_key, str(taps)] if plain else
                   [sys.executable, "-m", "faregate.cli", "gate", "--config", str(config), "--serial",
                    sim.url(0),
                    "--log-level", "WARNING"])
        gate = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        try:
            device_gate = sim.gate(0)
            if not plain:
                wait_gate_ready(sim, metrics_port, timeout_s=60)
            time.sleep(0.3)
            presentations = []
            deadline = time.monotonic() + timeout_s
            # Everything built so far (modules, population, wallets) lives to the end: keep it out
            # of the collector, whose full passes over it paused this process 20-30 ms mid-tap.
            gc.collect()
            gc.freeze()
            for card in cards:
                # Each tap on a quiet line: the previous commuter's Passage and BarrierChanged events
                # (24 bytes, 2.1 ms at 115200 baud) must not delay this one's FieldChanged.
                sim.wait_for(lambda: device_gate.barrier.position is BarrierPosition.CLOSED
                             and device_gate.line_idle(), timeout=max(1.0, deadline - time.monotonic()))
                time.sleep(QUIET_S)
                p = sim.present(card, 0, walk=True, patience_s=5.0)
                sim.wait(p, timeout=max(1.0, deadline - time.monotonic()))
                presentations.append(p)
            gate_side = {} if plain else scrape_recent(metrics_port)
        finally:
            gc.unfreeze()
            gate.terminate()
            try:
                _, stderr = gate.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                gate.kill()
                _, stderr = gate.communicate()
        journaled = []
        if not plain:
            with Journal(data / "journal.db") as journal:
                journaled = journal.pending(limit=taps * 2)
        charged = sum(1 for c in cards if read_wallet(sim.wallet(c), c, sim.wallets.sam)[0].counter == 1)
    opened = [(p.authorised_at - p.presented_at) * 1000 for p in presentations
              if p.authorised_at is not None and p.presented_at is not None]
    wire_ms = wire_time(tap_bytes(), baud) * 1000
    rf_ms = device.reader.read_ms + device.reader.write_ms + device.reader.verify_ms
    floor_ms = wire_ms + rf_ms
    overhead = [t - floor_ms for t in opened]
    if not opened:
        raise RuntimeError(f"no barrier opened; gate said: {stderr[-2000:]}")
    return {
        "taps": taps, "baud": baud, "controller": "plain loop" if plain else "gate",
        "core": "python" if twin else fare_core.IMPLEMENTATION,  # the twin when compiled is off
        "opened": len(opened),
        "tap_to_open_ms_p50": round(percentile(opened, 0.5), 3),
        "tap_to_open_ms_p99": round(percentile(opened, 0.99), 3),
        "tap_to_open_ms_max": round(max(opened), 3),
        "wire_floor_ms": round(wire_ms, 3),
        "device_rf_ms": round(rf_ms, 3),
        "host_overhead_ms_p50": round(percentile(overhead, 0.5), 3),
        "host_overhead_ms_p95": round(percentile(overhead, 0.95), 3),
        "host_overhead_ms_p99": round(percentile(overhead, 0.99), 3),
        "host_overhead_ms_mean": round(statistics.fmean(overhead), 3),
        # the gate's own processing, timed inside the gate from each frame read to the next request
        "gate_host_ms_p50": gate_side.get(("host", "0.5")),
        "gate_host_ms_p99": gate_side.get(("host", "0.99")),
        "journaled": len(journaled),
        "charged": charged,
        "lost": 0 if plain else taps - len(journaled),
        "samples_ms": opened,
    }


def write_svg_histogram(path: Path, samples: list[float], floor_ms: float, title: str) -> None:
    """A self-contained SVG histogram (no plotting library needed on a gate engineer's laptop)."""
    lo, hi = min(samples), max(samples)
    bins = 40
    width = (hi - lo) / bins or 1.0
    counts = [0] * bins
    for s in samples:
        counts[min(bins - 1, int((s - lo) / width))] += 1
    top = max(counts)
    w, h, pad = 640, 320, 40
    bars = []
    for i, c in enumerate(counts):
        bh = (h - 2 * pad) * c / top
        x = pad + i * (w - 2 * pad) / bins
        bars.append(f'<rect x="{x:.1f}" y="{h - pad - bh:.1f}" width="{(w - 2 * pad) / bins - 1:.1f}" '
                    f'height="{bh:.1f}" fill="#3b7dd8"/>')
    fx = pad + (floor_ms - lo) / (hi - lo or 1) * (w - 2 * pad)
    floor_line = (f'<line x1="{fx:.1f}" y1="{pad}" x2="{fx:.1f}" y2="{h - pad}" stroke="#d33" '
                  f'stroke-dasharray="4"/>' if lo <= floor_ms <= hi else "")
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
           f'font-size="12"><rect width="100%" height="100%" fill="white"/>'
           f'<text x="{pad}" y="20">{title}</text>{"".join(bars)}{floor_line}'
           f'<text x="{pad}" y="{h - 10}">{lo:.2f} ms</text>'
           f'<text x="{w - pad - 60}" y="{h - 10}">{hi:.2f} ms</text></svg>')
    path.write_text(svg, encoding="utf-8")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--taps", type=int, default=200, help="phones presented, one after another")
    parser.add_argument("--baud", type=int, default=115200)
    parser.add_argument("--twin", action="store_true", help="run the gate on the pure-Python core")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--plot", type=Path, metavar="FILE", help="write a latency histogram (SVG)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the same-run plain-loop baseline (halves the run time)")
    parser.add_argument("--realtime", type=int, nargs="?", const=50, metavar="PRIORITY",
                        help="run the simulator, the gate (its realtime_priority setting) and the plain "
                        "loop under SCHED_FIFO (default priority 50; needs root or CAP_SYS_NICE)")
    parser.add_argument("--cpu-latency", type=int, nargs="?", const=0, metavar="US",
                        help="hold idle CPUs to this wake-up latency over the run (/dev/cpu_dma_latency, "
                        "default 0: idle CPUs poll; the gate's cpu_latency_us setting; needs root)")


def steal_ms() -> float | None:
    """CPU time the hypervisor took from this machine's CPUs so far (Linux /proc/stat), in ms."""
    try:
        fields = Path("/proc/stat").read_text(encoding="ascii").split("\n", 1)[0].split()
        return int(fields[8]) * 1000 / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def run(args: argparse.Namespace) -> int:
    if args.taps < 1 or args.baud < 1200:
        raise SystemExit("--taps must be >= 1 and --baud >= 1200")
    if args.realtime is not None:
        if not 1 <= args.realtime <= 99:
            raise SystemExit("--realtime priority must be 1..99")
        # the simulator (this process) first: the plain loop inherits it, the gate sets its own
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(args.realtime))
        except (AttributeError, OSError) as error:
            raise SystemExit(f"--realtime: SCHED_FIFO not granted ({error})") from error
    if args.cpu_latency is None:
        return _measure(args)
    try:  # system-wide: the simulator and the plain loop get it too
        limit = CpuLatencyLimit(args.cpu_latency)
    except (OSError, ValueError) as error:
        raise SystemExit(f"--cpu-latency: not granted ({error})") from error
    with limit:
        return _measure(args)


def _measure(args: argparse.Namespace) -> int:
    steal_before = steal_ms()
    result = run_loop(args.taps, args.baud, twin=args.twin, realtime=args.realtime,
                      cpu_latency_us=args.cpu_latency)
    samples = result.pop("samples_ms")
    result["realtime_priority"] = args.realtime
    result["cpu_latency_us"] = args.cpu_latency
    # what the kernel applied over the run: the lowest limit any process holds (None: unreadable)
    result["cpu_latency_limit_in_force_us"] = current_cpu_latency_limit()
    if not args.no_baseline:  # same run, same machine load: the plain loop over the same simulator
        base = run_loop(args.taps, args.baud, plain=True)
        result["baseline_plain_loop"] = {k: base[k] for k in (
            "tap_to_open_ms_p50", "tap_to_open_ms_p99", "host_overhead_ms_p50", "host_overhead_ms_p95",
            "host_overhead_ms_p99")}
        result["gate_above_plain_loop_ms_p50"] = round(
            result["tap_to_open_ms_p50"] - base["tap_to_open_ms_p50"], 3)
        result["gate_above_plain_loop_ms_p99"] = round(
            result["tap_to_open_ms_p99"] - base["tap_to_open_ms_p99"], 3)
    steal_after = steal_ms()
    if steal_before is not None and steal_after is not None:  # a VM's host took this from the run
        result["machine_steal_ms"] = round(steal_after - steal_before, 1)
    if args.plot:
        write_svg_histogram(args.plot, samples, result["wire_floor_ms"] + result["device_rf_ms"],
                            f"tap to open, {result['taps']} taps at {result['baud']} baud ({result['core']})")
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:28} {value}")
    return 0


if __name__ == "__main__":  # the plain-loop baseline's process: --plain URL BAUD KEY TAPS
    if len(sys.argv) == 6 and sys.argv[1] == "--plain":
        plain_loop(sys.argv[2], int(sys.argv[3]), bytes.fromhex(sys.argv[4]), int(sys.argv[5]))
