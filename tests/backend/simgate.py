"""A gate in a few lines for backend tests: fare_core decides, the wallet is rewritten, a TapMessage is built.

The real gate controller is another package; this one exists so reconciliation is tested against taps
made by the real fare_core (honest ones, and deliberately wrong or cloned ones).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fare_core
from fare_core import DEVELOPMENT_SAM_KEY
from fare_core.artefact import pack
from fare_core.compiler import compile_rules
from fare_core.reasons import Direction, GateMode, Reason
from fare_core.record import CardRecord
from fare_core.rules import load_rules
from protocol.mqtt import TapMessage, tap_id

TINY = Path(fare_core.__file__).with_name("examples") / "tiny.toml"
SAM_KEY = DEVELOPMENT_SAM_KEY.hex()  # the development default in backend.config


def tiny_artefact(version: int = 1) -> bytes:
    return pack(compile_rules(load_rules(TINY), version, created_at=1_700_000_000))


@dataclass
class SimGate:
    station_id: int
    gate_no: int = 1
    table_blob: bytes = field(default_factory=tiny_artefact)
    seq: int = 0

    def __post_init__(self) -> None:
        self.table = fare_core.FareTable.from_bytes(self.table_blob)
        self.sam = fare_core.Sam(bytes.fromhex(SAM_KEY))
        self.denylist = fare_core.DenyList([], version=0)

    def tap(
        self, wallet: bytes, card_id: int, direction: Direction, when: datetime, **lie: Any
    ) -> tuple[TapMessage, bytes]:
        """Decide like a gate; `lie` overrides fields of the report (to make a dishonest gate)."""
        context = fare_core.Tap(
            card_id, self.station_id, direction, int(when.timestamp()), gate_no=self.gate_no
        )
        decision = fare_core.decide(wallet, context, self.table, self.denylist, self.sam)
        record, _ = fare_core.read_wallet(wallet, card_id, self.sam)
        self.seq += 1
        new_wallet = wallet
        if decision.record is not None:
            new_wallet = fare_core.apply_write(wallet, decision.slot, decision.record)
        values: dict[str, Any] = {
            "tap_id": tap_id(self.station_id, self.gate_no, self.seq),
            "station_id": self.station_id,
            "gate_no": self.gate_no,
            "seq": self.seq,
            "card_id": card_id,
            "time": when,
            "direction": direction,
            "mode": GateMode.NORMAL,
            "allowed": bool(decision.allowed),
            "reason": Reason(decision.reason),
            "flags": decision.flags,
            "fare": decision.fare,
            "balance_before": decision.balance_before,
            "balance_after": decision.balance_after,
            "counter_before": record.counter,
            "counter_after": decision.counter if decision.record is not None else record.counter,
            "wallet_before": wallet.hex(),
            "fare_table_version": self.table.version,
            "denylist_version": self.denylist.version,
            "min_counter": 0,
            "latency_us": 100,
        }
        values.update(lie)
        return TapMessage(**values), new_wallet


def new_phone(card_id: int, balance: int = 5000) -> bytes:
    sam = fare_core.Sam(bytes.fromhex(SAM_KEY))
    return fare_core.new_wallet(CardRecord(card_id=card_id, balance=balance, counter=1), sam)


def at(hour: int, minute: int = 0, day: int = 24) -> datetime:
    """A UTC time on 2026-11-(day) (a Tuesday for 24): 02:00 UTC is 10:00 in Guangzhou (off-peak)."""
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)
