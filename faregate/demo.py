"""`faregate demo`: a whole network on one machine — broker, backend, stations of gates, commuters.

Everything is the real thing: the embedded amqtt broker (or --mqtt), the backend (ingest, processor,
REST API) on SQLite (or --database), one firmware_sim device per gate on its own pseudo-terminal,
each driven by a real gate controller with its own journal. The operator's side goes through the
REST API as an operator would: log in, publish the Guangzhou example fare rules (the gates adopt the
table over MQTT), block a few phones (the gates receive the deny-list delta).

Traffic is a morning rush: commuters enter at one station, ride, and leave at another; a share are
blocked phones, low balances, phones pulled away mid-write and two phones held together. At the end
(--duration, or Ctrl-C) the gates' journals drain to the backend, and the summary counts what the
database holds against what the gates journaled: lost must be 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import signal
import socket
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

import fare_core
from backend.audit import account_totals
from backend.broker import free_port
from backend.config import Settings
from backend.db import make_engine
from backend.deploy.accounts import BrokerAccounts
from backend.payments import SimulatedProvider
from backend.runtime import serve
from backend.tables import TapRow, TripRow
from fare_core import Flag, Reason
from fare_core import rules as fare_rules
from faregate.station import GateSpec, SimStation
from firmware_sim.config import BarrierConfig, DeviceConfig
from firmware_sim.population import Population
from protocol.mqtt import gate_id
from protocol.mqtt.auth import public_key_of
from protocol.serial import Direction

EXAMPLE = Path(fare_core.__file__).with_name("examples") / "guangzhou.toml"
API = "/api/v1"
log = logging.getLogger("faregate.demo")


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (default 60)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument("--mqtt", help="use this broker (mqtt://host:port) instead of the embedded one")
    parser.add_argument("--broker-credentials", type=Path, metavar="FILE",
                        help="`username password` lines for the backend (faregate-backend) and the gates "
                             "(default: fresh passwords for this run)")
    parser.add_argument("--database", help="database URL (default: SQLite in the data directory)")
    parser.add_argument("--stations", type=int, default=3, help="stations (default 3)")
    parser.add_argument("--gates", type=int, default=2, help="entry gates and as many exit gates per station")
    parser.add_argument("--riders", type=int, default=300, help="commuters (default 300)")
    parser.add_argument("--rate", type=float, default=4.0, help="entries per second, network-wide")
    parser.add_argument("--port", type=int, default=8000, help="API port (a free one if taken, or 0)")
    parser.add_argument("--data-dir", type=Path, help="where the database and gate journals go")
    parser.add_argument("--seed", type=int, default=1)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.duration <= 0 or args.stations < 2 or args.gates < 1 or args.riders < 1 or args.rate <= 0:
        raise SystemExit("need --duration > 0, --stations >= 2, --gates >= 1, --riders >= 1, --rate > 0")
    summary = asyncio.run(Demo(args).run())
    if args.json:
        print(json.dumps(summary))
    else:
        print(describe(summary))
    return 0 if summary["lost"] == 0 else 1


#: Gate outcomes of a phone in the field that never became a journaled tap (nothing was decided), by
#: the gate's metric label, named apart from the READ_FAILED reason of a journaled tap whose write failed.
NOT_JOURNALED = {"read_failed": "wallet_unreadable", "two_phones": "two_phones"}


def yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}¥{abs(fen) // 100}.{abs(fen) % 100:02d}"


@dataclass
class StoredCounts:
    """What the backend's database holds, by the queries both the progress lines and the summary use."""

    revenue: int
    suspense: int
    undelivered: int
    recovered: int
    trips: dict[str, int]
    allowed: dict[str, int] = field(default_factory=dict)  # reason name -> taps
    denied: dict[str, int] = field(default_factory=dict)

    @property
    def stored(self) -> int:
        return sum(self.allowed.values()) + sum(self.denied.values())


def describe(summary: dict[str, Any]) -> str:
    """The summary for a person: each term explained once, money in yuan (the JSON keeps fen)."""
    def counts(by_name: dict[str, int]) -> str:
        ordered = sorted(by_name.items(), key=lambda item: -item[1])
        return ", ".join(f"{name} {n}" for name, n in ordered) or "none"

    return "\n".join([
        "",
        "summary",
        f"  taps journaled {summary['journaled']:8d}  decisions the {summary['gates']} gates wrote to their "
        "journals before the barrier moved",
        f"  taps stored    {summary['taps']:8d}  of those, in the backend's database",
        f"  lost           {summary['lost']:8d}  journaled but not stored (must be 0)",
        f"    allowed      {summary['allowed']:8d}  {counts(summary['allowed_by_reason'])}",
        f"    denied       {summary['denied']:8d}  {counts(summary['denied_by_reason'])}",
        f"    recovered    {summary['recovered']:8d}  of the stored taps, re-taps that completed a write "
        "whose answer was lost",
        f"  not journaled  {sum(summary['not_journaled'].values()):8d}  phones in the field the gates could "
        f"not read, so nothing was decided: {counts(summary['not_journaled'])}",
        f"  trips          {summary['trips']:8d}  {counts(summary['trips_by_state'])}",
        f"  revenue        {yuan(summary['revenue_fen']):>8}  fares whose wallet write landed",
        f"  in suspense    {yuan(summary['suspense_fen']):>8}  writes not yet known to have landed",
        f"  on its way     {yuan(summary['undelivered_fen']):>8}  top-ups paid, not yet written to a phone",
        f"  air recharges  {summary['air_recharges']:8d}  {yuan(summary['air_recharged_fen'])} paid through "
        "the payment provider",
    ])


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.stop = asyncio.Event()
        self.presented: list[Any] = []  # every commuter sent to a gate
        self.recharged: list[int] = []  # fen of each air recharge the provider confirmed

    async def run(self) -> dict[str, Any]:
        args = self.args
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop.set)
        with contextlib.ExitStack() as cleanup:
            data_dir = args.data_dir
            if data_dir is None:
                data_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="faregate-demo-")))
            data_dir.mkdir(parents=True, exist_ok=True)
            async with contextlib.AsyncExitStack() as stack:
                return await self._run(stack, data_dir)

    async def _run(self, stack: contextlib.AsyncExitStack, data_dir: Path) -> dict[str, Any]:
        args = self.args
        rules_text = EXAMPLE.read_text(encoding="utf-8")
        stations = self._stations(fare_rules.parse_rules(rules_text, "toml"))
        specs = [GateSpec(s, g, "entry") for s in stations for g in range(1, args.gates + 1)] + [
            GateSpec(s, g, "exit") for s in stations for g in range(args.gates + 1, 2 * args.gates + 1)]
        prefix = f"demo{uuid.uuid4().hex[:6]}"
        # every client logs in: the backend as itself, each gate as its gate id (the ACL's username)
        gates = [gate_id(s.station_id, s.gate_no) for s in specs]
        accounts: BrokerAccounts | None = None
        if args.broker_credentials:
            accounts = BrokerAccounts.read(args.broker_credentials)
        elif not args.mqtt:
            accounts = BrokerAccounts.generate(gates)
            accounts.write(data_dir / "broker-credentials")
        login: dict[str, Any] = {}
        if accounts is not None:
            missing = [g for g in gates if g not in accounts.passwords]
            if missing and args.mqtt:
                raise SystemExit(f"{args.broker_credentials} has no password for gates {', '.join(missing)}")
            accounts = accounts.with_gates(missing)
            login = {"mqtt_username": accounts.backend_user, "mqtt_password": accounts.backend_password}
        if args.mqtt:
            mqtt_url, version, group = args.mqtt, "5", f"demo{uuid.uuid4().hex[:6]}"
        else:
            from backend.broker import embedded_broker

            mqtt_url = await stack.enter_async_context(embedded_broker(None, accounts, prefix))
            version, group = "3.1.1", ""
        database = args.database or f"sqlite+aiosqlite:///{data_dir / 'faregate.db'}"
        settings = Settings(environment="development", database_url=database, mqtt_url=mqtt_url,
                            mqtt_version=version, ingest_group=group, mqtt_prefix=prefix,  # type: ignore[arg-type]
                            ingest_client_id=f"demo-ingest-{uuid.uuid4().hex[:6]}", ingest_batch_wait_ms=20,
                            **login)
        port = args.port if args.port and port_free(args.port) else free_port()  # 0: any free port
        backend_stop = asyncio.Event()
        backend = asyncio.create_task(serve(settings, api=True, ingest=True, port=port, stop=backend_stop,
                                            install_signals=False))

        async def stop_backend() -> None:
            backend_stop.set()
            async with asyncio.timeout(30):
                await backend

        stack.push_async_callback(stop_backend)
        base = f"http://127.0.0.1:{port}"
        client = await stack.enter_async_context(httpx.AsyncClient(base_url=base + API, timeout=30))
        token = await self._login(client, settings)
        client.headers["Authorization"] = f"Bearer {token}"
        published = await client.post("/fare-tables", json={"rules": rules_text, "format": "toml"})
        published.raise_for_status()
        population = Population.generate(args.riders, seed=args.seed, blocked_share=0.0)
        blocked = self.rng.sample([p.card_id for p in population], max(1, args.riders // 50))
        device = DeviceConfig(barrier=BarrierConfig(travel_ms=300, passage_ms=600))
        station = SimStation(data_dir / "gates", specs, population, None, device=device, mqtt_url=mqtt_url,
                             prefix=prefix, passwords=accounts.passwords if accounts else None,
                             uplink_master_key=bytes.fromhex(settings.uplink_master_key),
                             backend_keys=[public_key_of(bytes.fromhex(settings.downlink_signing_key))])
        await stack.enter_async_context(station)
        print(f"faregate demo: {len(stations)} stations, {len(specs)} gates, {args.riders} commuters, "
              f"broker {mqtt_url}, database {database.split('://')[0]}")
        if accounts is not None:
            where = args.broker_credentials or data_dir / "broker-credentials"
            print(f"broker: login required; {len(accounts.passwords)} accounts (backend, gates) in {where}")
        print(f"dashboard: {base}/   commuter page: {base}/commuter   API docs: {base}/docs")
        print(f"operator login: {settings.admin_username} / {settings.admin_password}")
        await self._wait_for_tables(station)
        for card in blocked:
            (await client.post(f"/phones/{card:016x}/block", json={"reason": "reported lost (demo)"})
             ).raise_for_status()
        started = time.monotonic()
        traffic = asyncio.create_task(self._traffic(station, specs, population, blocked))
        recharges = asyncio.create_task(self._air_recharges(client, settings, population, blocked))
        while not self.stop.is_set() and time.monotonic() - started < args.duration:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self.stop.wait()
            print(await self._progress(settings, station, time.monotonic() - started), flush=True)
        for task in (traffic, recharges):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._settle()  # commuters already at a gate finish their tap before anything is counted
        await self._drain(station)
        return await self._summary(settings, station)

    async def _login(self, client: httpx.AsyncClient, settings: Settings) -> str:
        for _ in range(200):
            with contextlib.suppress(httpx.TransportError):
                response = await client.post("/login", json={"username": settings.admin_username,
                                                                  "password": settings.admin_password})
                response.raise_for_status()
                return str(response.json()["access_token"])
            await asyncio.sleep(0.1)
        raise RuntimeError("the backend API did not come up")

    def _stations(self, rules: Any) -> list[int]:
        """Interchange stations first (the busiest), as many as asked."""
        metro = [s for s in rules.stations if s.network == "metro"]
        metro.sort(key=lambda s: -len(s.lines))
        return [s.id for s in metro[: self.args.stations]]

    async def _wait_for_tables(self, station: SimStation) -> None:
        for _ in range(300):
            if all(g.state.fare_table is not None for g in station.gates):
                return
            await asyncio.sleep(0.1)
        raise RuntimeError("the gates did not receive the fare table")

    async def _traffic(self, station: SimStation, specs: list[GateSpec], population: Population,
                       blocked: list[int]) -> None:
        """Entries at a Poisson rate; each commuter rides a while, then leaves at another station."""
        assert station.sim is not None
        sim = station.sim
        entries = [i for i, s in enumerate(specs) if s.direction == "entry"]
        exits = [i for i, s in enumerate(specs) if s.direction == "exit"]
        waiting = [p.card_id for p in population]
        self.rng.shuffle(waiting)
        riding: list[tuple[float, int, int]] = []  # (leave at, card, entry station)
        while True:
            await asyncio.sleep(self.rng.expovariate(self.args.rate))
            now = sim.now()
            for leave_at, card, origin in [r for r in riding if r[0] <= now]:
                riding.remove((leave_at, card, origin))
                gate = self.rng.choice([i for i in exits if specs[i].station_id != origin] or exits)
                self.presented.append(sim.present(card, gate, direction=Direction.EXIT, patience_s=4.0))
                waiting.insert(0, card)  # rides again later in the rush
            if not waiting:
                continue
            card = waiting.pop()
            gate = self.rng.choice(entries)
            roll = self.rng.random()
            if roll < 0.03:  # pulled away at once: a read or write cut short
                self.presented.append(sim.present(card, gate, dwell_s=0.03, patience_s=2.0))
            elif roll < 0.05 and waiting:  # two phones held to the reader together
                other = waiting.pop()
                self.presented.append(sim.present(card, gate, walk=False, dwell_s=1.0))
                self.presented.append(sim.present(other, gate, walk=False, dwell_s=1.0))
                waiting.insert(0, other)
            else:
                self.presented.append(sim.present(card, gate, patience_s=4.0))
            if card not in blocked:
                riding.append((now + self.rng.uniform(8, 25), card, specs[gate].station_id))

    async def _air_recharges(self, client: httpx.AsyncClient, settings: Settings, population: Population,
                             blocked: list[int]) -> None:
        """Now and then a commuter tops up over the air as a real one would: a payment intent from the
        commuter page's API, then the (simulated) provider's signed confirmation; the money reaches the
        wallet at the phone's next tap."""
        provider = SimulatedProvider(settings.payment_webhook_secret)
        riders = [p.card_id for p in population if p.card_id not in blocked]
        pause = self.rng.uniform(1.0, 3.0)  # the first soon, so even a short demo shows one
        while riders:
            await asyncio.sleep(pause)
            pause = self.rng.uniform(3.0, 8.0)
            card = f"{self.rng.choice(riders):016x}"
            issued = await client.post(f"/phones/{card}/commuter-token")
            issued.raise_for_status()
            amount = self.rng.choice([2000, 5000, 10000])
            intent = await client.post("/me/topup", json={"amount": amount},
                                       headers={"Authorization": f"Bearer {issued.json()['token']}"})
            if intent.status_code != 201:  # over the daily bound, or the phone was just blocked
                continue
            body, headers = provider.confirmation(intent.json()["reference"], amount)
            confirmed = await client.post("/payments/confirmations", content=body, headers=headers)
            if confirmed.status_code == 200 and confirmed.json()["credited"]:
                self.recharged.append(amount)

    async def _progress(self, settings: Settings, station: SimStation, elapsed: float) -> str:
        counts = await self._counts(settings)
        backlog = sum(g.journal.pending_count() for g in station.gates)
        journaled = sum(g.journal.last_seq for g in station.gates)
        return (f"[{elapsed:5.0f} s] taps journaled {journaled:6d}  stored {counts.stored:6d}  "
                f"revenue {yuan(counts.revenue)}  not yet sent {backlog}")

    async def _counts(self, settings: Settings) -> StoredCounts:
        engine = make_engine(settings)
        try:
            async with AsyncSession(engine) as session:
                by_reason = await session.execute(select(TapRow.allowed, TapRow.reason, func.count())
                                                  .group_by(TapRow.allowed, TapRow.reason))
                recovered = await session.scalar(select(func.count()).select_from(TapRow).where(
                    TapRow.flags.bitwise_and(int(Flag.RECOVERED)) != 0))
                trips = await session.execute(select(TripRow.state, func.count()).group_by(TripRow.state))
                totals = await account_totals(session)
                counts = StoredCounts(revenue=totals["revenue"], suspense=totals["suspense"],
                                      undelivered=totals["undelivered"], recovered=int(recovered or 0),
                                      trips={state: int(n) for state, n in trips.all()})
                for allowed, reason, n in by_reason.all():
                    name = Reason(reason).name.lower() if reason in Reason._value2member_map_ else str(reason)
                    bucket = counts.allowed if allowed else counts.denied
                    bucket[name] = bucket.get(name, 0) + int(n)
        finally:
            await engine.dispose()
        return counts

    async def _settle(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(p.done.is_set() for p in self.presented):
            await asyncio.sleep(0.1)

    async def _drain(self, station: SimStation, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(g.journal.pending_count() for g in station.gates):
            await asyncio.sleep(0.2)

    async def _summary(self, settings: Settings, station: SimStation) -> dict[str, Any]:
        """The run's figures, each counted in one place and reconciled: taps the gates journaled =
        taps stored + lost; stored = allowed + denied; a phone in the field that never became a tap
        (the gate could not read it) is counted apart, as not journaled."""
        counts = await self._counts(settings)
        journaled = sum(g.journal.last_seq for g in station.gates)
        not_journaled: Counter[str] = Counter()
        for gate in station.gates:  # the gates' own counters of phones they could not decide for
            for metric in gate.metrics.registry.collect():
                if metric.name == "faregate_taps":
                    for sample in metric.samples:
                        outcome = sample.labels.get("outcome", "")
                        if sample.name.endswith("_total") and outcome in NOT_JOURNALED:
                            not_journaled[NOT_JOURNALED[outcome]] += int(sample.value)
        return {
            "gates": len(station.gates),
            "journaled": journaled,
            "taps": counts.stored,
            "lost": max(0, journaled - counts.stored),
            "allowed": sum(counts.allowed.values()),
            "denied": sum(counts.denied.values()),
            "allowed_by_reason": counts.allowed,
            "denied_by_reason": counts.denied,
            "recovered": counts.recovered,
            "not_journaled": dict(not_journaled),
            "trips": sum(counts.trips.values()),
            "trips_by_state": counts.trips,
            "revenue_fen": counts.revenue,
            "suspense_fen": counts.suspense,
            "undelivered_fen": counts.undelivered,
            "air_recharges": len(self.recharged),
            "air_recharged_fen": sum(self.recharged),
        }
