"""`faregate soak`: commuters ride through real gates while every fault the simulator and the system
can inject happens at random; at the end the money must add up (Jepsen's bank test for fare gates).

What runs: the embedded amqtt broker and the backend, each in a process of its own (killed and
restarted as faults), one firmware_sim reader and barrier per gate on a real pty, and each gate's
controller in a process of its own (killed with SIGKILL, or restarted with its clock off, as
faults). Commuters enter at one station and leave at another. The faults, drawn at random with
`--seed` from a deck that holds every kind (so a short run still meets each one):

- torn_write: the phone pulled away while it is read, or when k of the slot's 64 bytes have
  landed, or after all landed but before the verify ended;
- power_cut_before_land / power_cut_after_land: the reader's power cut mid-write (k bytes landed),
  or once the write landed (before, or just after, its answer); gate_power_cut: the whole gate's,
  reader and controller (SIGKILL) at the same instant of a write;
- two_phones, line_fault (bit flips, drops, noise on the serial line), reader_hang, unplug;
- gate_kill (SIGKILL, half of them at a chosen phase of a wallet write), clock_jump (a gate
  restarted with its clock an hour or a day off), backend_down (SIGKILL), broker_restart;
- clone: a second handset with a copy of a wallet under the same card id, which then rides too.

Then a quiet phase: every process is up again, every phone whose write a fault left unsettled taps
once more, every gate reports, and faregate/soak_checks.py checks the invariants. The exit code is 1
if any invariant has a mismatch.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from backend.config import Settings
from backend.db import make_engine, make_sessionmaker
from backend.deploy.accounts import BrokerAccounts
from backend.payments import SimulatedProvider
from backend.tables import TapRow
from fare_core import Flag
from fare_core import rules as fare_rules
from faregate.demo import EXAMPLE
from faregate.soak_checks import INVARIANTS, Report, Truth, check, read_journal, read_truth
from faregate.soak_procs import BackendProcess, BrokerProcess, GateProcess, ProcessGroup, service_port
from faregate.station import GateSpec, SimStation
from firmware_sim.config import BarrierConfig, DeviceConfig
from firmware_sim.faults import FaultKind
from firmware_sim.population import Phone, Population
from firmware_sim.reader import ANSWERED, WRITTEN
from firmware_sim.sim import Presentation, Sim
from protocol.mqtt import gate_id
from protocol.mqtt.auth import public_key_of
from protocol.serial import Direction

log = logging.getLogger("faregate.soak")

FAULTS = ("torn_write", "power_cut_before_land", "power_cut_after_land", "gate_power_cut", "two_phones",
          "line_fault", "reader_hang", "unplug", "gate_kill", "clock_jump", "backend_down", "broker_restart",
          "clone")
CLOCK_OFFSETS_S = (-86_400.0, -3_600.0, -600.0, 3_600.0, 7_200.0)
PRESENT_TIMEOUT_S = 20.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=60.0,
                        help="seconds of traffic and faults before the quiet phase (default 60)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument("--seed", type=int, default=1, help="seed of the commuters and the faults")
    parser.add_argument("--stations", type=int, default=2, help="stations (default 2)")
    parser.add_argument("--gates", type=int, default=1, help="entry gates and as many exit gates per station")
    parser.add_argument("--riders", type=int, default=40, help="commuters (default 40)")
    parser.add_argument("--rate", type=float, default=3.0, help="taps started per second (default 3)")
    parser.add_argument("--fault-rate", type=float, default=0.4,
                        help="faults started per second (default 0.4)")
    parser.add_argument("--skip", default="", metavar="KINDS",
                        help=f"fault kinds to leave out, comma-separated ({', '.join(FAULTS)})")
    parser.add_argument("--database", help="database URL (default: SQLite in the data directory)")
    parser.add_argument("--data-dir", type=Path, help="keep the database, journals and logs here")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger().handlers[0].setLevel(logging.WARNING)
    logging.getLogger("transitions").setLevel(logging.ERROR)
    # amqtt logs its own races as errors when a client goes mid-delivery (which the soak makes happen
    # on purpose); the gates resend what was not acknowledged, and the invariants are the verdict
    logging.getLogger("amqtt").setLevel(logging.CRITICAL)
    if args.duration <= 0 or args.stations < 2 or args.gates < 1 or args.riders < 4 or args.rate <= 0:
        raise SystemExit("need --duration > 0, --stations >= 2, --gates >= 1, --riders >= 4, --rate > 0")
    unknown = {k for k in args.skip.split(",") if k} - set(FAULTS)
    if unknown:
        raise SystemExit(f"--skip: no fault kind {', '.join(sorted(unknown))}")
    result = asyncio.run(Soak(args).run())
    print(json.dumps(result) if args.json else human(result), flush=True)
    return 0 if result["ok"] else 1


def human(result: dict[str, Any]) -> str:
    lines = [f"faregate soak: {result['duration_s']:.0f} s of faults, seed {result['seed']}, "
             f"{result['gates']} gates, {result['cards']} cards, {result['taps']} taps presented, "
             f"{result['details'].get('taps_stored', 0)} stored", "faults injected:"]
    lines += [f"  {kind:24} {n}" for kind, n in result["faults"].items()]
    lines.append("invariants (mismatches; all must be 0):")
    for name, n in result["invariants"].items():
        lines.append(f"  {name:24} {'not checked' if n is None else n}")
    for card, why in result["details"].get("excluded_from_card_checks", {}).items():
        lines.append(f"  card {card} left out of the per-card checks: {why}")
    details = result["details"]
    lines.append(f"air top-ups confirmed: {result['topups']} ({result['topups_fen']} fen)")
    lines.append(f"paths taken: {details.get('unconfirmed_taps', 0)} unconfirmed taps, "
                 f"{details.get('recovered_taps', 0)} recovered, alarms {details.get('alarms', {})}")
    lines.append("OK: every fen accounted for" if result["ok"] else
                 "FAILED: " + json.dumps({k: v for k, v in result["details"].items() if v}, default=str))
    return "\n".join(lines)


@dataclass(eq=False)
class Rider:
    card_id: int
    handset: int = 0
    inside: int | None = None  # the station whose paid area the commuter is in
    refused: int = 0  # refusals in a row (after two the commuter turns round)
    busy: bool = False


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.stopping = asyncio.Event()
        self.faults: Counter[str] = Counter()
        self.phases: Counter[str] = Counter()
        self.taps = 0
        self.riders: list[Rider] = []
        self.start_of: dict[tuple[int, int], tuple[int, int]] = {}  # (card, handset) -> balance, counter
        self.suspects: dict[tuple[int, int], int] = {}  # (card, handset) -> the gate of its unsettled tap
        self.tasks: set[asyncio.Task[Any]] = set()
        self.owed: list[str] = []  # fault kinds drawn that could not happen, drawn again first
        self.undrained = 0  # quiet-phase drains that timed out
        self.topups: list[int] = []  # fen of each air top-up the (simulated) provider confirmed
        self.topped: set[int] = set()  # cards topped up: never cloned (a clone could take the top-up)
        self.token = ""  # the operator's bearer token
        self.group = ProcessGroup()
        self.sim: Sim | None = None
        self.specs: list[GateSpec] = []
        self.gates: list[GateProcess] = []
        self.gate_locks: list[asyncio.Lock] = []  # one commuter (or fault) at a reader at a time
        self.process_locks: list[asyncio.Lock] = []  # one kill / restart of a gate at a time
        self.backend: BackendProcess | None = None
        self.broker: BrokerProcess | None = None
        self.service_lock = asyncio.Lock()  # one backend or broker outage at a time

    # ------------------------------------------------------------------ the run
    async def run(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.set_exception_handler(_broker_noise_ignored)
        with contextlib.ExitStack() as cleanup:
            data_dir = self.args.data_dir
            if data_dir is None:
                data_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="faregate-soak-")))
            data_dir.mkdir(parents=True, exist_ok=True)
            trail = logging.FileHandler(data_dir / "soak.log")  # every fault and step, for a post-mortem
            trail.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            log.addHandler(trail)
            log.setLevel(logging.INFO)  # the trail gets every step; the console only warnings
            try:
                return await self._run(data_dir)
            finally:
                await self._teardown()
                log.removeHandler(trail)
                trail.close()

    async def _teardown(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.group.aclose()
        if self.sim is not None:
            sim, self.sim = self.sim, None
            with contextlib.suppress(RuntimeError):  # an error a timed action hit is not the soak's verdict
                await asyncio.to_thread(sim.close)

    async def _run(self, data_dir: Path) -> dict[str, Any]:
        args = self.args
        rules_text = EXAMPLE.read_text(encoding="utf-8")
        stations = interchange_stations(fare_rules.parse_rules(rules_text, "toml"), args.stations)
        entries, exits = range(1, args.gates + 1), range(args.gates + 1, 2 * args.gates + 1)
        self.specs = [GateSpec(s, g, d) for s in stations
                      for d, gates in (("entry", entries), ("exit", exits)) for g in gates]
        prefix = f"soak{uuid.uuid4().hex[:6]}"
        accounts = BrokerAccounts.generate([gate_id(s.station_id, s.gate_no) for s in self.specs])
        self.broker = BrokerProcess(self.group, service_port(), accounts, prefix, data_dir)
        await self.broker.start()
        settings = Settings(
            environment="development",
            database_url=args.database or f"sqlite+aiosqlite:///{data_dir / 'soak.db'}",
            mqtt_url=self.broker.url, mqtt_version="3.1.1", ingest_group="", mqtt_prefix=prefix,
            ingest_client_id=f"soak-ingest-{uuid.uuid4().hex[:6]}", ingest_batch_wait_ms=20,
            mqtt_username=accounts.backend_user, mqtt_password=accounts.backend_password)
        self.backend = BackendProcess(self.group, settings, service_port(), data_dir / "backend.log")
        await self.backend.start()
        token = self.token = await self.backend.wait_ready()
        async with httpx.AsyncClient(base_url=self.backend.base_url, timeout=30,
                                     headers={"Authorization": f"Bearer {token}"}) as client:
            published = await client.post("/fare-tables", json={"rules": rules_text, "format": "toml"})
            published.raise_for_status()
            artefact = await client.get(f"/fare-tables/{published.json()['version']}/artefact")
            artefact.raise_for_status()
        population = self._population()
        device = DeviceConfig(barrier=BarrierConfig(travel_ms=300, passage_ms=600))
        station = SimStation(data_dir / "gates", self.specs, population, artefact.content, device=device,
                             mqtt_url=self.broker.url, prefix=prefix, passwords=accounts.passwords,
                             uplink_master_key=bytes.fromhex(settings.uplink_master_key),
                             backend_keys=[public_key_of(bytes.fromhex(settings.downlink_signing_key))])
        self.sim = Sim(device, population, gates=len(self.specs),
                       links=[data_dir / f"reader-{i}" for i in range(len(self.specs))]).start()
        station.sim = self.sim
        for index, spec in enumerate(self.specs):
            gid = gate_id(spec.station_id, spec.gate_no)
            self.gates.append(GateProcess(self.group, station.prepare(index), self.sim.url(index),
                                          data_dir / f"gate-{gid}.log"))
            self.gate_locks.append(asyncio.Lock())
            self.process_locks.append(asyncio.Lock())
        await asyncio.gather(*(self._start_gate(i) for i in range(len(self.gates))))
        if not self.args.json:
            print(f"faregate soak: {len(stations)} stations, {len(self.specs)} gates, {len(self.riders)} "
                  f"commuters, {args.duration:.0f} s of faults, seed {args.seed}; data in {data_dir}",
                  flush=True)

        started = time.monotonic()
        traffic = self._spawn(self._traffic())
        faults = self._spawn(self._faults())
        topups = self._spawn(self._topups(settings))
        while not self.stopping.is_set() and time.monotonic() - started < args.duration:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(10.0, args.duration - (time.monotonic() - started))):
                    await self.stopping.wait()
            if not args.json:
                print(f"[{time.monotonic() - started:5.0f} s] taps {self.taps:6d}  faults "
                      f"{sum(self.faults.values()):5d}  gates up {sum(g.alive for g in self.gates)}"
                      f"/{len(self.gates)}", flush=True)
        self.stopping.set()
        duration = time.monotonic() - started
        for task in (traffic, faults, topups):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._quiet(settings)
        report = await self._check(settings)
        return {
            "ok": report.ok, "seed": args.seed, "duration_s": round(duration, 1),
            "wall_s": round(time.monotonic() - started, 1), "gates": len(self.specs),
            "cards": len(population), "handsets": len(self.start_of), "taps": self.taps,
            "faults": {kind: self.faults[kind] for kind in FAULTS},
            "topups": len(self.topups), "topups_fen": sum(self.topups),
            "fault_phases": dict(sorted(self.phases.items())),
            "invariants": {name: report.invariants.get(name) for name in INVARIANTS},
            "details": {**report.details, "quiet_phase_drained": self.undrained == 0},
        }

    def _population(self) -> Population:
        phones: list[Phone] = []
        seen: set[int] = set()
        while len(phones) < self.args.riders:
            card = self.rng.getrandbits(64)
            if card in seen:
                continue
            seen.add(card)
            category = self.rng.choices((0, 1, 2, 3), (0.8, 0.1, 0.07, 0.03))[0]
            phones.append(Phone(card, category=category, balance=self.rng.randrange(20_000, 60_000)))
        for phone in phones:
            self.riders.append(Rider(phone.card_id))
            self.start_of[phone.card_id, 0] = (phone.balance, 0)
        return Population(phones)

    def _spawn(self, coroutine: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # ------------------------------------------------------------------ gates
    async def _start_gate(self, index: int, clock_offset_s: float | None = None) -> None:
        assert self.sim is not None
        device = self.sim.gate(index)
        since = device.clock()
        await self.gates[index].start(clock_offset_s)
        deadline = time.monotonic() + 60
        while not device.records("rx", since):  # the new controller has spoken to its reader
            if not self.gates[index].alive:
                raise RuntimeError(f"gate {index} exited at start; see {self.gates[index].log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"gate {index} did not open its reader; see {self.gates[index].log}")
            await asyncio.sleep(0.05)

    def _gate_for(self, rider: Rider) -> int | None:
        """A free gate in the rider's direction: an entry gate outside, an exit gate at another station
        inside (the rider's own station when it is the only one free)."""
        want = "entry" if rider.inside is None else "exit"
        free = [i for i, s in enumerate(self.specs)
                if s.direction == want and not self.gate_locks[i].locked()]
        elsewhere = [i for i in free if self.specs[i].station_id != rider.inside]
        choices = elsewhere or free
        return self.rng.choice(choices) if choices else None

    def _idle_rider(self, *, genuine: bool = False) -> Rider | None:
        idle = [r for r in self.riders if not r.busy and (r.handset == 0 or not genuine)]
        return self.rng.choice(idle) if idle else None

    async def _present(self, rider: Rider, gate: int, **kwargs: Any) -> Presentation | None:
        """The rider taps at `gate` (whose lock the caller holds) and walks on; None if the sim is gone."""
        assert self.sim is not None
        spec = self.specs[gate]
        direction = Direction.ENTRY if spec.direction == "entry" else Direction.EXIT
        kwargs.setdefault("patience_s", 4.0)
        presentation = self.sim.present(rider.card_id, gate, direction=direction, handset=rider.handset,
                                        **kwargs)
        self.taps += 1
        deadline = time.monotonic() + PRESENT_TIMEOUT_S
        while not presentation.done.is_set():
            if time.monotonic() > deadline:
                log.warning("commuter %016x still at gate %d", rider.card_id, gate)
                return presentation
            await asyncio.sleep(0.02)
        if presentation.passed_at is not None:
            rider.inside = spec.station_id if direction == Direction.ENTRY else None
            rider.refused = 0
        elif kwargs.get("walk", True):
            rider.refused += 1
            if rider.refused >= 2:  # refused twice: the commuter turns round (the wallet may say otherwise)
                rider.inside = None if rider.inside is not None else spec.station_id
                rider.refused = 0
        return presentation

    async def _ride(self, rider: Rider, gate: int, prepare: Callable[[], Any] | None = None,
                    **kwargs: Any) -> tuple[Presentation | None, Any]:
        """Hold the gate and the rider for one tap; `prepare` arms a fault first (its result returned)."""
        rider.busy = True
        try:
            async with self.gate_locks[gate]:
                armed = prepare() if prepare is not None else None
                presentation = await self._present(rider, gate, **kwargs)
                if armed is not None and self.sim is not None:
                    self.sim.disarm(gate, rider.card_id)  # a write that never came (a refusal)
                return presentation, armed
        finally:
            rider.busy = False

    # ------------------------------------------------------------------ traffic
    async def _traffic(self) -> None:
        while not self.stopping.is_set():
            await asyncio.sleep(self.rng.expovariate(self.args.rate))
            rider = self._idle_rider()
            if rider is None:
                continue
            gate = self._gate_for(rider)
            if gate is not None:
                rider.busy = True  # taken now, not when the task first runs
                self._spawn(self._ride(rider, gate))

    async def _topups(self, settings: Settings) -> None:
        """Now and then a commuter tops up over the air (payment intent, then the provider's signed
        confirmation): money comes in, and reaches the wallet at the phone's next tap, through every
        fault. A top-up the backend cannot take now (it is down) is simply not made."""
        assert self.backend is not None
        provider = SimulatedProvider(settings.payment_webhook_secret)
        async with httpx.AsyncClient(base_url=self.backend.base_url, timeout=10) as client:
            while not self.stopping.is_set():
                await asyncio.sleep(self.rng.uniform(2.0, 6.0))
                cloned = {r.card_id for r in self.riders if r.handset > 0}
                riders = [r for r in self.riders if r.card_id not in cloned]
                if self.stopping.is_set() or not riders:
                    return
                card, amount = self.rng.choice(riders).card_id, self.rng.choice((1000, 2000, 5000))
                self.topped.add(card)
                try:
                    issued = await client.post(f"/phones/{card:016x}/commuter-token",
                                               headers={"Authorization": f"Bearer {self.token}"})
                    issued.raise_for_status()
                    intent = await client.post("/me/topup", json={"amount": amount}, headers={
                        "Authorization": f"Bearer {issued.json()['token']}"})
                    if intent.status_code != 201:  # over the daily bound
                        continue
                    body, headers = provider.confirmation(intent.json()["reference"], amount)
                    confirmed = await client.post("/payments/confirmations", content=body, headers=headers)
                except (httpx.HTTPError, KeyError) as error:  # the backend is down or restarting
                    log.info("top-up not made: %r", error)
                    continue
                if confirmed.status_code == 200 and confirmed.json().get("credited"):
                    self.topups.append(amount)
                    log.info("top-up of %d fen for %016x", amount, card)

    # ------------------------------------------------------------------ faults
    async def _faults(self) -> None:
        """Draw from a shuffled deck of every kind; a fault that could not happen (no free gate, a tap
        refused before its write) is owed and drawn again soon."""
        deck: list[str] = []
        while not self.stopping.is_set():
            await asyncio.sleep(self.rng.expovariate(self.args.fault_rate))
            if self.stopping.is_set():
                return
            if not deck:
                deck = [k for k in FAULTS if k not in self.args.skip.split(",")]
                self.rng.shuffle(deck)
                if not deck:
                    return  # every kind skipped: commuters only
            # an owed kind every other draw: one that cannot happen for a while must not starve the deck
            kind = self.owed.pop(0) if self.owed and self.rng.random() < 0.5 else deck.pop()
            self._spawn(self._fault(kind))

    async def _fault(self, kind: str) -> None:
        log.info("fault %s: start", kind)
        try:
            happened = await getattr(self, f"_fault_{kind}")()
        except Exception:
            log.exception("fault %s failed", kind)
            raise
        log.info("fault %s: %s", kind, "done" if happened else "did not happen, owed")
        if not happened:
            self.owed.append(kind)

    def _rider_and_gate(self) -> tuple[Rider, int] | None:
        for _ in range(20):
            rider = self._idle_rider()
            gate = self._gate_for(rider) if rider is not None else None
            if rider is not None and gate is not None:
                return rider, gate
        return None

    async def _write_fault(self, kind: str, fault: str, phase: int, label: str, **kwargs: Any) -> bool:
        """A rider taps; `fault` ("pull" or "power") strikes at `phase` of the wallet write."""
        picked = self._rider_and_gate()
        if picked is None:
            return False
        rider, gate = picked
        assert self.sim is not None
        sim = self.sim
        _, happened = await self._ride(
            rider, gate, lambda: sim.during_write(gate, rider.card_id, phase, fault, **kwargs))
        if happened is not None and happened.is_set():
            self.faults[kind] += 1
            self.phases[f"{kind}:{label}"] += 1
            self.suspects[rider.card_id, rider.handset] = gate
            return True
        return False

    async def _fault_torn_write(self) -> bool:
        roll = self.rng.random()
        if roll < 0.15:  # pulled away while the wallet is read: nothing written, nothing charged
            picked = self._rider_and_gate()
            if picked is not None:
                await self._ride(*picked, dwell_s=self.rng.uniform(0.005, 0.04))
                self.faults["torn_write"] += 1
                self.phases["torn_write:read"] += 1
            return picked is not None
        phase = WRITTEN if roll < 0.35 else self.rng.randrange(64)
        return await self._write_fault("torn_write", "pull", phase, _label(phase))

    async def _fault_power_cut_before_land(self) -> bool:
        phase = self.rng.randrange(64)
        return await self._write_fault("power_cut_before_land", "power", phase, _label(phase),
                                down_s=self.rng.uniform(0.3, 2.0))

    async def _fault_power_cut_after_land(self) -> bool:
        phase = self.rng.choice((WRITTEN, ANSWERED))
        return await self._write_fault("power_cut_after_land", "power", phase, _label(phase),
                                down_s=self.rng.uniform(0.3, 2.0))

    async def _fault_two_phones(self) -> bool:
        first = self._idle_rider(genuine=True)
        if first is None:
            return False
        gate = self._gate_for(first)
        others = [r for r in self.riders if not r.busy and r is not first and r.card_id != first.card_id
                  and (r.inside is None) == (first.inside is None)]
        if gate is None or not others:
            return False
        second = self.rng.choice(others)
        first.busy = second.busy = True
        try:
            async with self.gate_locks[gate]:
                await asyncio.gather(self._present(first, gate, walk=False, dwell_s=1.0),
                                     self._present(second, gate, walk=False, dwell_s=1.0))
            self.faults["two_phones"] += 1
        finally:
            first.busy = second.busy = False
        return True

    async def _fault_line_fault(self) -> bool:
        assert self.sim is not None
        gate = self.rng.randrange(len(self.specs))
        kind = self.rng.choice(list(FaultKind))
        self.sim.inject(gate, kind, self.rng.choice(("to_gate", "to_device")), self.rng.randint(1, 3))
        self.faults["line_fault"] += 1
        self.phases[f"line_fault:{kind.value}"] += 1
        return True

    async def _fault_reader_hang(self) -> bool:
        assert self.sim is not None
        self.sim.hang(self.rng.randrange(len(self.specs)), self.rng.uniform(0.3, 1.5))
        self.faults["reader_hang"] += 1
        return True

    async def _fault_unplug(self) -> bool:
        assert self.sim is not None
        self.sim.unplug(self.rng.randrange(len(self.specs)), self.rng.uniform(0.3, 1.5))
        self.faults["unplug"] += 1
        return True

    async def _fault_gate_kill(self) -> bool:
        """SIGKILL a gate's controller: half the time at a chosen phase of a wallet write."""
        assert self.sim is not None
        sim = self.sim
        gate = self.rng.randrange(len(self.specs))
        async with self.process_locks[gate]:
            process = self.gates[gate]
            if not process.alive:
                return False
            pid = process.pid
            aimed = False
            if self.rng.random() < 0.5:
                rider = self._idle_rider()
                phase = self.rng.randrange(ANSWERED + 1)

                def kill() -> None:
                    if pid is not None:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)

                if rider is not None and not self.gate_locks[gate].locked():
                    _, happened = await self._ride(rider, gate, lambda: sim.during_write(
                        gate, rider.card_id, phase, "call", action=kill))
                    aimed = happened is not None and happened.is_set()
                    if aimed:
                        self.phases[f"gate_kill:{_label(phase)}"] += 1
                        self.suspects[rider.card_id, rider.handset] = gate
            if not aimed:
                self.phases["gate_kill:any_time"] += 1
                self._suspect_active(gate)
            await process.kill()
            self.faults["gate_kill"] += 1
            await asyncio.sleep(self.rng.uniform(0.5, 3.0))
            await self._start_gate(gate)
        return True

    async def _fault_gate_power_cut(self) -> bool:
        """The whole gate loses power at a phase of a wallet write: the reader stops where it stands
        (the write torn at k bytes, or landed) and the controller dies with it, its journal holding
        what it had committed."""
        assert self.sim is not None
        sim = self.sim
        picked = self._rider_and_gate()
        if picked is None:
            return False
        rider, gate = picked
        async with self.process_locks[gate]:
            process = self.gates[gate]
            pid = process.pid
            if pid is None:
                return False
            phase = self.rng.randrange(ANSWERED + 1)
            down_s = self.rng.uniform(0.5, 2.0)

            def blackout() -> None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                sim.gate(gate).cut_power(down_s)

            _, happened = await self._ride(rider, gate, lambda: sim.during_write(
                gate, rider.card_id, phase, "call", action=blackout))
            if happened is None or not happened.is_set():
                return False
            self.faults["gate_power_cut"] += 1
            self.phases[f"gate_power_cut:{_label(phase)}"] += 1
            self.suspects[rider.card_id, rider.handset] = gate
            await process.kill()  # reaped
            await asyncio.sleep(down_s)
            await self._start_gate(gate)
        return True

    async def _fault_clock_jump(self) -> bool:
        gate = self.rng.randrange(len(self.specs))
        async with self.process_locks[gate]:
            process = self.gates[gate]
            offset = self.rng.choice([o for o in (*CLOCK_OFFSETS_S, 0.0) if o != process.clock_offset_s])
            self._suspect_active(gate)
            await process.stop()
            await self._start_gate(gate, offset)
            self.faults["clock_jump"] += 1
            self.phases[f"clock_jump:{offset:+.0f}s"] += 1
        return True

    async def _fault_backend_down(self) -> bool:
        assert self.backend is not None
        async with self.service_lock:
            await self.backend.kill()
            self.faults["backend_down"] += 1
            await asyncio.sleep(self.rng.uniform(2.0, 6.0))
            await self.backend.start()
            await self.backend.wait_ready()
        return True

    async def _fault_broker_restart(self) -> bool:
        assert self.broker is not None
        async with self.service_lock:
            await self.broker.kill()
            self.faults["broker_restart"] += 1
            await asyncio.sleep(self.rng.uniform(0.5, 3.0))
            await self.broker.start()
        return True

    async def _fault_clone(self) -> bool:
        """A second handset with a copy of a wallet under the same card id; it rides from now on."""
        assert self.sim is not None
        cloned = {r.card_id for r in self.riders if r.handset > 0}
        if len(cloned) >= max(1, len(self.riders) // 20):
            return True  # enough clones about
        rider = self._idle_rider(genuine=True)
        if rider is None or rider.card_id in cloned or rider.card_id in self.topped:
            return False
        rider.busy = True
        try:
            handset = self.sim.clone(rider.card_id)
            record = self.sim.record(rider.card_id, handset)
        finally:
            rider.busy = False
        self.start_of[rider.card_id, handset] = (int(record.balance), int(record.counter))
        self.riders.append(Rider(rider.card_id, handset, inside=rider.inside))
        self.faults["clone"] += 1
        return True

    def _suspect_active(self, gate: int) -> None:
        """Phones at a gate when its controller goes: their tap may be left unsettled."""
        assert self.sim is not None
        for presentation in self.sim.at_gate(gate):
            self.suspects[presentation.card_id, presentation.handset] = gate

    # ------------------------------------------------------------------ quiet phase and checks
    async def _quiet(self, settings: Settings) -> None:
        """No more faults: every part up, unsettled writes settled by a tap, every gate reported."""
        pending = [t for t in self.tasks if not t.done()]
        log.info("quiet: waiting for %d taps and faults under way", len(pending))
        await asyncio.gather(*pending, return_exceptions=True)
        log.info("quiet: every part up again")
        assert self.broker is not None and self.backend is not None and self.sim is not None
        await self.broker.start()
        if self.backend.process is None or self.backend.process.returncode is not None:
            await self.backend.start()
        await self.backend.wait_ready()
        for index, process in enumerate(self.gates):
            self.sim.disarm(index)
            if not process.alive:
                await self._start_gate(index)
        log.info("quiet: draining the gates")
        if not await self._drain(settings):
            return  # the backend is not taking the gates' taps: settling taps would not be heard either
        log.info("quiet: settling taps")
        for card, gate in (await self._unconfirmed_cards(settings)).items():
            for rider in self.riders:
                if rider.card_id == card:
                    self.suspects.setdefault((card, rider.handset), gate)
        await self._settle()
        log.info("quiet: draining the settling taps")
        await self._drain(settings)
        log.info("quiet: done")

    async def _settle(self) -> None:
        """Every phone with an unsettled write taps once more, at the gate of that tap if known."""
        by_gate: dict[int, list[Rider]] = {}
        for rider in self.riders:
            gate = self.suspects.get((rider.card_id, rider.handset))
            if gate is None:
                continue
            if gate < 0:
                gate = self._gate_for(rider) or 0
            by_gate.setdefault(gate, []).append(rider)

        async def one_gate(gate: int, riders: list[Rider]) -> None:
            for rider in riders:
                await self._ride(rider, gate)

        await asyncio.gather(*(one_gate(g, rs) for g, rs in by_gate.items()))
        self.phases["quiet:settling_taps"] = sum(len(rs) for rs in by_gate.values())

    async def _unconfirmed_cards(self, settings: Settings) -> dict[int, int]:
        """Cards with an unconfirmed write -> the gate (index) of their latest one, where the rider taps
        again, as a rider whose barrier stayed shut does: that gate's own seq orders the new tap after
        the write, while a read at another gate is ordered by two gates' clocks (which the soak turns
        wrong on purpose: such a read cannot settle the write, docs/ledger.md)."""
        index = {gate_id(spec.station_id, spec.gate_no): i for i, spec in enumerate(self.specs)}
        engine = make_engine(settings)
        try:
            async with engine.connect() as db:
                rows = await db.execute(select(TapRow.card_id, TapRow.gate_id).where(
                    TapRow.flags.bitwise_and(int(Flag.UNCONFIRMED)) != 0).order_by(TapRow.received_at))
                return {int(card, 16): index.get(gate, -1) for card, gate in rows.all()}
        finally:
            await engine.dispose()

    async def _drain(self, settings: Settings, timeout: float = 60.0) -> bool:
        """Until every gate's journal is acknowledged and the backend has processed every tap; False
        if that did not happen within `timeout` (the checks then say what is missing)."""
        deadline = time.monotonic() + timeout
        while True:
            acked = all(committed >= last for last, committed in
                        (read_journal(g.config.data_dir / "journal.db") for g in self.gates))
            if acked and await self._processed(settings):
                return True
            if time.monotonic() > deadline:
                log.warning("the gates did not all report within %.0f s", timeout)
                self.undrained += 1
                return False
            await asyncio.sleep(0.5)

    async def _processed(self, settings: Settings) -> bool:
        engine = make_engine(settings)
        try:
            async with engine.connect() as db:
                waiting = (await db.execute(select(func.count()).select_from(TapRow).where(
                    TapRow.reconciled.is_(None)))).scalar_one()
        finally:
            await engine.dispose()
        return int(waiting) == 0

    async def _check(self, settings: Settings) -> Report:
        await asyncio.gather(*(g.stop() for g in self.gates))
        journals = {}
        for spec, process in zip(self.specs, self.gates, strict=True):
            path = process.config.data_dir / "journal.db"
            journals[gate_id(spec.station_id, spec.gate_no)] = read_journal(path)
        assert self.sim is not None
        with self.sim.lock:
            truth = Truth(read_truth(self.sim.wallets, self.start_of), journals)
        engine = make_engine(settings)
        try:
            async with make_sessionmaker(engine)() as session:
                return await check(session, truth)
        finally:
            await engine.dispose()


def _broker_noise_ignored(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """amqtt's own broadcast task can fail while a client disconnects mid-delivery (its subscriptions
    change under it) and nobody awaits it; the clients resend what was not acknowledged, so that is
    logged quietly, and everything else as asyncio would."""
    error = context.get("exception")
    trace = error.__traceback__ if isinstance(error, BaseException) else None
    while trace is not None:
        if "/amqtt/" in trace.tb_frame.f_code.co_filename:
            log.debug("amqtt: %r", error)
            return
        trace = trace.tb_next
    loop.default_exception_handler(context)


def _label(phase: int) -> str:
    if phase == WRITTEN:
        return "after_land_before_answer"
    if phase == ANSWERED:
        return "after_answer"
    return "bytes_0" if phase == 0 else "bytes_63" if phase == 63 else "bytes_1_62"


def interchange_stations(rules: Any, count: int) -> list[int]:
    """The busiest metro stations (most lines) first, as many as asked."""
    metro = sorted((s for s in rules.stations if s.network == "metro"), key=lambda s: -len(s.lines))
    return [s.id for s in metro[:count]]
