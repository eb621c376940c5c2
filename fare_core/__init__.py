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
from typing import TYPE_CHECKING

from ._denylist_py import SNAPSHOT_HEADER_SIZE  # the snapshot file's format, the same for both cores
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

# Type checkers always take the first branch, so they see the twin's annotated classes and functions
# (the compiled modules mirror their signatures; tests run every caller over both).
if TYPE_CHECKING or NO_EXTENSIONS:
    from ._core_py import (
        CardRecord,
        Decision,
        FareTable,
        Sam,
        Tap,
        apply_write,
        decide,
        decode_slot,
        encode_slot,
        new_wallet,
        read_wallet,
        siphash24,
    )
    from ._denylist_py import DenyList, DenyListDelta

    #: "cython" when the compiled modules are in use, else "python".
    IMPLEMENTATION = "python"
else:
    try:  # _core cimports _denylist, so the two load (or fail) together
        from ._core import (
            CardRecord,
            Decision,
            FareTable,
            Sam,
            Tap,
            apply_write,
            decide,
            decode_slot,
            encode_slot,
            new_wallet,
            read_wallet,
            siphash24,
        )
        from ._denylist import DenyList, DenyListDelta

        IMPLEMENTATION = "cython"
    except ImportError:  # not built: the twin stands in
        from ._core_py import (
            CardRecord,
            Decision,
            FareTable,
            Sam,
            Tap,
            apply_write,
            decide,
            decode_slot,
            encode_slot,
            new_wallet,
            read_wallet,
            siphash24,
        )
        from ._denylist_py import DenyList, DenyListDelta

        IMPLEMENTATION = "python"


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
    "SNAPSHOT_HEADER_SIZE",
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
