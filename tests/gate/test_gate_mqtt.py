"""Gates against the real backend through real brokers (embedded amqtt and Mosquitto): every tap
reaches the database exactly once, whatever the broker or the gate process does meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from sqlalchemy import select

from backend.config import Settings
from backend.db import make_engine, make_sessionmaker
from backend.runtime import serve
from backend.tables import AlarmRow, FareTableRow, TapRow
from fare_core import FareTable, Flag, artefact, compiler, rules
from fare_core.reasons import yuan
from fare_core.table_data import TableData
from faregate.station import GateSpec, SimStation
from firmware_sim.config import BarrierConfig, DeviceConfig
from firmware_sim.population import Phone, Population
from firmware_sim.sim import Sim
from gate.journal import Journal
from protocol.mqtt import (
    DEVELOPMENT_SIGNING_SEED,
    DenyListDeltaMessage,
    Signer,
    SnapshotRequest,
    Topics,
    encode,
)

from .brokers import Broker

EXAMPLES = Path(__file__).resolve().parents[2] / "fare_core" / "examples"
SPECS = [GateSpec(1, 1, "entry"), GateSpec(3, 2, "exit")]
DEVICE = DeviceConfig(barrier=BarrierConfig(travel_ms=30, passage_ms=60))


@pytest.fixture(scope="module")
def table() -> TableData:
    return compiler.compile_rules(rules.load_rules(EXAMPLES / "tiny.toml"), version=2)


@contextlib.asynccontextmanager
async def backend(broker: Broker, tmp_path: Path) -> AsyncIterator[Settings]:
    """The real backend (ingest + processor) on SQLite, as `faregate backend` runs it."""
    settings = Settings(
        environment="development", database_url=f"sqlite+aiosqlite:///{tmp_path / 'backend.db'}",
        mqtt_url=broker.url, mqtt_version=broker.version,  # type: ignore[arg-type]
        ingest_group="" if broker.version == "3.1.1" else f"g{uuid.uuid4().hex[:8]}",
        mqtt_prefix=f"t{uuid.uuid4().hex[:8]}", ingest_client_id=f"ingest-{uuid.uuid4().hex[:8]}",
        ingest_batch_wait_ms=5)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, api=False, ingest=True, stop=stop, install_signals=False))
    await asyncio.sleep(0.5)
    try:
        yield settings
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def stored_taps(settings: Settings) -> list[tuple[str, str, bool]]:
    """(tap id, card id, allowed) of every tap the backend holds."""
    engine = make_engine(settings)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(select(TapRow.tap_id, TapRow.card_id, TapRow.allowed))
            return [(str(t), str(c), bool(a)) for t, c, a in rows.all()]
    finally:
        await engine.dispose()


async def stored_tap_ids(settings: Settings) -> list[str]:
    engine = make_engine(settings)
    try:
        async with engine.connect() as connection:
            return list((await connection.execute(select(TapRow.tap_id))).scalars().all())
    finally:
        await engine.dispose()


async def wait_until(predicate: object, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate() if callable(predicate) else None
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.1)


async def reconciled_all(query: Any) -> bool:
    return None not in await query()


def riders(n: int) -> Population:
    return Population([Phone(card_id=0x7000 + i, balance=5000) for i in range(n)])


async def register_table(settings: Settings, table: TableData) -> None:
    """The fare table the gates were provisioned with, known to the backend (as a published one is)."""
    blob = artefact.pack(table)
    engine = make_engine(settings)
    try:
        async with make_sessionmaker(engine).begin() as session:
            now = datetime.now(UTC)
            session.add(FareTableRow(version=table.version, name=table.name, rules="", artefact=blob,
                                     checksum=FareTable.from_bytes(blob).checksum, created_at=now,
                                     activate_at=now))
    finally:
        await engine.dispose()


async def test_trips_reach_the_backend_once_and_leave_the_journal(broker: Broker, tmp_path: Path,
                                                                 table: TableData) -> None:
    async with backend(broker, tmp_path) as settings, SimStation(
            tmp_path, SPECS, riders(4), table, device=DEVICE, mqtt_url=broker.url,
            prefix=settings.mqtt_prefix) as st:
        await register_table(settings, table)
        for i in range(4):
            await st.tap(0x7000 + i, 0)
            await st.tap(0x7000 + i, 1)
        expected = {f"1-1:{s}" for s in range(1, 5)} | {f"3-2:{s}" for s in range(1, 5)}

        async def all_stored_and_committed() -> bool:
            ids = await stored_tap_ids(settings)
            return set(ids) == expected and all(g.journal.pending_count() == 0 for g in st.gates)

        await wait_until(all_stored_and_committed, 20)
        ids = await stored_tap_ids(settings)
        assert sorted(ids) == sorted(expected) and len(ids) == len(set(ids))
        assert [g.journal.committed_through for g in st.gates] == [4, 4]

        # the backend re-ran fare_core on each honest tap and agrees with the gates
        async def reconciled() -> list[str | None]:
            engine = make_engine(settings)
            try:
                async with engine.connect() as connection:
                    return list((await connection.execute(select(TapRow.reconciled))).scalars().all())
            finally:
                await engine.dispose()

        await wait_until(lambda: reconciled_all(reconciled), 20)
        assert set(await reconciled()) == {"ok"}


@pytest.mark.slow  # a 30 s outage on purpose: the length a station's broker restart really takes
async def test_broker_down_30_s_during_traffic_loses_and_doubles_nothing(
        broker: Broker, tmp_path: Path, table: TableData) -> None:
    async with backend(broker, tmp_path) as settings, SimStation(
            tmp_path, SPECS[:1], riders(12), table, device=DEVICE, mqtt_url=broker.url,
            prefix=settings.mqtt_prefix) as st:
        gate = st.gates[0]
        for i in range(4):
            await st.tap(0x7000 + i, 0)
        await broker.stop()
        down_at = asyncio.get_running_loop().time()
        for i in range(4, 8):  # the gate goes on deciding offline; its journal grows
            entry = await st.tap(0x7000 + i, 0)
            assert entry.passed_at is not None
        assert gate.journal.pending_count() >= 4
        await asyncio.sleep(max(0.0, 30 - (asyncio.get_running_loop().time() - down_at)))
        await broker.start()
        for i in range(8, 12):
            await st.tap(0x7000 + i, 0)
        expected = {f"1-1:{s}" for s in range(1, 13)}

        async def complete() -> bool:
            return set(await stored_tap_ids(settings)) == expected and gate.journal.pending_count() == 0

        await wait_until(complete, 60)
        ids = await stored_tap_ids(settings)
        assert len(ids) == len(set(ids)) == 12


async def test_gate_sigkilled_mid_traffic_restarts_with_its_journal(broker: Broker, tmp_path: Path,
                                                                    table: TableData) -> None:
    chosen = broker
    async with backend(chosen, tmp_path) as settings:
        with Sim(DEVICE, riders(16), gates=1) as sim:
            station = SimStation(tmp_path, SPECS[:1], riders(16), table, device=DEVICE,
                                 mqtt_url=chosen.url, prefix=settings.mqtt_prefix)
            config = station.prepare(0)
            toml = tmp_path / "gate.toml"
            toml.write_text(
                f'station_id = 1\ngate_no = 1\ndirection = "entry"\ndata_dir = "{config.data_dir}"\n'
                f'sam_key_hex = "{config.sam_key_hex}"\n[mqtt]\nurl = "{chosen.url}"\n'
                f'prefix = "{settings.mqtt_prefix}"\nstall_s = 2.0\n', encoding="utf-8")
            command = [sys.executable, "-m", "faregate.cli", "gate", "--config", str(toml), "--serial",
                       sim.url(0), "--log-level", "WARNING"]
            served = []
            for round_ in range(2):
                seen = len(sim.gate(0).records("rx"))
                proc = subprocess.Popen(command)
                try:
                    # this process is up once it has restored the barrier, display and field (3 requests)
                    await asyncio.to_thread(
                        sim.wait_for, lambda seen=seen: len(sim.gate(0).records("rx")) >= seen + 3, 30)
                    await asyncio.sleep(0.3)
                    for i in range(8 * round_, 8 * round_ + 8):
                        p = sim.present(0x7000 + i, 0, patience_s=2.0)
                        await asyncio.to_thread(sim.wait, p, 10)
                        served.append(p)
                finally:
                    proc.send_signal(signal.SIGKILL)  # mid-traffic: no goodbye, no flush
                    await asyncio.to_thread(proc.wait, 10)
            with Journal(config.data_dir / "journal.db") as journal:
                last = journal.last_seq
                kept = journal.pending(limit=1000)
            stuck = [(hex(p.card_id), p.displays, p.gave_up) for p in served if p.passed_at is None]
            assert not stuck, stuck
            # at least one journal row per commuter (a failed write and its retry make two)
            # and what the backend has not committed yet is still there, without a gap
            assert last >= 16
            assert [seq for seq, _ in kept] == list(range(last - len(kept) + 1, last + 1))
            # restart once more so the gate can hand over what the kill left unpublished
            proc = subprocess.Popen(command)
            try:
                async def all_stored() -> bool:
                    return set(await stored_tap_ids(settings)) == {f"1-1:{s}" for s in range(1, last + 1)}

                await wait_until(all_stored, 30)
            finally:
                proc.terminate()
                await asyncio.to_thread(proc.wait, 10)
            rows = await stored_taps(settings)
            assert len(rows) == last
            # a seq reused across the kill would have lost a tap (same id, stored once): every
            # commuter's charged entry is in the database under its own id
            entered = {card for _tap, card, allowed in rows if allowed}
            assert entered == {f"{p.card_id:016x}" for p in served}


async def test_denylist_delta_with_bad_checksum_is_refused(broker: Broker, tmp_path: Path,
                                                          table: TableData) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    topics = Topics(prefix)
    host, port = broker.url.removeprefix("mqtt://").split(":")
    async with SimStation(tmp_path, SPECS[:1], riders(1), table, device=DEVICE,
                          mqtt_url=broker.url, prefix=prefix) as st:
        gate = st.gates[0]
        assert gate.uplink is not None
        await asyncio.wait_for(gate.uplink.connected.wait(), 10)
        async with aiomqtt.Client(host, int(port), identifier=f"op-{prefix}",
                                  protocol=aiomqtt.ProtocolVersion.V311) as operator:
            await operator.subscribe(topics.request(gate.config.gate_id), qos=1)
            bad = DenyListDeltaMessage(version=1, base_version=0, add=[0x7000], remove=[],
                                       checksum="00" * 24, time=datetime.now(UTC))
            signed = Signer(DEVELOPMENT_SIGNING_SEED).sign(bad)  # genuine, but on the wrong base
            await operator.publish(topics.denylist_delta, encode(signed), qos=1)
            async with asyncio.timeout(10):
                async for message in operator.messages:
                    request = SnapshotRequest.model_validate_json(bytes(message.payload))  # type: ignore[arg-type]
                    break
        assert (request.kind.value, request.have_version) == ("denylist", 0)
        assert gate.state.denylist.version == 0 and 0x7000 not in gate.state.denylist
        assert gate.uplink.rejected_updates >= 1
        entry = await st.tap(0x7000, 0)  # the phone is still let through: the list did not change
        assert entry.passed_at is not None


async def test_a_gate_an_hour_behind_stamps_its_taps_and_status_so_and_raises_clock_skew(
        broker: Broker, tmp_path: Path, table: TableData) -> None:
    """One clock for everything a gate stamps: a gate whose clock is an hour behind reports its taps and
    its status an hour behind, so the backend's clock_skew alarm names it (the soak's clock jumps
    reached only the taps before, and no alarm)."""
    behind = 3600.0
    async with backend(broker, tmp_path) as settings, SimStation(
            tmp_path, SPECS[:1], riders(1), table, device=DEVICE, mqtt_url=broker.url,
            prefix=settings.mqtt_prefix, clock=lambda: time.time() - behind) as st:
        await register_table(settings, table)
        await st.tap(0x7000, 0)
        engine = make_engine(settings)
        try:
            async def alarm_and_tap() -> bool:
                async with engine.connect() as connection:
                    alarms = (await connection.execute(
                        select(AlarmRow.gate_id).where(AlarmRow.kind == "clock_skew"))).scalars().all()
                    taps = (await connection.execute(select(TapRow.time))).scalars().all()
                return list(alarms) == ["1-1"] and len(taps) == 1

            await wait_until(alarm_and_tap, 20)
            async with engine.connect() as connection:
                tapped = (await connection.execute(select(TapRow.time))).scalar_one()
        finally:
            await engine.dispose()
        lag = datetime.now(UTC) - (tapped if tapped.tzinfo else tapped.replace(tzinfo=UTC))
        assert behind - 60 < lag.total_seconds() < behind + 60


async def test_an_overdraft_exit_is_shown_reported_and_reconciled(broker: Broker, tmp_path: Path) -> None:
    """A table with an [overdraft]: a real gate lets the rider out below zero, the display says how much
    is owed, and the tap reaches the backend with its negative balance (the wire's Balance) and
    reconciles: the backend's fare_core agrees."""
    data = tomllib.loads((EXAMPLES / "tiny.toml").read_text(encoding="utf-8"))
    data["overdraft"] = {"limit_fen": 300, "taps": ["exit"]}
    table = compiler.compile_rules(rules.rules_from_data(data), version=2)
    async with backend(broker, tmp_path) as settings, SimStation(
            tmp_path, SPECS, Population([Phone(card_id=0x7100, balance=250)]), table, device=DEVICE,
            mqtt_url=broker.url, prefix=settings.mqtt_prefix) as st:
        await register_table(settings, table)
        await st.tap(0x7100, 0)
        out = await st.tap(0x7100, 1)
        assert out.passed_at is not None
        assert st.sim is not None
        debt = st.sim.record(0x7100).balance  # the wallet itself, below zero
        assert debt < 0
        assert out.display == (f"扣费 {yuan(250 - debt)} 元 透支 {yuan(-debt)} 元 请充值",
                               f"Fare ¥{yuan(250 - debt)}  Overdrawn ¥{yuan(-debt)} - please top up")
        engine = make_engine(settings)
        try:
            async def stored() -> list[tuple[int, int, str | None]]:
                async with engine.connect() as connection:
                    rows = (await connection.execute(
                        select(TapRow.balance_after, TapRow.flags, TapRow.reconciled)
                        .where(TapRow.gate_id == "3-2"))).all()
                return [(int(a), int(f), r) for a, f, r in rows]

            await wait_until(lambda: _reconciled(stored), 20)
            [(balance_after, flags, reconciled)] = await stored()
        finally:
            await engine.dispose()
        assert balance_after == debt and flags & Flag.OVERDRAFT and reconciled == "ok"


async def _reconciled(query: Any) -> bool:
    rows = await query()
    return bool(rows) and all(row[-1] is not None for row in rows)
