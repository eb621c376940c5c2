"""The compiled core holds exactly the codes the Python definitions say, and writes none of its own.

The expected values are built here from reasons.py, record.py and table_data.py directly, not through
the generator (fare_core/_codes.py), so a generator that dropped or renamed a value fails too.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import fare_core
from fare_core import record, table_data
from fare_core.reasons import DENY_FROM, Direction, Flag, GateMode, Reason


def _python_definitions() -> dict[str, int]:
    expected: dict[str, int] = {"DENY_FROM": DENY_FROM}
    for prefix, enum in (("R_", Reason), ("F_", Flag), ("MODE_", GateMode), ("DIR_", Direction)):
        expected.update((prefix + name, member.value) for name, member in enum.__members__.items())
    for name in ("LAYOUT", "SLOT_SIZE", "WALLET_SIZE", "MAC_OFFSET", "NO_NETWORK", "STATUS_ACTIVE",
                 "STATUS_BLOCKED", "FLAG_ENTRY_OPEN", "DAYS_1970_TO_2000", "U32_MAX", "U16_MAX", "U8_MAX"):
        expected[name] = getattr(record, name)
    for name in ("DENYLISTED_EXIT_LET_OUT", "DENYLISTED_EXIT_REFUSE", "MONTHLY_BY_RIDES",
                 "MONTHLY_SURCHARGES_COUNT", "MONTH_COUNTS", "MONTH_DISCOUNTED", "OVERDRAFT_EXIT",
                 "OVERDRAFT_BOARDING"):
        expected[name] = getattr(table_data, name)
    expected.update((f"OFF_{field.upper()}", offset) for field, offset in record.FIELD_OFFSETS.items())
    expected["OFF_LAYOUT1_DAY_SPENT"] = record.LAYOUT1_DAY_SPENT.start
    return expected


def test_compiled_codes_equal_the_python_definitions() -> None:
    # implementations() loads the compiled module even when the twin is forced, so this runs in both CI
    # passes; only a machine without the build skips it (CI builds it and insists).
    if "cython" not in fare_core.implementations():
        if os.environ.get("CI") == "true":
            pytest.fail("the compiled core is not built and CI=true")
        pytest.skip("the compiled core is not built")
    compiled_core = fare_core.implementations()["cython"][0]
    compiled = compiled_core.SHARED_CODES
    expected = _python_definitions()
    assert sorted(compiled) == sorted(expected), "rebuild: pip install -e ."
    different = {name: (compiled[name], value) for name, value in expected.items() if compiled[name] != value}
    assert not different, f"compiled core is stale (compiled, python): {different}; rebuild with pip"
    # The slot layout the offsets describe is the one the codec packs.
    body = record.CardRecord(card_id=0x0102030405060708, counter=0x0A0B0C0D).body()
    assert body[compiled["OFF_CARD_ID"]:compiled["OFF_CARD_ID"] + 8] == bytes.fromhex("0807060504030201")
    assert body[compiled["OFF_COUNTER"]:compiled["OFF_COUNTER"] + 4] == bytes.fromhex("0d0c0b0a")


def test_core_pyx_declares_no_shared_code_itself() -> None:
    source = (Path(fare_core.__file__).parent / "_core.pyx").read_text(encoding="utf-8")
    assert 'include "_codes.pxi"' in source
    names = "|".join(sorted(_python_definitions(), key=len, reverse=True))
    declared = re.findall(rf"^\s*(?:cdef\s+\w+\s+)?({names})\s*=", source, flags=re.MULTILINE)
    assert not declared, f"_core.pyx writes shared codes by hand: {declared}"
