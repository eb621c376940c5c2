"""Hostile payloads on a gate's own taps topic: each is refused alone and never raises out of parse().

An exception other than a refusal would make the worker retry the same batch for ever (and the broker
redeliver it after a restart), so one message from one gate would stop tap storage for every gate.
"""

from __future__ import annotations

import pytest

from backend.ingest.store import RawMessage, Refused, parse
from protocol.mqtt import MAX_TAPS_PER_MESSAGE, TapMessage, Topics, encode
from tests.backend.conftest import make_tap

TOPIC = Topics("faregate").taps("12-3")

pytestmark = pytest.mark.security


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deeply_nested_array_is_refused_not_raised(depth: int) -> None:
    payload = b"[" * depth + b"]" * depth
    (refused,) = parse(RawMessage(TOPIC, payload))
    assert isinstance(refused, Refused)
    assert "undecodable tap array" in refused.reason


def test_an_oversized_array_is_refused_before_its_elements_are_validated() -> None:
    payload = b"[" + b",".join([b"{}"] * (MAX_TAPS_PER_MESSAGE + 1)) + b"]"
    (refused,) = parse(RawMessage(TOPIC, payload))
    assert isinstance(refused, Refused)
    assert f"at most {MAX_TAPS_PER_MESSAGE}" in refused.reason


def test_one_hostile_element_is_refused_and_its_neighbours_kept() -> None:
    good = [encode(make_tap(seq)) for seq in (1, 2)]
    nested = b"[" * 150 + b"]" * 150
    payload = b"[" + good[0] + b"," + nested + b"," + good[1] + b"]"
    first, bad, second = parse(RawMessage(TOPIC, payload))
    assert isinstance(first, TapMessage) and first.seq == 1
    assert isinstance(bad, Refused)
    assert isinstance(second, TapMessage) and second.seq == 2
