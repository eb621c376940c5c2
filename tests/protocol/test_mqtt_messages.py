"""The shared payload models: strict on the wire, lossless round trips, topics under one prefix."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from backend.config import Settings
from fare_core.reasons import GateMode
from protocol.mqtt import (
    Action,
    ActionListMessage,
    Committed,
    DenyListDeltaMessage,
    DenyListSnapshotMessage,
    GateCommand,
    ResendRequest,
    TapMessage,
    Topics,
    encode,
    parse_gate_id,
    state_version,
)
from tests.backend.conftest import make_tap

NOW = datetime(2026, 11, 22, 4, 0, 0, 123000, tzinfo=UTC)


@pytest.mark.parametrize(
    "message",
    [
        make_tap(7, card_id=(1 << 64) - 1, action_id=3, topup_applied=500),
        Committed(gate_id="12-3", through_seq=41, time=NOW),
        ResendRequest(gate_id="12-3", from_seq=3, to_seq=4, time=NOW),
        GateCommand(
            gate_id="12-3", command_id=2, mode=GateMode.FREE_EXIT, reason="fire drill", issued_at=NOW
        ),
        DenyListDeltaMessage(version=2, base_version=1, add=[5], remove=[], checksum="ab" * 24, time=NOW),
        ActionListMessage(version=1, actions=[Action(action_id=1, card_id=9, topup=100)], time=NOW),
    ],
)
def test_round_trip_through_the_wire(message: object) -> None:
    wire = encode(message)  # type: ignore[arg-type]
    assert type(message).model_validate_json(wire) == message


def test_card_id_is_sixteen_hex_digits_on_the_wire() -> None:
    wire = json.loads(encode(make_tap(1, card_id=0xDEADBEEF)))
    assert wire["card_id"] == "00000000deadbeef"
    assert wire["time"] == "2026-11-22T08:00:01Z"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("card_id", 3735928559),
        ("card_id", "deadbeef"),
        ("card_id", "0x000000deadbeef"),
        ("fare", 2.5),
        ("fare", -1),
        ("fare", "200"),
        ("balance_after", -(2**31) - 1),  # below zero only within the record's i32 (an overdraft)
        ("balance_before", 2**31),
        ("balance_after", 2.5),
        ("seq", 0),
        ("time", "2026-11-22T08:00:01"),
        ("time", "2026-11-22T16:00:01+08:00"),
        ("time", "2026-11-22T08:00:01.5Z"),
        ("wallet_before", "00" * 127),
        ("direction", 2),
        ("reason", 99),
        ("surprise", 1),
        ("tap_id", "12-3:2"),
        ("counter_after", 0),
    ],
)
def test_a_tap_with_a_bad_field_is_refused(field: str, value: object) -> None:
    wire = json.loads(encode(make_tap(1)))
    wire[field] = value
    with pytest.raises(ValidationError):
        TapMessage.model_validate_json(json.dumps(wire))


def test_topics_and_gate_ids() -> None:
    topics = Topics("city/metro")
    assert topics.taps("12-3") == "city/metro/gates/12-3/taps"
    assert topics.all_taps == "city/metro/gates/+/taps"
    assert Topics.gate_of(topics.committed("12-3")) == "12-3"
    assert parse_gate_id("65535-255") == (65535, 255)
    for bad in ("65536-1", "1-256", "1:2", "a-b"):
        with pytest.raises(ValueError):
            parse_gate_id(bad)
    for prefix in ("", "/x", "x/", "x/#", "a+b"):
        with pytest.raises(ValueError):
            Topics(prefix)


def test_the_state_topics_are_the_retained_ones() -> None:
    """What a relay or bridge hands on retained: a gate's ack and command and the shared state, not a
    resend request nor a delta (each names the version it applies to)."""
    topics = Topics("city/metro")
    retained = [topics.committed("12-3"), topics.command("12-3"), topics.denylist_snapshot,
                topics.denylist_snapshot_ref, topics.fare_table, topics.actions]
    not_retained = [topics.resend("12-3"), topics.denylist_delta, topics.taps("12-3"), topics.request("12-3"),
                    "other/gates/12-3/committed"]
    assert [topics.retained(t) for t in retained] == [True] * len(retained)
    assert [topics.retained(t) for t in not_retained] == [False] * len(not_retained)


def test_default_secrets_are_refused_outside_development() -> None:
    assert Settings(environment="development").admin_password == "changethis"
    with pytest.raises(ValidationError, match="ADMIN_PASSWORD"):
        Settings(environment="production")
    with pytest.raises(ValidationError, match="SAM_MASTER_KEY"):
        Settings(environment="production", admin_password="a-real-long-secret")
    real = {"admin_password": "a-real-long-secret", "sam_master_key": "ab" * 16}
    with pytest.raises(ValidationError, match="DOWNLINK_SIGNING_KEY"):
        Settings(environment="production", **real)
    real["downlink_signing_key"] = "cd" * 32
    with pytest.raises(ValidationError, match="UPLINK_MASTER_KEY"):
        Settings(environment="production", **real)
    real["uplink_master_key"] = "ef" * 32
    fields = Settings.model_fields
    real.update({k: v for k, v in (("payment_webhook_secret", "a-real-webhook-secret"), ("mqtt_username",
                 "backend"), ("mqtt_password", "a-real-password")) if k in fields})
    Settings(environment="production", **real)


def test_a_state_message_is_ordered_by_its_version_and_a_command_by_its_id() -> None:
    """What a relay compares to keep the station's retained state from going back (backend/relay.py)."""
    command = GateCommand(gate_id="3-2", command_id=9, mode=GateMode.CLOSED, issued_at=NOW)
    actions = ActionListMessage(version=4, actions=[Action(action_id=2, card_id=7, topup=100)], time=NOW)
    snapshot = DenyListSnapshotMessage(version=12, card_ids=[], checksum="0" * 48, time=NOW)
    assert [state_version(m) for m in (command, actions, snapshot)] == [9, 4, 12]
