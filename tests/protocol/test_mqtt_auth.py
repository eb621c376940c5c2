"""protocol/mqtt/auth.py: what is signed and MACed, and that each end's shortcut makes the same bytes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from faregate.simgate import development_mac_key, tap_payload
from gate.config import ConfigError, parse_config
from protocol.mqtt import (
    DEVELOPMENT_PUBLIC_KEY,
    DEVELOPMENT_SIGNING_SEED,
    DEVELOPMENT_UPLINK_MASTER_KEY,
    AuthError,
    Committed,
    GateKeys,
    GateState,
    GateStatus,
    Signer,
    TapMessage,
    Verifier,
    derive_gate_key,
    encode,
    encode_with_mac,
    with_mac,
)
from protocol.mqtt.auth import mac_valid
from tests.backend.conftest import make_tap

NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


def test_the_one_pass_encoding_is_the_models_own_and_verifies_after_a_round_trip() -> None:
    key = derive_gate_key(DEVELOPMENT_UPLINK_MASTER_KEY, "12-3")
    tap = make_tap(7).model_copy(update={"mac": None})
    wire = encode_with_mac(tap, key)
    assert wire == encode(with_mac(tap, key))
    assert mac_valid(TapMessage.model_validate_json(wire), [key])
    status = GateStatus(gate_id="12-3", state=GateState.OFFLINE)
    assert mac_valid(GateStatus.model_validate_json(encode_with_mac(status, key)), [key])


def test_the_benchmarks_hand_built_taps_carry_a_valid_mac() -> None:
    tap = TapMessage.model_validate_json(tap_payload(1003, 5, 42))
    assert GateKeys([DEVELOPMENT_UPLINK_MASTER_KEY]).valid(tap, "1003-5")
    assert not GateKeys([DEVELOPMENT_UPLINK_MASTER_KEY]).valid(tap, "1003-6")  # another gate's key


def test_gate_keys_are_diversified_and_the_next_master_is_accepted() -> None:
    old, new = bytes(32), bytes([9]) * 32
    assert derive_gate_key(old, "1-1") != derive_gate_key(old, "1-2") != derive_gate_key(new, "1-1")
    tap = with_mac(make_tap(1), derive_gate_key(new, "12-3"))
    assert not GateKeys([old]).valid(tap, "12-3")
    assert GateKeys([old, new]).valid(tap, "12-3")


def test_a_signature_covers_every_field_and_the_key_id() -> None:
    signer = Signer(DEVELOPMENT_SIGNING_SEED)
    verifier = Verifier([DEVELOPMENT_PUBLIC_KEY])
    signed = signer.sign(Committed(gate_id="1-1", through_seq=5, time=NOW))
    verifier.check(Committed.model_validate_json(encode(signed)))
    for change in ({"through_seq": 6}, {"gate_id": "1-2"}, {"key_id": "00" * 8}, {"sig": None}):
        with pytest.raises(AuthError):
            verifier.check(signed.model_copy(update=change))


def test_development_keys_are_refused_in_a_production_gate() -> None:
    base = {"station_id": 1, "gate_no": 1, "environment": "production", "sam_key_hex": "ab" * 16}
    with pytest.raises(ConfigError, match="uplink_key_hex"):
        parse_config(base)
    dev_key = development_mac_key(1, 1).hex()
    with pytest.raises(ConfigError, match="uplink_key_hex"):
        parse_config({**base, "uplink_key_hex": dev_key})
    with pytest.raises(ConfigError, match="backend_keys"):
        parse_config({**base, "uplink_key_hex": "cd" * 32})
    real = Signer(bytes([5]) * 32).public_key.hex()
    config = parse_config({**base, "uplink_key_hex": "cd" * 32, "backend_keys": [real]})
    assert config.uplink_key == bytes.fromhex("cd" * 32)
    assert config.backend_public_keys == [bytes.fromhex(real)]
