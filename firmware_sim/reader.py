"""The RF-SIM reader: which phones are in the field, how strong they are, and the RF operations.

Distance control: a phone's signal strength follows from its distance (config.ReaderConfig.rssi);
phones weaker than the threshold are neither reported nor transacted, so a phone in a neighbour's
pocket at 40 cm is never charged even though 2.4 GHz reaches it. Only the set of phones within the
threshold triggers a FieldChanged event (RSSI drifting alone does not, to keep the line quiet).

RF operations take time (read_ms, write_ms + verify_ms, times the phone's slowness) and one runs at
a time; one longer than the protocol's RF limits (timing.RF_READ_MAX_S / RF_WRITE_MAX_S) is cut off
there by the reader's RF timeout, as if the phone had left, so every request is answered in time.
A phone leaving the field during an operation ends it at once: a read is LOST, a write is TORN,
with the bytes that had landed (linear in the elapsed write time) applied byte-exactly to the
true wallet. Every method runs under the sim lock (the device's receive thread or the scheduler), at
the action's device time (scheduler.py): an operation starts when its request's last byte arrived
and its answer is ready exactly its RF time later, however late a thread wakes up.

Faults at a phase of a write (`arm_write`): an action (the phone pulled away, the power cut, the
controller killed) runs at an exact point of the next write: when k of the slot's 64 bytes have
landed (k = 0..63, a torn write), once all have landed but before the verify ends (the write is on
the phone, its answer not yet sent: WRITTEN), or just after the answer was sent (ANSWERED).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from protocol.serial.messages import (
    SLOT_SIZE,
    FieldChanged,
    Message,
    PhoneSignal,
    RfStatus,
    TornWrite,
    Wallet,
    WriteOutcome,
    WriteResult,
)
from protocol.serial.timing import RF_READ_MAX_S, RF_WRITE_MAX_S

from .config import ReaderConfig
from .scheduler import Scheduler, Timer
from .wallets import WalletStore

Respond = Callable[[Message], None]

#: Phases of a write beyond the bytes landed (0..SLOT_SIZE-1) at which an armed action can run.
WRITTEN: Final = SLOT_SIZE  # every byte landed, the verify still running: no answer sent yet
ANSWERED: Final = SLOT_SIZE + 1  # verified and answered: the answer is on its way to the controller


@dataclass(slots=True)
class Presence:
    """A phone near the antenna."""

    card_id: int
    distance_cm: float
    slowness: float = 1.0
    flaky_write: bool = False  # its writes land corrupted (verify fails)
    handset: int = 0  # which of the card's handsets (wallets.py: 0 genuine, >= 1 a clone)


@dataclass(slots=True)
class RfOperation:
    kind: str  # "read" or "write"
    card_id: int
    started: float
    duration: float  # read time, or write time without the verify
    respond: Respond
    slot: int = 0
    record: bytes = b""
    verify: float = 0.0
    written: bool = False  # the write finished; only the verify is left
    timers: list[Timer] = field(default_factory=list)
    handset: int = 0
    after_answer: Callable[[], None] | None = None  # an armed action at ANSWERED


class Reader:
    def __init__(self, config: ReaderConfig, wallets: WalletStore, scheduler: Scheduler,
                 emit: Callable[[Message], None], log: Callable[[str, dict[str, Any]], None]) -> None:
        self.config = config
        self.wallets = wallets
        self.scheduler = scheduler
        self._emit = emit
        self._log = log
        self.field: dict[int, Presence] = {}
        self.busy: RfOperation | None = None
        self._reported: tuple[int, ...] = ()
        self._armed: list[tuple[int | None, int, Callable[[], None]]] = []  # (card or any, phase, action)

    def arm_write(self, card_id: int | None, phase: int, action: Callable[[], None]) -> None:
        """Run `action` (under the lock) during the next write to `card_id` (None: to any phone), at
        `phase`: once that many bytes of the slot have landed (0..63), at WRITTEN or at ANSWERED."""
        if not 0 <= phase <= ANSWERED:
            raise ValueError(f"phase {phase} is not 0..{ANSWERED}")
        self._armed.append((card_id, phase, action))

    def disarm(self, card_id: int | None = None) -> int:
        """Forget the actions armed for `card_id` (None: all); returns how many were forgotten."""
        kept = [a for a in self._armed if card_id is not None and a[0] != card_id]
        forgotten = len(self._armed) - len(kept)
        self._armed = kept
        return forgotten

    def _take_armed(self, card_id: int) -> tuple[int, Callable[[], None]] | None:
        for index, (card, phase, action) in enumerate(self._armed):
            if card is None or card == card_id:
                del self._armed[index]
                return phase, action
        return None

    # ------------------------------------------------------------ the field

    def in_range(self) -> tuple[PhoneSignal, ...]:
        """Phones within the distance-control threshold, strongest first."""
        threshold = self.config.rssi_threshold_dbm
        heard = [PhoneSignal(p.card_id, self.config.rssi(p.distance_cm)) for p in self.field.values()]
        return tuple(sorted((s for s in heard if s.rssi_dbm >= threshold),
                            key=lambda s: (-s.rssi_dbm, s.card_id)))

    def within_threshold(self, card_id: int) -> bool:
        presence = self.field.get(card_id)
        if presence is None:
            return False
        return self.config.rssi(presence.distance_cm) >= self.config.rssi_threshold_dbm

    def place(self, presence: Presence) -> None:
        """A phone comes into the field, or moves within it."""
        self.field[presence.card_id] = presence
        self._log("phone", {"card_id": presence.card_id, "distance_cm": presence.distance_cm,
                            "rssi_dbm": self.config.rssi(presence.distance_cm)})
        self._after_move(presence.card_id)

    def remove(self, card_id: int) -> None:
        """A phone leaves the field (pulled away, or walked off)."""
        if self.field.pop(card_id, None) is not None:
            self._log("phone", {"card_id": card_id, "distance_cm": None, "rssi_dbm": None})
            self._after_move(card_id)

    def _after_move(self, card_id: int) -> None:
        op = self.busy
        if op is not None and op.card_id == card_id and not self.within_threshold(card_id):
            self._break_off(op)
        phones = self.in_range()
        ids = tuple(sorted(p.card_id for p in phones))
        if ids != self._reported:
            self._reported = ids
            self._emit(FieldChanged(phones))

    # ------------------------------------------------------------ RF operations

    def read(self, card_id: int, respond: Respond) -> None:
        """Start reading the wallet; `respond` gets the Wallet message when it ends."""
        presence = self._presence(card_id)
        if presence is None:
            respond(Wallet(card_id, RfStatus.NO_PHONE))
            return
        duration = self.config.read_ms / 1000 * presence.slowness
        op = RfOperation("read", card_id, self.scheduler.now(), duration, respond, handset=presence.handset)
        if duration <= RF_READ_MAX_S:
            op.timers.append(self.scheduler.call_later(duration, self._read_done, op))
        else:  # too slow a phone: the reader's RF timeout ends the read
            op.timers.append(self.scheduler.call_later(RF_READ_MAX_S, self._break_off, op))
        self.busy = op

    def write(self, card_id: int, slot: int, record: bytes, respond: Respond) -> None:
        """Start writing `record` into `slot` and verifying it; `respond` gets the WriteResult."""
        presence = self._presence(card_id)
        if presence is None:
            respond(WriteResult(card_id, slot, WriteOutcome.NO_PHONE, 0))
            return
        duration = self.config.write_ms / 1000 * presence.slowness
        verify = self.config.verify_ms / 1000 * presence.slowness
        op = RfOperation("write", card_id, self.scheduler.now(), duration, respond, slot, record, verify,
                         handset=presence.handset)
        if duration + verify <= RF_WRITE_MAX_S:
            flaky = presence.flaky_write
            op.timers.append(self.scheduler.call_later(duration, self._write_landed, op, flaky))
            op.timers.append(self.scheduler.call_later(duration + verify, self._write_verified, op))
        else:  # too slow a phone: the RF timeout cuts the write off where it stands (a torn write)
            op.timers.append(self.scheduler.call_later(RF_WRITE_MAX_S, self._break_off, op))
        self.busy = op
        armed = self._take_armed(card_id)
        if armed is not None:
            phase, action = armed
            if phase == ANSWERED:
                op.after_answer = action
            else:  # half a byte past the phase's boundary (WRITTEN: half-way through the verify)
                at = duration * (phase + 0.5) / SLOT_SIZE if phase < SLOT_SIZE else duration + verify / 2
                op.timers.append(self.scheduler.call_later(at, action))

    def _presence(self, card_id: int) -> Presence | None:
        if not self.within_threshold(card_id) or card_id not in self.wallets:
            return None
        return self.field[card_id]

    def _finish(self, op: RfOperation, message: Message) -> None:
        for timer in op.timers:
            timer.cancel()
        if self.busy is op:
            self.busy = None
        op.respond(message)

    def _read_done(self, op: RfOperation) -> None:
        self._finish(op, Wallet(op.card_id, RfStatus.OK, self.wallets.wallet(op.card_id, op.handset)))

    def _write_landed(self, op: RfOperation, flaky: bool) -> None:
        record = op.record
        if flaky:  # the phone's flash stored one byte wrong
            record = record[:10] + bytes([record[10] ^ 0x40]) + record[11:]
        self.wallets.write(op.card_id, op.slot, record, handset=op.handset)
        op.written = True

    def _write_verified(self, op: RfOperation) -> None:
        same = self.wallets.slot(op.card_id, op.slot, op.handset) == op.record
        outcome = WriteOutcome.OK if same else WriteOutcome.FAILED
        self._log("write", {"card_id": op.card_id, "slot": op.slot, "outcome": outcome.name,
                            "bytes_written": SLOT_SIZE, "rf_s": op.duration + op.verify})
        self._finish(op, WriteResult(op.card_id, op.slot, outcome, SLOT_SIZE))
        if op.after_answer is not None:
            op.after_answer()

    def power_off(self) -> None:
        """The reader loses power: an RF operation stops where it stands, with no answer (a write in
        progress is torn exactly like a pulled phone's), and the field report starts afresh."""
        op, self.busy = self.busy, None
        self._reported = ()
        if op is None:
            return
        for timer in op.timers:
            timer.cancel()
        if op.kind == "write" and not op.written:
            elapsed = max(0.0, self.scheduler.now() - op.started)
            landed = min(SLOT_SIZE - 1, int(SLOT_SIZE * elapsed / op.duration)) if op.duration > 0 else 0
            self.wallets.write(op.card_id, op.slot, op.record, torn_at=landed, handset=op.handset)
            self._log("write", {"card_id": op.card_id, "slot": op.slot, "outcome": "POWER_LOST",
                                "bytes_written": landed})

    def power_on(self) -> None:
        """Report the phones already in the field, as a fresh reader would."""
        phones = self.in_range()
        self._reported = tuple(sorted(p.card_id for p in phones))
        if phones:
            self._emit(FieldChanged(phones))

    def _break_off(self, op: RfOperation) -> None:
        """The phone left during `op`: end it now, tearing a write where it stood."""
        if op.kind == "read":
            self._finish(op, Wallet(op.card_id, RfStatus.LOST))
            return
        if op.written:
            landed = SLOT_SIZE  # written but never verified: the controller must treat it as unknown
        else:
            elapsed = max(0.0, self.scheduler.now() - op.started)
            landed = min(SLOT_SIZE - 1, int(SLOT_SIZE * elapsed / op.duration)) if op.duration > 0 else 0
            self.wallets.write(op.card_id, op.slot, op.record, torn_at=landed, handset=op.handset)
        self._log("write", {"card_id": op.card_id, "slot": op.slot, "outcome": "TORN",
                            "bytes_written": landed})
        self._finish(op, WriteResult(op.card_id, op.slot, WriteOutcome.TORN, landed))
        self._emit(TornWrite(op.card_id, op.slot, landed))
