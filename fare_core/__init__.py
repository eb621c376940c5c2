"""fare_core: the fare, deny-list and card-record core, compiled with a pure-Python twin.

The selector below follows the aio-libs pattern: the compiled modules are used unless they failed to
build or FARE_CORE_NO_EXTENSIONS is set (to anything but "" or "0"), in which case the twins
(`_core_py`, `_denylist_py`) are. Import everything from `fare_core`, never from the private modules.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from types import ModuleType

from .errors import (
    DenyListBaseMismatch,
    DenyListChecksumMismatch,
    DenyListCorrupt,
    DenyListError,
    DenyListStale,
    FareCoreError,
    FareTableError,
    WalletError,
)
from .reasons import Direction, Flag, GateMode, Reason
from .table_data import TableData

NO_EXTENSIONS = os.environ.get("FARE_CORE_NO_EXTENSIONS", "") not in ("", "0")

#: The SAM master key of development: the simulator issues wallets under it, and the gate and backend
#: use it by default. Their configurations refuse it outside development.
DEVELOPMENT_SAM_KEY = bytes(range(16))


def _load(compiled: str, twin: str) -> tuple[ModuleType, bool]:
    if not NO_EXTENSIONS:
        try:
            return importlib.import_module(f"{__name__}.{compiled}"), True
        except ImportError:
            pass
    return importlib.import_module(f"{__name__}.{twin}"), False


_core, _core_compiled = _load("_core", "_core_py")
_denylist, _denylist_compiled = _load("_denylist", "_denylist_py")

#: "cython" when both compiled modules are in use, else "python".
IMPLEMENTATION = "cython" if (_core_compiled and _denylist_compiled) else "python"

Sam = _core.Sam
Tap = _core.Tap
Decision = _core.Decision
CardRecord = _core.CardRecord
FareTable = _core.FareTable
decide = _core.decide
siphash24 = _core.siphash24
encode_slot = _core.encode_slot
decode_slot = _core.decode_slot
read_wallet = _core.read_wallet
new_wallet = _core.new_wallet
apply_write = _core.apply_write
DenyList = _denylist.DenyList
DenyListDelta = _denylist.DenyListDelta


def implementations() -> dict[str, tuple[ModuleType, ModuleType]]:
    """Every importable implementation as {name: (core module, deny-list module)}, for tests and bench."""
    found: dict[str, tuple[ModuleType, ModuleType]] = {
        "python": (importlib.import_module(f"{__name__}._core_py"),
                   importlib.import_module(f"{__name__}._denylist_py")),
    }
    with contextlib.suppress(ImportError):  # not built: only the twin is offered
        found["cython"] = (importlib.import_module(f"{__name__}._core"),
                           importlib.import_module(f"{__name__}._denylist"))
    return found


__all__ = [
    "DEVELOPMENT_SAM_KEY",
    "IMPLEMENTATION",
    "CardRecord",
    "Decision",
    "DenyList",
    "DenyListBaseMismatch",
    "DenyListChecksumMismatch",
    "DenyListCorrupt",
    "DenyListDelta",
    "DenyListError",
    "DenyListStale",
    "Direction",
    "FareCoreError",
    "FareTable",
    "FareTableError",
    "Flag",
    "GateMode",
    "Reason",
    "Sam",
    "TableData",
    "Tap",
    "WalletError",
    "apply_write",
    "decide",
    "decode_slot",
    "encode_slot",
    "implementations",
    "new_wallet",
    "read_wallet",
    "siphash24",
]
