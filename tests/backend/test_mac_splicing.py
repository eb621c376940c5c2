"""MAC splicing: a forged tap in an array must not borrow the MAC check of a genuine tap's bytes.

The ingest's fast path checks a tap's MAC over the bytes it arrived as (no re-serialisation). Before
this fix those bytes were found by cutting the array on `},{` and taking piece i for element i, with
nothing tying piece i to the element parsed as tap i: a rejected element carrying nested arrays, or
elements separated by `}, {`, or a duplicate key whose discarded value holds objects, shifted the
pieces so that a forged tap (the genuine tap's MAC, other content) was checked over the genuine
tap's bytes and stored. Now each tap is parsed FROM the bytes its MAC is checked over, or verified on
its re-serialised canonical form (backend/ingest/store.py parse_raw, authn.tap_refusals).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from backend.ingest import authn
from backend.ingest.store import RawMessage, TapStore, parse_raw
from backend.tables import TapRow
from protocol.mqtt import TapMessage, Topics, encode
from tests.backend.conftest import make_tap

pytestmark = pytest.mark.security

TOPIC = Topics("t").taps("7-1")
KEYS = authn.gate_keys(None)


def genuine(seq: int, **fields: Any) -> TapMessage:
    return make_tap(seq, station_id=7, gate_no=1, **fields)


def forged_from(real: TapMessage, seq: int = 999) -> bytes:
    """Tap 7-1:`seq` with fare 0 carrying `real`'s (genuine) MAC: a forgery of other content."""
    return encode(make_tap(seq, station_id=7, gate_no=1, fare=0, balance_after=1000, mac=real.mac))


async def stored_ids(sessions: Any) -> set[str]:
    async with sessions() as session:
        return set((await session.execute(select(TapRow.tap_id))).scalars())


async def store(migrated: Any, *payloads: bytes) -> set[str]:
    _database, _engine, sessions = migrated
    await TapStore(sessions).store([RawMessage(TOPIC, p) for p in payloads])
    return await stored_ids(sessions)


REAL = genuine(5, fare=200, balance_after=800)  # the genuine tap whose MAC the forgery reuses
G, F = encode(REAL), forged_from(REAL)  # its bytes; the forgery 7-1:999 with fare 0 and REAL's MAC
COVER = encode(genuine(6))  # another genuine tap, whose fields follow a duplicate key


def _g(inside: bytes) -> bytes:
    return inside.replace(b"G", G)


#: Each lines a naive cut on `},{` up so that the piece where the forgery is parsed is G's bytes.
SPLICES = {
    # the reviewer's PoC: [{"z":[{},{genuine},{}]},{forged},1,{"x":0}]
    "reviewer": _g(b'[{"z":[{},G,{}]},') + F + b',1,{"x":0}]',
    # the same with whitespace between the later elements (fewer cuts, the count still lines up)
    "whitespace": _g(b'[{"z":[{},G,{}]},') + F + b', {"x":0}, {"y":0}]',
    # nested arrays inside the rejected element
    "nested arrays": _g(b'[{"a":[[{},G,{}],[[]]]},') + F + b',1,{"x":0}]',
    # a duplicate key (`fare`, last wins) whose discarded value hides G in a valid tap
    "duplicate key": _g(b'[{"fare":[{},G,{}],') + COVER[1:] + b"," + F + b',1,{"x":0}]',
    # every element a valid tap: duplicate key and `}, {` between elements
    "all valid taps": _g(b'[{"fare":[{},G,{}],') + COVER[1:] + b"," + F + b", "
    + b", ".join(encode(genuine(seq)) for seq in (7, 8)) + b"]",
}
SPLICE_GENUINE = {"reviewer": set(), "whitespace": set(), "nested arrays": set(),
                  "duplicate key": {"7-1:6"}, "all valid taps": {"7-1:6", "7-1:7", "7-1:8"}}


@pytest.mark.parametrize("name", SPLICES)
def test_a_spliced_forgery_fails_the_mac_check(name: str) -> None:
    parsed = parse_raw(RawMessage(TOPIC, SPLICES[name]))
    forged = [i for i, (tap, _) in enumerate(parsed) if isinstance(tap, TapMessage) and tap.seq == 999]
    assert len(forged) == 1
    reasons = authn.tap_refusals(KEYS, parsed)
    assert reasons[forged[0]] is not None and "bad MAC" in reasons[forged[0]]
    # the fast path agrees with the slow one (the canonical form of each parsed tap) on every element
    assert reasons == [authn.refusal(KEYS, tap) if isinstance(tap, TapMessage) else None for tap, _ in parsed]


@pytest.mark.parametrize("name", SPLICES)
async def test_a_spliced_forgery_is_not_stored_and_the_genuine_taps_are(migrated: Any, name: str) -> None:
    ids = await store(migrated, SPLICES[name])
    assert "7-1:999" not in ids
    assert ids == SPLICE_GENUINE[name]
    # the genuine tap whose MAC was borrowed is stored as it was sent when it comes on its own
    assert await store(migrated, G) == SPLICE_GENUINE[name] | {"7-1:5"}


@pytest.mark.parametrize("separator", [b", ", b",\n", b" ,\t"])
async def test_whitespace_between_genuine_elements_is_verified_the_slow_way(
        migrated: Any, separator: bytes) -> None:
    payload = b"[" + separator.join([encode(genuine(2)), F, G]) + b"]"
    assert all(raw is None for _, raw in parse_raw(RawMessage(TOPIC, payload)))  # no cut attempted
    assert await store(migrated, payload) == {"7-1:2", "7-1:5"}


@pytest.mark.parametrize("array", [False, True])
async def test_duplicate_keys_cannot_change_a_genuine_tap(migrated: Any, array: bool) -> None:
    real = genuine(1, fare=200, balance_after=800)
    body = encode(real)
    # the genuine bytes with its seq, tap id and fare overridden by later duplicates (last wins)
    cut = body.rindex(b',"mac"')
    twisted = body[:cut] + b',"seq":999,"tap_id":"7-1:999","fare":0' + body[cut:]
    payload = b"[" + twisted + b"," + encode(genuine(2)) + b"]" if array else twisted
    ids = await store(migrated, payload)
    assert "7-1:999" not in ids and "7-1:1" not in ids
    assert ids == ({"7-1:2"} if array else set())


async def test_a_gates_own_arrays_still_take_the_fast_path(migrated: Any) -> None:
    taps = [genuine(seq) for seq in range(1, 6)]
    payload = b"[" + b",".join(encode(t) for t in taps) + b"]"
    parsed = parse_raw(RawMessage(TOPIC, payload))
    assert [raw for _, raw in parsed] == [encode(t) for t in taps]  # each tap bound to its own bytes
    assert await store(migrated, payload) == {t.tap_id for t in taps}


# --- property: any mix of genuine and forged elements, separators and hostile elements ----------------

_element = st.one_of(
    st.tuples(st.just("genuine"), st.integers(1, 50)),
    st.tuples(st.just("forged"), st.integers(1, 50)),
    st.tuples(st.just("hostile"), st.sampled_from(
        [b'{"z":[{},{}]}', b"1", b'{"x":0}', b"[]", b'{"fare":[{},{}]}', b'"},{"'])),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(elements=st.lists(_element, min_size=1, max_size=8),
       separators=st.lists(st.sampled_from([b",", b", ", b"\n,", b","]), min_size=8, max_size=8),
       wrap=st.booleans())
def test_a_mixed_array_authenticates_each_element_on_its_own(
        elements: list[tuple[str, Any]], separators: list[bytes], wrap: bool) -> None:
    """Whatever the layout, a tap passes the MAC check exactly when its own content is genuine."""
    parts: list[bytes] = []
    for kind, value in elements:
        if kind == "genuine":
            parts.append(encode(genuine(value)))
        elif kind == "forged":  # another tap's genuine MAC on content of its own
            parts.append(forged_from(genuine(value), 900 + value))
        else:
            parts.append(value)
            if wrap and value.startswith(b"{") and value.endswith(b"}") and len(value) > 2:
                # the genuine tap of the next element hidden inside it (the splicing PoC's shape)
                parts[-1] = value[:-1] + b',"y":[{},' + encode(genuine(value.count(b"{") + 40)) + b",{}]}"
    payload = b"[" + b"".join(p + separators[i] for i, p in enumerate(parts[:-1])) + parts[-1] + b"]"
    parsed = parse_raw(RawMessage(TOPIC, payload))
    reasons = authn.tap_refusals(KEYS, parsed)
    for (tap, _), reason in zip(parsed, reasons, strict=True):
        if isinstance(tap, TapMessage):
            assert (reason is None) == (tap.seq < 900), (payload, tap.tap_id, reason)
