"""A gate's configuration file (TOML), validated with pydantic: every bad value is named.

One process runs one gate, as one controller board sits in each real gate: a crash, a hung port or a
full disk stays on that gate, and each gate keeps its own journal. The demo runs several gates in one
process through the same GateRuntime class (see runtime.py).
"""

from __future__ import annotations

import ssl
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fare_core import DEVELOPMENT_SAM_KEY, Direction
from protocol.mqtt import (
    DEVELOPMENT_PUBLIC_KEY,
    DEVELOPMENT_UPLINK_MASTER_KEY,
    MAX_TAPS_PER_MESSAGE,
    derive_gate_key,
)
from protocol.mqtt.address import PORT, TLS_PORT, MqttUrl, NotAnMqttUrl, parse_mqtt_url
from protocol.mqtt.auth import backend_public_keys

TEST_SAM_KEY = DEVELOPMENT_SAM_KEY.hex()  # the simulator's key; refused outside development


class ConfigError(ValueError):
    """The gate configuration is unusable; the message names each bad field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MqttConfig(_Section):
    url: str | None = "mqtt://127.0.0.1:1883"  # None: run offline, the journal keeps every tap
    prefix: str = "faregate"
    username: str | None = None  # default: the URL's user:password@, if any
    password: str | None = None
    # TLS: on with an mqtts:// URL (port 8883 by default) or a CA file; the broker's certificate and
    # host name are verified against this CA (the system's CAs when unset)
    ca_file: Path | None = None
    window: Annotated[int, Field(ge=1, le=20_000)] = 500  # QoS 1 publishes in flight
    batch_max: Annotated[int, Field(ge=1, le=MAX_TAPS_PER_MESSAGE)] = 50  # taps in one message (backlog)
    heartbeat_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    stall_s: Annotated[float, Field(gt=0, le=3600)] = 10.0  # republish if no commit for this long
    # ...and wait twice as long after each republish that brought no commit, up to this (behind a
    # station cut off from the centre, every replay is queued there: docs/deployment.md)
    stall_max_s: Annotated[float, Field(gt=0, le=86_400)] = 300.0

    @field_validator("url")
    @classmethod
    def _mqtt_url(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_mqtt_url(value)
            except NotAnMqttUrl:
                raise ValueError("must look like mqtt://host:port or mqtts://host:port") from None
        return value

    @property
    def _parsed(self) -> MqttUrl | None:
        return parse_mqtt_url(self.url) if self.url is not None else None

    @model_validator(mode="after")
    def _login_from_url(self) -> MqttConfig:
        """user:password@ in the URL logs in, unless username/password are given apart."""
        parsed = self._parsed
        if self.username is None and parsed is not None and parsed.username:
            object.__setattr__(self, "username", parsed.username)
            object.__setattr__(self, "password", parsed.password)
        return self

    @property
    def tls(self) -> bool:
        parsed = self._parsed
        return (parsed is not None and parsed.tls) or self.ca_file is not None

    @property
    def host_port(self) -> tuple[str, int]:
        parsed = self._parsed
        if parsed is None:
            return "127.0.0.1", TLS_PORT if self.tls else PORT
        return parsed.host, parsed.port_or_default(self.tls)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for the broker connection (certificate and host name checked), or None."""
        if not self.tls:
            return None
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)


class BackendConfig(_Section):
    """The backend's HTTP API, for what MQTT cannot carry: a deny-list past MAX_LIST_ITEMS ids, fetched
    when a signed reference to it arrives (docs/mqtt.md). No `url`: the gate never fetches (it logs
    so once) and catches up by delta only."""

    url: Annotated[str, Field(pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")] | None = None
    ca_file: Path | None = None  # https: the backend's certificate is checked against it (else system CAs)
    # a reference is fetched after a random delay up to this, so a station's gates do not all ask at once
    fetch_jitter_s: Annotated[float, Field(ge=0, le=3600)] = 5.0
    fetch_retry_s: Annotated[float, Field(gt=0, le=3600)] = 30.0  # after a failed fetch, doubling...
    fetch_retry_max_s: Annotated[float, Field(gt=0, le=86_400)] = 900.0  # ...up to this
    fetch_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 60.0  # connect, and between two reads


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
    backend: BackendConfig = BackendConfig()
    # message authentication (docs/security.md): the gate's own uplink MAC key, diversified by the backend
    # from its master key (None: the development master key's, refused in production), and the backend's
    # Ed25519 public keys, raw hex: the current one and, during a rotation, the next
    uplink_key_hex: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")] | None = None
    backend_keys: Annotated[
        list[Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]], Field(min_length=1, max_length=2)
    ] = [DEVELOPMENT_PUBLIC_KEY.hex()]

    @field_validator("sam_key_hex")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()

    @model_validator(mode="after")
    def _no_test_key_in_production(self) -> GateConfig:
        if self.environment == "production" and self.sam_key_hex == TEST_SAM_KEY:
            raise ValueError("sam_key_hex: the simulator's test key is refused in production")
        if self.environment == "production":
            development = derive_gate_key(DEVELOPMENT_UPLINK_MASTER_KEY, self.gate_id).hex()
            if self.uplink_key_hex is None or self.uplink_key_hex.lower() == development:
                raise ValueError("uplink_key_hex: set this gate's own key (the development key is refused)")
            try:
                backend_public_keys(self.backend_keys, production=True)
            except ValueError as error:
                raise ValueError(f"backend_keys: {error}") from None
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

    @property
    def uplink_key(self) -> bytes:
        """What this gate MACs its taps and status with."""
        if self.uplink_key_hex is None:
            return derive_gate_key(DEVELOPMENT_UPLINK_MASTER_KEY, self.gate_id)
        return bytes.fromhex(self.uplink_key_hex)

    @property
    def backend_public_keys(self) -> list[bytes]:
        return backend_public_keys(self.backend_keys, production=self.environment == "production")


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
