"""The device configuration file: defaults, every section, refusals with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from fare_core import DEVELOPMENT_SAM_KEY
from firmware_sim.config import ConfigError, DeviceConfig, load_config


def test_defaults() -> None:
    config = load_config(None)
    assert config == DeviceConfig()
    assert config.link.baud == 115200 and config.wallets.key == DEVELOPMENT_SAM_KEY


def test_full_file(tmp_path: Path) -> None:
    path = tmp_path / "device.toml"
    path.write_text("""
model = "FG-TEST"
firmware = [2, 1, 0]
[link]
baud = 9600
[reader]
read_ms = 40
rssi_threshold_dbm = -60
[barrier]
travel_ms = 900
[faults]
seed = 3
[faults.to_gate]
bit_flip = 0.001
noise_bursts_per_s = 2
[wallets]
master_key = "ffeeddccbbaa99887766554433221100"
""", encoding="utf-8")
    config = load_config(path)
    assert config.model == "FG-TEST" and config.firmware == (2, 1, 0)
    assert config.link.baud == 9600 and config.reader.read_ms == 40
    assert config.reader.range_cm() > DeviceConfig().reader.range_cm()
    assert config.faults.to_gate.rates().bit_flip == 0.001
    assert config.wallets.key == bytes.fromhex("ffeeddccbbaa99887766554433221100")


@pytest.mark.parametrize(("text", "message"), [
    ("[reader]\nread_msec = 3\n", "read_msec"),
    ("[link]\nbaud = -1\n", "baud"),
    ("[faults.to_gate]\nbit_flip = 2\n", "bit_flip"),
    ("[wallets]\nmaster_key = \"abcd\"\n", "16 bytes"),
    ("[reader\n", "not valid TOML"),
    ("model = \"型号\"\n", "model"),
])
def test_bad_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "device.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")
