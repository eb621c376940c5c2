"""The fare table artefact: exact round trips, and every corrupt, truncated or foreign blob refused."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from array import array
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fare_core
from fare_core import artefact
from fare_core.artefact import HEADER_SIZE, LAYOUT, MAGIC, checksum_of, pack, unpack
from fare_core.compiler import compile_rules
from fare_core.errors import FareTableError
from fare_core.reasons import Direction
from fare_core.record import CardRecord
from fare_core.rules import load_rules
from fare_core.table_data import (
    DENYLISTED_EXIT_LET_OUT,
    DENYLISTED_EXIT_REFUSE,
    MINUTES_PER_WEEK,
    TableData,
)

EXAMPLES = Path(fare_core.__file__).parent / "examples"


@pytest.fixture(scope="module")
def tiny() -> TableData:
    return compile_rules(load_rules(EXAMPLES / "tiny.toml"), 42, created_at=1_700_000_000)


@pytest.fixture(scope="module")
def tiny_blob(tiny: TableData) -> bytes:
    return pack(tiny)


def rehash(body: bytes) -> bytes:
    """A blob whose checksum is right for `body`, to reach the checks behind the checksum."""
    return body + hashlib.sha256(body).digest()


def test_round_trip_tiny(tiny: TableData, tiny_blob: bytes) -> None:
    assert unpack(tiny_blob) == tiny
    assert pack(unpack(tiny_blob)) == tiny_blob  # deterministic


def test_round_trip_guangzhou() -> None:
    table = compile_rules(load_rules(EXAMPLES / "guangzhou.toml"), 3, created_at=0)
    blob = pack(table)
    back = unpack(blob)
    assert back == table
    assert back.fares.typecode == "I" and back.station_ids.typecode == "H"
    assert json.loads(back.extra["station_names"])["114"].startswith("Tiyu Xilu")


def test_header_fields(tiny: TableData, tiny_blob: bytes) -> None:
    assert tiny_blob[:4] == MAGIC
    assert struct.unpack_from("<HHIq", tiny_blob, 4) == (LAYOUT, HEADER_SIZE, 42, 1_700_000_000)
    s, n, c, b = tiny.n_stations, tiny.n_networks, tiny.n_categories, tiny.n_bands
    assert struct.unpack_from("<HBBB", tiny_blob, 24) == (s, n, c, b)
    # the fares dominate: 4 bytes each, after station ids, their networks, networks' kinds and the week
    # then per category: caps, fares, minimum, monthly flags, tier starts, tiers (5 bytes each), the
    # networks' monthly bits; no offset changes or date overrides in tiny
    tiers = len(tiny.monthly_tier_from)
    arrays = (2 * s + s + n + MINUTES_PER_WEEK + 4 * b * c * s * s + 4 * b * c * n + 9 * n * n + 21 * c
              + 4 * c * s + 4 + 5 * tiers + c * n)
    labels = struct.unpack_from("<I", tiny_blob, 60)[0]
    assert len(tiny_blob) == HEADER_SIZE + arrays + labels + 32
    # little-endian on the wire: station id 50 is the fifth u16 after the header
    assert tiny_blob[HEADER_SIZE + 8:HEADER_SIZE + 10] == (50).to_bytes(2, "little")


def test_checksum_is_the_stored_sha256(tiny: TableData, tiny_blob: bytes) -> None:
    assert checksum_of(tiny_blob) == hashlib.sha256(tiny_blob[:-32]).hexdigest()
    assert tiny_blob[-32:] == hashlib.sha256(tiny_blob[:-32]).digest()
    other = pack(dataclasses.replace(tiny, version=tiny.version + 1))
    assert checksum_of(other) != checksum_of(tiny_blob)
    with pytest.raises(FareTableError, match="no checksum"):
        checksum_of(b"short")


def test_fare_table_loads_the_artefact(tiny_blob: bytes) -> None:
    table = fare_core.FareTable.from_bytes(tiny_blob)
    assert table.version == 42
    assert table.checksum == checksum_of(tiny_blob)


def test_every_truncation_is_refused(tiny_blob: bytes) -> None:
    for length in range(len(tiny_blob)):
        with pytest.raises(FareTableError):
            unpack(tiny_blob[:length])


def test_truncation_message(tiny_blob: bytes) -> None:
    with pytest.raises(FareTableError, match="truncated"):
        unpack(tiny_blob[:-1])
    with pytest.raises(FareTableError, match="truncated"):
        unpack(tiny_blob[:10])
    with pytest.raises(FareTableError, match="trailing bytes"):
        unpack(tiny_blob + b"\0")


def test_every_flipped_byte_is_refused(tiny_blob: bytes) -> None:
    blob = bytearray(tiny_blob)
    for i in range(len(blob)):
        for mask in (0x01, 0x80):
            blob[i] ^= mask
            with pytest.raises(FareTableError):
                unpack(bytes(blob))
            blob[i] ^= mask
    assert bytes(blob) == tiny_blob


def test_checksum_mismatch_message(tiny_blob: bytes) -> None:
    blob = bytearray(tiny_blob)
    blob[HEADER_SIZE + 500] ^= 1  # inside the week of time bands
    with pytest.raises(FareTableError, match="checksum mismatch"):
        unpack(bytes(blob))


def test_wrong_magic(tiny_blob: bytes) -> None:
    with pytest.raises(FareTableError, match="not a fare table"):
        unpack(rehash(b"PK\x03\x04" + tiny_blob[4:-32]))


def test_wrong_layout(tiny_blob: bytes) -> None:
    body = bytearray(tiny_blob[:-32])
    struct.pack_into("<H", body, 4, LAYOUT + 1)
    with pytest.raises(FareTableError, match=f"layout {LAYOUT + 1} is not supported .*reads layouts 1, 2"):
        unpack(rehash(bytes(body)))
    struct.pack_into("<H", body, 4, 0)
    with pytest.raises(FareTableError, match="layout 0 is not supported"):
        unpack(rehash(bytes(body)))


def test_wrong_header_size(tiny_blob: bytes) -> None:
    body = bytearray(tiny_blob[:-32])
    struct.pack_into("<H", body, 6, 80)
    with pytest.raises(FareTableError, match="header size"):
        unpack(rehash(bytes(body)))


def test_inconsistent_contents_behind_a_good_checksum(tiny: TableData, tiny_blob: bytes) -> None:
    s = tiny.n_stations
    body = bytearray(tiny_blob[:-32])
    body[HEADER_SIZE + 3 * s + tiny.n_networks] = 9  # Monday 00:00 in band 9 of 2
    with pytest.raises(FareTableError, match="inconsistent: band_of_minute"):
        unpack(rehash(bytes(body)))

    body = bytearray(tiny_blob[:-32])
    body[HEADER_SIZE + 2 * s] = 200  # the first station on network 200
    with pytest.raises(FareTableError, match="inconsistent: station_network"):
        unpack(rehash(bytes(body)))

    body = bytearray(tiny_blob[:-32])
    struct.pack_into("<H", body, HEADER_SIZE + 2, 1)  # two stations with id 1
    with pytest.raises(FareTableError, match="duplicate station id"):
        unpack(rehash(bytes(body)))


def test_rule_fields_in_the_header_and_the_last_array(tiny: TableData, tiny_blob: bytes) -> None:
    # offset 52: what a deny-listed phone gets at an exit; the per-category minimum closes layout 2's
    # arrays, before layout 3's monthly schemes and weekly caps (tiny has no offset changes or overrides)
    assert struct.unpack_from("<I", tiny_blob, 52) == (DENYLISTED_EXIT_LET_OUT,)
    labels = struct.unpack_from("<I", tiny_blob, 60)[0]
    c, n, tiers = tiny.n_categories, tiny.n_networks, len(tiny.monthly_tier_from)
    end = len(tiny_blob) - 32 - labels - (c + 4 * (c + 1) + 5 * tiers + c * n + 4 * c)
    assert struct.unpack_from(f"<{c}I", tiny_blob, end - 4 * c) == (200, 200, 0, 200)  # senior is free
    refusing = dataclasses.replace(tiny, denylisted_exit=DENYLISTED_EXIT_REFUSE)
    assert unpack(pack(refusing)).denylisted_exit == DENYLISTED_EXIT_REFUSE

    body = bytearray(tiny_blob[:-32])
    struct.pack_into("<I", body, 52, 2)
    with pytest.raises(FareTableError, match="inconsistent: denylisted_exit: 2"):
        unpack(rehash(bytes(body)))


def test_layout_1_artefact_still_loads(tiny: TableData) -> None:
    """tiny.toml compiled (version 41) by the build before layout 2, kept as its bytes: it loads with
    its one minimum for the categories that pay, none for the free senior, and deny-listed phones let
    out; everything else as it was."""
    blob = (Path(__file__).parent / "data" / "tiny_layout1.fgt").read_bytes()
    assert struct.unpack_from("<H", blob, 4) == (1,)
    old = unpack(blob)
    assert old.category_names == ("adult", "student", "senior", "staff")
    assert list(old.min_entry_balance) == [200, 200, 0, 200]
    assert old.denylisted_exit == DENYLISTED_EXIT_LET_OUT
    # the rules digest differs: the rules model gained fields since; its month turned at the service
    # day's start (04:00), as tables before layout 3 did
    same = dataclasses.replace(tiny, version=41, extra=old.extra, month_start_min=240)
    assert old == same
    assert checksum_of(blob) == hashlib.sha256(blob[:-32]).hexdigest()
    assert pack(old) != blob and unpack(pack(old)) == old  # written again, it is layout 3


def test_layout_1_artefact_decides_as_the_rules_do_now(impl: Any) -> None:
    core = impl.core
    sam = core.Sam(bytes(16))
    table = core.FareTable.from_bytes((Path(__file__).parent / "data" / "tiny_layout1.fgt").read_bytes())
    when = 1_795_500_000
    for category, balance, allowed in ((2, 0, True), (0, 150, False), (0, 200, True)):
        wallet = core.new_wallet(CardRecord(card_id=7, category=category, balance=balance), sam)
        out = core.decide(wallet, core.Tap(7, 1, Direction.ENTRY, when), table, impl.denylist.DenyList(), sam)
        assert out.allowed is allowed, (category, balance, out)


def _relabel(tiny_blob: bytes, labels: bytes) -> bytes:
    old = struct.unpack_from("<I", tiny_blob, 60)[0]
    body = bytearray(tiny_blob[:-32 - old] + labels)
    struct.pack_into("<I", body, 60, len(labels))
    return rehash(bytes(body))


def test_bad_labels_behind_a_good_checksum(tiny_blob: bytes) -> None:
    labels = json.loads(tiny_blob[-32 - struct.unpack_from("<I", tiny_blob, 60)[0]:-32])
    assert _relabel(tiny_blob, json.dumps(labels).encode()) != tiny_blob  # the helper itself works
    unpack(_relabel(tiny_blob, json.dumps(labels).encode()))
    with pytest.raises(FareTableError, match="inconsistent"):
        unpack(_relabel(tiny_blob, b"{not json"))
    with pytest.raises(FareTableError, match="inconsistent"):
        unpack(_relabel(tiny_blob, b"\xff\xfe"))
    with pytest.raises(FareTableError, match="inconsistent"):
        unpack(_relabel(tiny_blob, json.dumps({**labels, "categories": ["adult"]}).encode()))
    with pytest.raises(FareTableError, match="inconsistent"):
        unpack(_relabel(tiny_blob, json.dumps({k: v for k, v in labels.items() if k != "bands"}).encode()))
    with pytest.raises(FareTableError, match="inconsistent"):
        unpack(_relabel(tiny_blob, b"[]"))


def test_pack_refuses_an_inconsistent_table(tiny: TableData) -> None:
    with pytest.raises(FareTableError, match="fares"):
        pack(dataclasses.replace(tiny, fares=array("I", [1, 2, 3])))
    with pytest.raises(FareTableError, match="header"):
        pack(dataclasses.replace(tiny, created_at=2**70))


def test_big_endian_host_swaps(monkeypatch: pytest.MonkeyPatch, tiny: TableData, tiny_blob: bytes) -> None:
    """Pretend the host is big-endian: native arrays are swapped on the way out and back in."""
    monkeypatch.setattr(artefact, "_BIG_ENDIAN", True)
    swapped = pack(tiny)
    assert swapped != tiny_blob
    assert swapped[HEADER_SIZE + 8:HEADER_SIZE + 10] == (50).to_bytes(2, "big")
    assert unpack(swapped) == tiny


# --- property: any small consistent table survives the round trip ---

@st.composite
def tables(draw: st.DrawFn) -> TableData:
    s = draw(st.integers(1, 4))
    n = draw(st.integers(1, 3))
    c = draw(st.integers(1, 3))
    b = draw(st.integers(1, 3))
    u32 = st.integers(0, 0xFFFFFFFF)

    def u32s(count: int) -> array[int]:
        return array("I", draw(st.lists(u32, min_size=count, max_size=count)))

    def small(count: int, below: int) -> bytes:
        return bytes(draw(st.lists(st.integers(0, below - 1), min_size=count, max_size=count)))

    def caps(count: int) -> array[int]:
        return array("I", draw(st.lists(st.integers(0, 0xFFFF), min_size=count, max_size=count)))

    def rising(values: list[int]) -> list[int]:
        return sorted(set(values))

    def schemes(c: int, n: int) -> dict[str, object]:
        """Monthly tiers, weekly caps, offset changes, date overrides and an overdraft (layout 3)."""
        per = [rising(draw(st.lists(u32, max_size=3))) for _ in range(c)]
        first = [0]
        for tiers in per:
            first.append(first[-1] + len(tiers))
        changes = rising(draw(st.lists(u32, max_size=4)))
        days = rising(draw(st.lists(st.integers(0, 40000), max_size=4)))
        return dict(
            month_start_min=draw(st.integers(0, 1439)), monthly_flags=small(c, 4),
            monthly_tier_first=array("I", first), monthly_tier_from=array("I", [x for t in per for x in t]),
            monthly_tier_percent=small(first[-1], 101), monthly_networks=small(c * n, 4),
            weekly_cap=caps(c), week_rolling=draw(st.sampled_from((0, 1))),
            offset_change_at=array("I", changes),
            offset_change_min=array("i", draw(st.lists(st.integers(-1439, 1439), min_size=len(changes),
                                                       max_size=len(changes)))),
            date_override_day=array("I", days), date_override_as=small(len(days), 7),
            overdraft_limit=draw(st.integers(0, 0x7FFFFFFF)), overdraft_taps=draw(st.integers(0, 3)))

    name = st.text(min_size=1, max_size=8)
    band_values = draw(st.lists(st.integers(0, b - 1), min_size=1, max_size=4))
    return TableData(
        version=draw(u32), created_at=draw(st.integers(-(2**40), 2**40)), name=draw(name),
        utc_offset_min=draw(st.integers(-1439, 1439)), day_start_min=draw(st.integers(0, 1439)),
        station_ids=array("H", draw(st.lists(st.integers(1, 0xFFFF), min_size=s, max_size=s, unique=True))),
        station_network=small(s, n), network_names=tuple(draw(st.lists(name, min_size=n, max_size=n))),
        network_flat=small(n, 2), category_names=tuple(draw(st.lists(name, min_size=c, max_size=c))),
        band_names=tuple(draw(st.lists(name, min_size=b, max_size=b))),
        band_of_minute=bytes(band_values[i % len(band_values)] for i in range(MINUTES_PER_WEEK)),
        fares=u32s(b * c * s * s), flat_fares=u32s(b * c * n), transfer_discount=u32s(n * n),
        transfer_percent=small(n * n, 101), transfer_window_s=u32s(n * n),
        max_transfers=draw(st.integers(0, 254)),
        daily_cap=caps(c), **schemes(c, n),
        max_inside_s=draw(u32), overstay_surcharge=draw(u32), same_station_window_s=draw(u32),
        same_station_fare=u32s(c), missing_exit_fare=u32s(c * s), anti_passback_s=draw(u32),
        min_entry_balance=array("I", draw(st.lists(st.integers(0, 0x7FFFFFFF), min_size=c, max_size=c))),
        max_balance=draw(st.integers(0, 0x7FFFFFFF)), denylisted_exit=draw(st.sampled_from((0, 1))),
        extra=draw(st.dictionaries(name, st.text(max_size=20), max_size=3)),
    )


@settings(max_examples=100, deadline=None)
@given(tables())
def test_round_trip_property(table: TableData) -> None:
    blob = pack(table)
    assert unpack(blob) == table
    assert pack(unpack(blob)) == blob


@settings(max_examples=60, deadline=None)
@given(tables(), st.data())
def test_random_corruption_property(table: TableData, data: st.DataObject) -> None:
    blob = bytearray(pack(table))
    position = data.draw(st.integers(0, len(blob) - 1))
    blob[position] ^= data.draw(st.integers(1, 255))
    with pytest.raises(FareTableError):
        unpack(bytes(blob))
