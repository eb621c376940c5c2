"""Re-run fare_core.decide on a reported tap and compare with what the gate did.

The gate reports the wallet bytes it read, the tap context, and the fare-table and deny-list versions
it used; with the same SAM key the backend computes the same decision. A different fare, balance,
counter or verdict means a wrong table on the gate, a gate bug, or a forged report.
"""

from __future__ import annotations

from dataclasses import dataclass

import fare_core
from fare_core.reasons import Flag, Reason

from .tables import TapRow


@dataclass(frozen=True)
class Mismatch:
    field: str
    gate: int
    backend: int

    def __str__(self) -> str:
        return f"{self.field}: gate {self.gate}, backend {self.backend}"


def expected_decision(
    tap: TapRow,
    table: fare_core.FareTable,
    denied: bool,
    sam: fare_core.Sam,
    *,
    topup: int = 0,
    unblock: bool = False,
    action_id: int = 0,
) -> fare_core.Decision:
    """The decision fare_core makes for this tap (deny-list reduced to the one fact that matters);
    `action_id` is the ActionRow's id the wallet checks against its last_action (0: none)."""
    card_id = int(tap.card_id, 16)
    denylist = fare_core.DenyList([card_id] if denied else [], version=tap.denylist_version)
    context = fare_core.Tap(
        card_id,
        tap.station_id,
        tap.direction,
        int(tap.time.timestamp()),
        gate_no=tap.gate_no,
        mode=tap.mode,
        min_counter=tap.min_counter,
        topup=topup,
        unblock=unblock,
        action_id=action_id,
    )
    return fare_core.decide(bytes(tap.wallet_before), context, table, denylist, sam)


def compare(tap: TapRow, decision: fare_core.Decision) -> list[Mismatch]:
    """Every field where the gate's report differs from the backend's decision."""
    found = []
    if tap.reason in (Reason.TWO_CARDS, Reason.READ_FAILED):  # decided by the gate, not by decide()
        return []
    if tap.flags & Flag.RECOVERED:  # the gate let a re-tap through on its own landed write: no decide()
        return []
    pairs = [
        ("allowed", tap.allowed, bool(decision.allowed)),
        ("reason", tap.reason, decision.reason),
        ("fare", tap.fare, decision.fare),
        ("balance_after", tap.balance_after, decision.balance_after),
    ]
    if decision.record is not None:
        pairs.append(("counter_after", tap.counter_after, decision.counter))
    for name, gate_value, backend_value in pairs:
        if gate_value != backend_value:
            found.append(Mismatch(name, gate_value, backend_value))
    return found
