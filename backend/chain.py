"""A card's history as a chain of wallet counters: the order of its taps, and what settles an
unconfirmed write. Pure functions over TapRow, no database: the processor feeds them.

Every write a wallet accepts moves its counter by one, so the counter orders a card's taps whatever
the gates' clocks say and whenever their reports arrive: by (counter_before, writes last, seq, gate).
A read that wrote nothing (a denial) at counter c sorts before the write from c, since the write
moved the wallet past what that read saw.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from fare_core.reasons import Flag, Reason

from .tables import TapRow

ChainKey = tuple[int, bool, int, str]


def writes(tap: TapRow) -> bool:
    return tap.counter_after > tap.counter_before


def is_unconfirmed(tap: TapRow) -> bool:
    return bool(tap.flags & Flag.UNCONFIRMED)


def is_recovered(tap: TapRow) -> bool:
    return bool(tap.flags & Flag.RECOVERED)


def is_link(tap: TapRow) -> bool:
    """Does the tap tell the wallet's state at its counter? Not a RECOVERED re-tap (it rides on the
    unconfirmed tap it found landed), nor a wallet with no valid record (BAD_MAC: counter and balance
    read as 0, which would otherwise sort first and pose as the card's opening)."""
    return not is_recovered(tap) and tap.reason != Reason.BAD_MAC


def chain_key(tap: TapRow) -> ChainKey:
    """Where a tap sits in its card's chain: never the gate's clock."""
    return (tap.counter_before, writes(tap), tap.seq, tap.gate_id)


class Landing(StrEnum):
    PENDING = "unconfirmed"  # TapRow.reconciled while nothing has told yet
    LANDED = "unconfirmed_landed"
    VOIDED = "unconfirmed_not_landed"


def stands(tap: TapRow) -> bool:
    """A write the wallet took, as far as the back office knows: confirmed, or unconfirmed and settled
    as landed. Two that stand on one counter with different records are two handsets (a clone)."""
    return writes(tap) and (not is_unconfirmed(tap) or tap.reconciled == Landing.LANDED.value)


def _after(tap: TapRow, unconfirmed: TapRow) -> bool:
    """Did this read happen after the unconfirmed tap? The same gate says so by its seq; another gate
    only by its clock (a read at the old counter is the one fact the counter cannot order)."""
    if tap.gate_id == unconfirmed.gate_id:
        return tap.seq > unconfirmed.seq
    return tap.time > unconfirmed.time


def same_write(a: TapRow, b: TapRow) -> bool:
    """Two writes that left the same record: from one counter, to one balance, stamped with one station
    and second (a retry in the same second). A wallet holding that record cannot tell them apart."""
    return (a.counter_before == b.counter_before and a.counter_after == b.counter_after
            and a.balance_after == b.balance_after and a.station_id == b.station_id
            and int(a.time.timestamp()) == int(b.time.timestamp()))


def landing(unconfirmed: TapRow, taps: Iterable[TapRow], proof: TapRow | None = None,
            proven: Iterable[TapRow] = ()) -> tuple[Landing, str]:
    """Whether an unconfirmed write landed, from the card's other taps, and the tap that tells.

    Landed, first: `proof`, a tap whose wallet was checked under the SAM key to hold the very record
    the write made (a RECOVERED re-tap, or the next tap of the handset that holds it). A record is
    stamped with its station and second, so this holds even when another handset of a cloned card
    wrote from the same counter; only a write that left the identical record outranks it.
    Not landed: a wallet seen at the unconfirmed tap's counter_before afterwards — a confirmed write
    from that counter (it could not have read the old counter had the write landed), or a read there
    after it. This wins over the last rule, because a retry that wrote the same counter is what a later
    tap then reads. Not landed either: another unconfirmed write from that counter, with another record,
    is `proven` landed (its own proof): a handset moves past a counter once, so the later read that
    would count for this write is that one's (two gates' clocks may not order the two writes; a clone's
    fork, if that is what it was, still lands by its own proof when one comes). Landed: a later tap
    read counter_after or above."""
    voided_by: list[TapRow] = []
    seen: TapRow | None = None
    for tap in taps:
        if tap is unconfirmed or tap.tap_id == unconfirmed.tap_id or not is_link(tap):
            continue
        if tap.counter_before == unconfirmed.counter_before:
            if (writes(tap) and not is_unconfirmed(tap)) or _after(tap, unconfirmed):
                voided_by.append(tap)
        elif tap.counter_before >= unconfirmed.counter_after and seen is None:
            seen = tap
    if proof is not None and not any(writes(tap) and same_write(tap, unconfirmed) for tap in voided_by):
        found = "re-tap" if is_recovered(proof) else "tap"
        why = f"{found} {proof.tap_id} found the write on the wallet"
        if voided_by:
            why += f" (tap {voided_by[0].tap_id} wrote from it on another handset)"
        return Landing.LANDED, why
    if voided_by:
        tap = voided_by[0]
        return Landing.VOIDED, f"tap {tap.tap_id} read counter {tap.counter_before} after it"
    sibling = next((tap for tap in proven if tap.tap_id != unconfirmed.tap_id
                    and tap.counter_before == unconfirmed.counter_before
                    and not same_write(tap, unconfirmed)), None)
    if sibling is not None:
        return Landing.VOIDED, (f"tap {sibling.tap_id}, written from counter {sibling.counter_before} too, "
                                "is the write found on the wallet")
    if seen is not None:
        return Landing.LANDED, f"tap {seen.tap_id} read counter {seen.counter_before}"
    return Landing.PENDING, ""
