"""The device configuration file (`faregate sim --config device.toml`), validated with pydantic.

Every section is optional; unknown keys are refused (a typo in a timing must not silently fall back
to a default). Times are milliseconds, signal strengths dBm. Example::

    [link]
    baud = 115200

    [reader]
    read_ms = 25          # RF read of the 128 wallet bytes, for a phone of slowness 1
    write_ms = 30         # RF write of one 64-byte slot
    verify_ms = 8         # read-back after the write
    rssi_threshold_dbm = -55   # distance control: weaker phones are never reported nor transacted
    rssi_at_1cm_dbm = -30
    path_loss_exponent = 2.5

    [barrier]
    travel_ms = 400       # closed -> open and back
    passage_ms = 800      # a person occupies the passage sensor this long

    [faults]
    seed = 1
    [faults.to_gate]      # what the controller receives
    bit_flip = 1e-4       # per byte
    noise_bursts_per_s = 0.5
    [faults.to_device]    # what the device receives
    drop = 1e-4

    [wallets]
    master_key = "000102030405060708090a0b0c0d0e0f"   # the SAM master key (test key)
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fare_core import DEVELOPMENT_SAM_KEY
from protocol.serial.timing import DEFAULT_BAUD

from .faults import FaultRates

#: A public, well-known key for simulations and tests only; never a production SAM key.


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LinkConfig(_Section):
    baud: Annotated[int, Field(gt=0, le=4_000_000)] = DEFAULT_BAUD


class ReaderConfig(_Section):
    read_ms: Annotated[float, Field(ge=0, le=250)] = 25.0
    write_ms: Annotated[float, Field(ge=0, le=250)] = 30.0
    verify_ms: Annotated[float, Field(ge=0, le=100)] = 8.0
    rssi_threshold_dbm: Annotated[int, Field(ge=-127, le=0)] = -55
    rssi_at_1cm_dbm: Annotated[float, Field(ge=-100, le=0)] = -30.0
    path_loss_exponent: Annotated[float, Field(gt=0, le=6)] = 2.5

    def rssi(self, distance_cm: float) -> int:
        """Log-distance path loss: signal strength of a phone `distance_cm` from the antenna."""
        value = self.rssi_at_1cm_dbm - 10 * self.path_loss_exponent * math.log10(max(distance_cm, 0.1))
        return max(-127, min(0, round(value)))

    def range_cm(self) -> float:
        """The farthest distance still within the threshold."""
        exponent = (self.rssi_at_1cm_dbm - self.rssi_threshold_dbm) / (10 * self.path_loss_exponent)
        return float(10 ** exponent)


class BarrierConfig(_Section):
    travel_ms: Annotated[float, Field(ge=0, le=5000)] = 400.0
    passage_ms: Annotated[float, Field(gt=0, le=10000)] = 800.0


class RatesConfig(_Section):
    bit_flip: Annotated[float, Field(ge=0, le=1)] = 0.0
    drop: Annotated[float, Field(ge=0, le=1)] = 0.0
    duplicate: Annotated[float, Field(ge=0, le=1)] = 0.0
    noise_bursts_per_s: Annotated[float, Field(ge=0, le=1000)] = 0.0
    noise_burst_bytes: Annotated[int, Field(ge=1, le=1024)] = 8

    def rates(self) -> FaultRates:
        return FaultRates(**self.model_dump())


class FaultsConfig(_Section):
    seed: int = 0
    to_gate: RatesConfig = RatesConfig()
    to_device: RatesConfig = RatesConfig()


class WalletsConfig(_Section):
    master_key: str = DEVELOPMENT_SAM_KEY.hex()

    @field_validator("master_key")
    @classmethod
    def _sixteen_bytes(cls, value: str) -> str:
        if len(bytes.fromhex(value)) != 16:
            raise ValueError("master_key must be 16 bytes in hex (32 hex digits)")
        return value

    @property
    def key(self) -> bytes:
        return bytes.fromhex(self.master_key)


class DeviceConfig(_Section):
    model: Annotated[str, Field(pattern=r"^[ -~]{1,32}$")] = "FG-RFSIM-1"
    firmware: tuple[int, int, int] = (1, 0, 0)
    link: LinkConfig = LinkConfig()
    reader: ReaderConfig = ReaderConfig()
    barrier: BarrierConfig = BarrierConfig()
    faults: FaultsConfig = FaultsConfig()
    wallets: WalletsConfig = WalletsConfig()


class ConfigError(ValueError):
    """The configuration file cannot be used; the message says where and why."""


def load_config(path: str | Path | None) -> DeviceConfig:
    """The configuration in `path` (TOML), or the defaults when `path` is None."""
    if path is None:
        return DeviceConfig()
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
        return DeviceConfig.model_validate(data)
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None
    except ValidationError as error:
        raise ConfigError(f"{path}: {error}") from None
