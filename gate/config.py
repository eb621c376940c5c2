"""A gate's configuration file (TOML), validated with pydantic: every bad value is named.

One process runs one gate, as one controller board sits in each real gate: a crash, a hung port or a
full disk stays on that gate, and each gate keeps its own journal. The demo runs several gates in one
process through the same GateRuntime class (see runtime.py).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fare_core import DEVELOPMENT_SAM_KEY, Direction
from protocol.mqtt import MAX_TAPS_PER_MESSAGE

TEST_SAM_KEY = DEVELOPMENT_SAM_KEY.hex()  # the simulator's key; refused outside development


class ConfigError(ValueError):
    """The gate configuration is unusable; the message names each bad field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MqttConfig(_Section):
    url: str | None = "mqtt://127.0.0.1:1883"  # None: run offline, the journal keeps every tap
    prefix: str = "faregate"
    username: str | None = None
    password: str | None = None
    window: Annotated[int, Field(ge=1, le=20_000)] = 500  # QoS 1 publishes in flight
    batch_max: Annotated[int, Field(ge=1, le=MAX_TAPS_PER_MESSAGE)] = 50  # taps in one message (backlog)
    heartbeat_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    stall_s: Annotated[float, Field(gt=0, le=3600)] = 10.0  # republish if no commit for this long

    @field_validator("url")
    @classmethod
    def _mqtt_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
                raise ValueError("must look like mqtt://host:port")
        return value

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.url or "")
        return parts.hostname or "127.0.0.1", parts.port or 1883


class GateConfig(_Section):
    station_id: Annotated[int, Field(ge=0, le=0xFFFF)]
    gate_no: Annotated[int, Field(ge=0, le=0xFF)]
    direction: Literal["entry", "exit"] = "entry"
    serial: str | None = None  # a pyserial URL; --serial overrides it
    baud: Annotated[int, Field(gt=0, le=4_000_000)] = 115200
    data_dir: Path = Path("var/gate")
    sam_key_hex: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{32}$")] = TEST_SAM_KEY
    environment: Literal["development", "production"] = "development"
    rssi_min_dbm: Annotated[int, Field(ge=-127, le=0)] = -60  # distance control, on top of the reader's
    hold_ms: Annotated[int, Field(ge=500, le=60_000)] = 5000  # barrier stays open this long for one person
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 0  # 0: no metrics endpoint
    # SCHED_FIFO priority for the controller (Linux, needs root or CAP_SYS_NICE); None: normal scheduling
    realtime_priority: Annotated[int, Field(ge=1, le=99)] | None = None
    # CPU wake-up latency limit held through /dev/cpu_dma_latency (gate/tuning.py); None: leave it
    cpu_latency_us: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    mqtt: MqttConfig = MqttConfig()

    @field_validator("sam_key_hex")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()

    @model_validator(mode="after")
    def _no_test_key_in_production(self) -> GateConfig:
        if self.environment == "production" and self.sam_key_hex == TEST_SAM_KEY:
            raise ValueError("sam_key_hex: the simulator's test key is refused in production")
        return self

    @property
    def gate_id(self) -> str:
        return f"{self.station_id}-{self.gate_no}"

    @property
    def fare_direction(self) -> Direction:
        return Direction.ENTRY if self.direction == "entry" else Direction.EXIT

    @property
    def sam_key(self) -> bytes:
        return bytes.fromhex(self.sam_key_hex)


def load_config(path: str | Path, **overrides: object) -> GateConfig:
    """Read a TOML gate configuration; ConfigError lists every bad field with its location."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return parse_config(raw, source=str(path))


def parse_config(raw: dict[str, object], source: str = "config") -> GateConfig:
    try:
        return GateConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors()]
        raise ConfigError(f"{source}: " + "; ".join(lines)) from exc
