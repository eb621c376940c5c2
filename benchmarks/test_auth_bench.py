"""pytest-benchmark: what authentication adds, each row beside the same work without it in one run.

Run: python3 -m pytest benchmarks/test_auth_bench.py --benchmark-only
- gate tap path: encoding one TapMessage (`encode`) against encoding it with its BLAKE2s MAC
  (`encode_with_mac`, what the controller journals and sends);
- ingest: parsing a 50-tap array (`parse_raw`) against parsing it and checking every MAC
  (`parse_raw` + `authn.tap_refusals`, the store's path);
- gate downlink: parsing a signed 300-station fare table message against parsing and verifying its
  Ed25519 signature.
Compare rows of one run only: the machine is shared.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest

from backend.ingest import authn
from backend.ingest.store import RawMessage, parse_raw
from faregate.simgate import tap_payload
from protocol.mqtt import FareTableMessage, TapMessage, Topics, encode
from protocol.mqtt.auth import (
    DEVELOPMENT_SIGNING_SEED,
    DEVELOPMENT_UPLINK_MASTER_KEY,
    GateKeys,
    Signer,
    Verifier,
    derive_gate_key,
    encode_with_mac,
    public_key_of,
)

GATE_KEY = derive_gate_key(DEVELOPMENT_UPLINK_MASTER_KEY, "12-3")
TAP = TapMessage.model_validate_json(tap_payload(12, 3, 1, GATE_KEY))
ARRAY = RawMessage(Topics("bench").taps("12-3"),
                   b"[" + b",".join(tap_payload(12, 3, seq, GATE_KEY) for seq in range(1, 51)) + b"]")
KEYS = GateKeys([DEVELOPMENT_UPLINK_MASTER_KEY])


def _signed_fare_table() -> bytes:
    artefact = base64.b64encode(bytes(300_000)).decode()  # the size of a 300-station table
    message = FareTableMessage(version=1, checksum="ab" * 16, activate_at=datetime(2026, 12, 2, tzinfo=UTC),
                               artefact=artefact)
    return encode(Signer(DEVELOPMENT_SIGNING_SEED).sign(message))


FARE_TABLE = _signed_fare_table()
VERIFIER = Verifier([public_key_of(DEVELOPMENT_SIGNING_SEED)])


@pytest.mark.parametrize("mac", [False, True], ids=["plain", "with_mac"])
def test_gate_encodes_a_tap(benchmark: Any, mac: bool) -> None:
    benchmark.group = "gate tap encode"
    wire = benchmark(encode_with_mac, TAP, GATE_KEY) if mac else benchmark(encode, TAP)
    assert TapMessage.model_validate_json(wire).tap_id == TAP.tap_id


@pytest.mark.parametrize("verify", [False, True], ids=["parse", "parse_and_verify"])
def test_ingest_takes_a_50_tap_array(benchmark: Any, verify: bool) -> None:
    benchmark.group = "ingest 50-tap array"

    def work() -> list[Any]:
        parsed = parse_raw(ARRAY)
        return authn.tap_refusals(KEYS, parsed) if verify else parsed

    result = benchmark(work)
    assert len(result) == 50
    if verify:
        assert result == [None] * 50  # every MAC good: the measured path is the accepting one


@pytest.mark.parametrize("verify", [False, True], ids=["parse", "parse_and_verify"])
def test_gate_takes_a_signed_fare_table(benchmark: Any, verify: bool) -> None:
    benchmark.group = "gate fare table"

    def work() -> FareTableMessage:
        message = FareTableMessage.model_validate_json(FARE_TABLE)
        if verify:
            VERIFIER.check(message)
        return message

    assert benchmark(work).version == 1
