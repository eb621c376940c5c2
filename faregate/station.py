"""A station on the simulated hardware loop: firmware_sim devices on real pseudo-terminals, each
driven by a real GateRuntime. Used by the loop benchmark, the demo and the end-to-end tests, so all
three exercise exactly what a gate runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fare_core import DenyList, Direction, TableData, artefact
from firmware_sim.config import DeviceConfig
from firmware_sim.population import Population
from firmware_sim.sim import Presentation, Sim
from gate.config import GateConfig, parse_config
from gate.runtime import GateRuntime
from protocol.mqtt import DEVELOPMENT_PUBLIC_KEY, DEVELOPMENT_UPLINK_MASTER_KEY, derive_gate_key, gate_id


@dataclass(frozen=True)
class GateSpec:
    station_id: int
    gate_no: int
    direction: str = "entry"  # "entry" or "exit"


class SimStation:
    """`async with SimStation(...) as station:` starts the sim and one gate runtime per spec."""

    def __init__(self, data_dir: Path, gates: list[GateSpec], population: Population,
                 table: TableData | bytes | None, *, device: DeviceConfig | None = None,
                 mqtt_url: str | None = None, prefix: str = "faregate", denylist: DenyList | None = None,
                 gate_overrides: dict[str, Any] | None = None, passwords: Mapping[str, str] | None = None,
                 mqtt_options: Mapping[str, Any] | None = None, uplink_master_key: bytes | None = None,
                 backend_keys: list[bytes] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.data_dir = data_dir
        self.clock = clock  # every gate's wall clock (a station whose clocks jumped, in tests)
        self.specs = gates
        self.population = population
        self.table = artefact.pack(table) if isinstance(table, TableData) else table
        self.device = device or DeviceConfig()
        self.mqtt_url = mqtt_url
        self.prefix = prefix
        self.denylist = denylist
        self.gate_overrides = gate_overrides or {}
        self.passwords = passwords or {}  # gate id -> broker password: each gate logs in as itself
        self.mqtt_options = dict(mqtt_options or {})  # more [mqtt] settings, e.g. ca_file
        # message authentication, as a deployment provisions it: each gate gets its own MAC key derived
        # from the backend's uplink master key, and the backend's public signing key(s)
        self.uplink_master_key = uplink_master_key or DEVELOPMENT_UPLINK_MASTER_KEY
        self.backend_keys = backend_keys or [DEVELOPMENT_PUBLIC_KEY]
        self.sim: Sim | None = None
        self.gates: list[GateRuntime] = []

    def config_for(self, index: int) -> GateConfig:
        spec = self.specs[index]
        gid = gate_id(spec.station_id, spec.gate_no)
        login = {"username": gid, "password": self.passwords[gid]} if gid in self.passwords else {}
        return parse_config({
            "station_id": spec.station_id, "gate_no": spec.gate_no, "direction": spec.direction,
            "data_dir": str(self.data_dir / f"gate-{spec.station_id}-{spec.gate_no}"),
            "sam_key_hex": self.device.wallets.master_key, "baud": self.device.link.baud,
            "uplink_key_hex": derive_gate_key(self.uplink_master_key, gid).hex(),
            "backend_keys": [key.hex() for key in self.backend_keys],
            "mqtt": {"url": self.mqtt_url, "prefix": self.prefix, "heartbeat_s": 5.0, "stall_s": 5.0,
                     **login, **self.mqtt_options},
            **self.gate_overrides,
        })

    def prepare(self, index: int) -> GateConfig:
        """Give a gate its fare table and deny-list on disk, as a provisioned gate has them."""
        config = self.config_for(index)
        config.data_dir.mkdir(parents=True, exist_ok=True)
        if self.table is not None and not (config.data_dir / "faretable.fgt").exists():
            (config.data_dir / "faretable.fgt").write_bytes(self.table)
        if self.denylist is not None and not (config.data_dir / "denylist.snapshot").exists():
            self.denylist.save(config.data_dir / "denylist.snapshot")
        return config

    async def start_gate(self, index: int) -> GateRuntime:
        assert self.sim is not None
        runtime = GateRuntime(self.prepare(index), self.sim.url(index), clock=self.clock)
        await runtime.start()
        if not await runtime.link.wait_up(5.0):
            raise RuntimeError(f"gate {runtime.config.gate_id} could not open {self.sim.url(index)}")
        return runtime

    async def __aenter__(self) -> SimStation:
        self.sim = Sim(self.device, self.population, gates=len(self.specs)).start()
        try:
            for index in range(len(self.specs)):
                self.gates.append(await self.start_gate(index))
            await asyncio.sleep(0.05)  # let each gate learn the field and settle its barrier
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        for runtime in self.gates:
            await runtime.stop()
        self.gates.clear()
        if self.sim is not None:
            sim, self.sim = self.sim, None
            await asyncio.to_thread(sim.close)

    async def tap(self, card_id: int, gate: int, timeout: float = 10.0, **kwargs: Any) -> Presentation:
        """A commuter taps at gate `gate` (index), walking in that gate's direction; wait till done."""
        assert self.sim is not None
        direction = Direction.ENTRY if self.specs[gate].direction == "entry" else Direction.EXIT
        kwargs.setdefault("direction", direction)
        presentation = self.sim.present(card_id, gate, **kwargs)
        await asyncio.to_thread(self.sim.wait, presentation, timeout)
        return presentation
