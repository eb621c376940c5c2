"""The tap state machine of one gate: phone in field → read → decide → write + journal → open.

    idle ──FieldChanged(1 phone, new)──► read wallet ──► decide (fare_core)
      ▲                                                    │
      │      ┌─────────── write slot (RF) ◄────────────────┤ (the journal fsync runs meanwhile
      │      ▼                                             │  in a worker thread)
      └── display ◄── open barrier ◄── both done ◄─────────┘

Why the journal and the wallet write overlap: the fsync costs 0.4 ms typically and several ms at
the tail on a shared disk, while the wallet write keeps the line and the phone busy for longer; done
in series the fsync would be the gate's own latency. The barrier opens only when the tap is durable
in the journal *and* the wallet write is verified.

If the write fails or its answer is lost, the wallet is read back: the two-slot record tells exactly
whether the new record landed (its counter). If it did, the tap stands; if not, the journal row is
rewritten, before anyone sees it, as a tap that charged nothing (reason READ_FAILED), and the commuter
is asked to tap again. A row is published only once its outcome is final (`final_seq`).

If the phone left before the read-back, nobody knows: the row is rewritten flagged UNCONFIRMED (barrier
shut) and the write kept durably (gate/unconfirmed.py). The phone's next tap here settles it: if the
wallet holds the record written, the write landed and a RECOVERED tap is journaled and published
(nothing written, fare 0) and the barrier opens as first decided; if not, the tap is decided afresh.

The row is journaled while its write is on the wire, so it is journaled *unsettled* (the write kept in
the row) and made final, in one fsynced step, once the write's outcome is known: settled as it stands
(that fsync overlaps the barrier's opening), or rewritten as above. A gate that dies in between (power
cut, kill -9) cannot know whether the write landed: at its next start every unsettled row is rewritten
UNCONFIRMED and its write kept, exactly as a write whose answer was lost, before the uplink publishes
anything; the phone's re-tap here then recovers it or is decided afresh.

Two phones in the field: "one phone at a time", nothing read, nothing charged. A phone that stays in
the field after its tap is not charged again until it has left. A phone weaker than the distance
threshold is ignored (the reader already filters; the gate checks again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import fare_core
from fare_core import Direction, Flag, GateMode, Reason, WalletError
from fare_core.reasons import WELCOME, display_text, yuan
from fare_core.record import SLOT_SIZE
from protocol.mqtt import (
    DEVELOPMENT_UPLINK_MASTER_KEY,
    Action,
    TapMessage,
    derive_gate_key,
    encode_with_mac,
    tap_id,
)
from protocol.serial import (
    Alarm,
    BarrierClose,
    BarrierOpen,
    Buzzer,
    BuzzerPattern,
    Display,
    DisplayStyle,
    FieldChanged,
    Light,
    Lights,
    Message,
    Passage,
    PhoneSignal,
    PollField,
    ReadWallet,
    RfStatus,
    Wallet,
    WriteOutcome,
    WriteResult,
    WriteSlot,
)
from protocol.serial import Field as FieldReport
from protocol.serial.messages import Ack

from .collector import YOUNG_EVERY_S, CollectBetweenTaps
from .journal import Journal
from .metrics import GateMetrics
from .serial_link import LinkError, ReaderLink
from .state import LocalState
from .unconfirmed import UnconfirmedWrite, UnconfirmedWrites

log = logging.getLogger(__name__)

_STYLE_OK, _STYLE_DENY = DisplayStyle.OK, DisplayStyle.DENY
_ACTION_FLAGS = Flag.TOPUP_APPLIED | Flag.UNBLOCKED
_NO_TABLE = ("设备未就绪 请走其他闸机", "No fare table - use another gate")


@dataclass
class TapOutcome:
    """What one tap came to, for tests, the bench and the metrics."""

    seq: int
    card_id: int
    reason: int
    allowed: bool
    fare: int
    opened: bool
    decision_us: int
    tap_to_open_us: int | None = None
    extra: dict[str, object] = field(default_factory=dict)


class _Tap:
    """One tap between its steps: what was read and decided, and the gate's own time so far
    (`host_ns`: from each frame read to the next request sent; `rx_ns`: the latest answer read)."""

    __slots__ = ("action", "card_id", "decision", "decision_us", "host_ns", "rx_ns", "t_field_ns",
                 "table_version", "tap", "wallet")

    def __init__(self, card_id: int, t_field_ns: int, wallet: bytes, tap: fare_core.Tap,
                 decision: fare_core.Decision, table_version: int, action: Action | None,
                 decision_us: int) -> None:
        self.card_id = card_id
        self.t_field_ns = t_field_ns
        self.wallet = wallet
        self.tap = tap
        self.decision = decision
        self.table_version = table_version
        self.action = action
        self.decision_us = decision_us
        self.host_ns = 0
        self.rx_ns = 0


class GateController:
    """Drives one reader + gate mechanism; journals every tap; hands them to the uplink."""

    def __init__(self, *, station_id: int, gate_no: int, direction: Direction, link: ReaderLink,
                 journal: Journal, state: LocalState, sam: fare_core.Sam, metrics: GateMetrics,
                 rssi_min_dbm: int = -60, hold_ms: int = 5000,
                 clock: Callable[[], float] = time.time) -> None:
        self.station_id = station_id
        self.gate_no = gate_no
        self.direction = Direction(direction)
        self.link = link
        self.journal = journal
        self.state = state
        self.sam = sam
        self.metrics = metrics
        self.collector = CollectBetweenTaps()  # collects only when gate/main.py hands it the collector
        self.rssi_min_dbm = rssi_min_dbm
        self.hold_ms = hold_ms
        self.clock = clock
        unsettled = journal.unsettled()  # rows a dead gate left mid-write: final once `start` settles them
        self.final_seq = unsettled[0][0] - 1 if unsettled else journal.last_seq  # rows up to here are final
        self.on_tap: Callable[[TapOutcome], None] | None = None
        self.on_final: Callable[[int], None] | None = None
        self.on_alarm: Callable[[Alarm], None] | None = None
        self._in_field: set[int] = set()  # as the event loop has processed it
        self._field_now: set[int] = set()  # as the line reports it this instant (see _observe)
        self.unconfirmed = UnconfirmedWrites(journal, clock)  # kept across restarts, in the journal
        self._field_seen_ns = 0
        link.on_event = self._observe
        self._done_in_field: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self._handling = False  # an event (a tap) is being served: no collection now

    # ---------------------------------------------------------------------------- running
    async def start(self) -> None:
        await self._settle_left_mid_write()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"gate {self.gate_id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _settle_left_mid_write(self) -> None:
        """Rows journaled while their wallet write was on the wire when the gate died: whether the write
        landed cannot be known, so each is rewritten UNCONFIRMED and its write kept for the phone's
        re-tap, as `_write_and_journal` does when the write's answer is lost. Before any row is
        published: a landed write's row published as it stood would be a confirmed tap the wallet may
        not hold (the next tap writes the same counter: a clone alarm on a genuine rider)."""
        for seq, payload, detail in await asyncio.to_thread(self.journal.unsettled):
            message = TapMessage.model_validate_json(payload)
            write = UnconfirmedWrite.from_row(message.card_id, seq, message.time.timestamp(), detail)
            await self.unconfirmed.remember(write, self._encode_tap(self._as_unconfirmed(message)))
            log.warning("gate %s: tap %d of %016x was mid-write when the gate stopped: journaled unconfirmed",
                        self.gate_id, seq, message.card_id)
        self._finalise(self.journal.last_seq)

    @property
    def gate_id(self) -> str:
        return f"{self.station_id}-{self.gate_no}"

    async def _run(self) -> None:
        idle = asyncio.get_running_loop().create_task(self._collect_while_idle())
        try:
            while True:
                event = await self.link.events.get()
                self._handling = True
                try:
                    await self.handle_event(event)
                except LinkError as exc:
                    log.warning("gate %s: link error during a tap: %s", self.gate_id, exc)
                except Exception:  # a bug must not stop the gate: log it and serve the next phone
                    log.exception("gate %s: error handling %r", self.gate_id, event)
                finally:
                    self._handling = False
                if self.link.events.empty():
                    self.collector.between_taps()
        finally:
            idle.cancel()

    async def _collect_while_idle(self) -> None:
        """A gate with no taps still collects (its uplink and heartbeats make cycles too)."""
        while True:
            await asyncio.sleep(YOUNG_EVERY_S)
            if not self._handling and self.link.events.empty():
                self.collector.between_taps()

    async def link_up(self) -> None:
        """After the port (re)opened: learn who is in the field, restore the barrier for the mode.

        The field report joins the line's events, so the one loop in `_run` serves it: served here
        instead, it would race a FieldChanged for the same phone (two taps at once, one deciding on
        what the other just settled, e.g. a RECOVERED tap and a refused exit beside it)."""
        await self.apply_mode()
        try:
            report = await self.link.request(PollField(), FieldReport)
        except LinkError:
            return
        self._field_seen_ns = time.perf_counter_ns()  # (the line's own reports stay in _field_now)
        with contextlib.suppress(asyncio.QueueFull):
            self.link.events.put_nowait(FieldChanged(report.phones))

    async def apply_mode(self) -> None:
        mode = self.state.mode
        if mode == GateMode.FREE_EXIT:
            await self.link.request(BarrierOpen(Direction.EXIT, 0, 0), Ack)
            await self._show(DisplayStyle.ALARM, "紧急放行 请出站", "Emergency - free exit", 0)
        elif mode in (GateMode.CLOSED, GateMode.MAINTENANCE):
            await self.link.request(BarrierClose(), Ack)
            await self._show(DisplayStyle.INFO, "暂停服务", "Gate closed", 0)
        else:
            await self.link.request(BarrierClose(), Ack)
            await self._show(DisplayStyle.INFO, WELCOME[0], WELCOME[1], 0)

    async def handle_event(self, event: Message) -> None:
        if isinstance(event, FieldChanged):
            await self._field(event.phones)
        elif isinstance(event, Passage):
            self.metrics.passages.inc()
        elif isinstance(event, Alarm):
            self.metrics.alarm(event.alarm.name.lower())
            if self.on_alarm:
                self.on_alarm(event)

    def _observe(self, event: Message) -> None:
        if isinstance(event, FieldChanged):
            self._field_now = {p.card_id for p in event.phones if p.rssi_dbm >= self.rssi_min_dbm}
            self._field_seen_ns = time.perf_counter_ns()  # the tap's clock starts as the event is read

    async def _field(self, phones: tuple[PhoneSignal, ...]) -> None:
        near = [p for p in phones if p.rssi_dbm >= self.rssi_min_dbm]
        present = {p.card_id for p in near}
        self._done_in_field &= present  # a phone that left may tap again
        arrived = present - self._in_field
        self._in_field = present
        if len(near) > 1:
            if arrived:
                self.metrics.taps.labels(outcome="two_phones").inc()
                zh, en = display_text(Reason.TWO_CARDS, 0, 0)
                await self._show(_STYLE_DENY, zh, en, 2000)
                await self.link.request(Buzzer(BuzzerPattern.DOUBLE), Ack)
            return
        if len(near) == 1 and near[0].card_id not in self._done_in_field:
            await self.tap(near[0].card_id, self._field_seen_ns or time.perf_counter_ns())

    # -------------------------------------------------------------------------------- a tap
    async def tap(self, card_id: int, t_field_ns: int) -> TapOutcome | None:
        """Serve one phone that just came into the field; None if its wallet could not be read.

        The steps, each a method below: read the wallet, decide (`_decide`, no I/O), write the new
        record while journaling the tap (`_write_and_journal`), open and show (`_open_and_show`).
        The steps are plain coroutine calls: no task hand-off between them on the tap path.
        """
        wallet = await self.link.request(ReadWallet(card_id), Wallet)
        # The gate's own time on this tap: from each frame read to the next request sent.
        host_ns = self.link.last_sent_ns - t_field_ns
        rx_ns = self.link.last_answer_ns
        if wallet.status != RfStatus.OK:
            self.metrics.taps.labels(outcome="read_failed").inc()
            zh, en = display_text(Reason.READ_FAILED, 0, 0)
            await self._show(_STYLE_DENY, zh, en, 2000)
            return None
        if card_id in self.unconfirmed:
            recovered = await self._recover(card_id, wallet.wallet, t_field_ns, host_ns, rx_ns)
            if recovered is not None:
                return recovered
        now = self.clock()
        table = self.state.table_at(datetime.fromtimestamp(now, UTC))
        if table is None:
            await self._show(DisplayStyle.ALARM, *_NO_TABLE, 2000)
            return None
        t = self._decide(card_id, wallet.wallet, table, int(now), t_field_ns)
        if t is None:
            return None
        t.host_ns, t.rx_ns = host_ns, rx_ns
        seq = self.journal.next_seq()
        if t.decision.record is None:  # nothing to write: journal and go on
            await asyncio.to_thread(self.journal.append, seq, self._encode_tap(self._tap_message(seq, t)))
            self._finalise(seq)  # the row is final: the barrier is not part of it
            return await self._open_and_show(seq, t)
        if not await self._write_and_journal(seq, t):
            return TapOutcome(seq, card_id, Reason.READ_FAILED, False, 0, False, t.decision_us)
        # The write landed: the row is settled on disk (final) while the barrier opens.
        return await self._open_and_show(seq, t, asyncio.to_thread(self.journal.settle, seq))

    def _decide(self, card_id: int, wallet: bytes, table: fare_core.FareTable, when: int,
                t_field_ns: int) -> _Tap | None:
        """fare_core's decision on the wallet just read; None when a second phone came into the
        field meanwhile (nobody is charged)."""
        action = self.state.action_for(card_id)
        tap = fare_core.Tap(card_id, self.station_id, self.direction, when, gate_no=self.gate_no,
                            mode=self.state.mode, min_counter=self.state.min_counter(card_id),
                            topup=action.topup if action else 0, unblock=bool(action and action.unblock),
                            action_id=action.action_id if action else 0)
        decision = fare_core.decide(wallet, tap, table, self.state.denylist, self.sam)
        decision_us = (time.perf_counter_ns() - t_field_ns) // 1000
        if len(self._field_now) > 1:  # a second phone came in while reading: charge nobody
            self._done_in_field.discard(card_id)
            return None
        self.metrics.decision_seconds.observe(decision_us / 1e6)
        self._done_in_field.add(card_id)
        return _Tap(card_id, t_field_ns, wallet, tap, decision, table.version, action, decision_us)

    async def _write_and_journal(self, seq: int, t: _Tap) -> bool:
        """Send the new record, journal the tap (unsettled) while the phone writes it, then settle:
        True when the wallet holds it (the caller settles the row); False when it did not land (or may
        not have): the row has then been rewritten, settled, as a tap that charged nothing (or flagged
        UNCONFIRMED) and the commuter told to tap again."""
        card_id, decision, record = t.card_id, t.decision, t.decision.record
        assert record is not None
        # The write goes on the wire first; the tap is built and fsynced while the phone writes.
        try:
            written: Awaitable[WriteResult] | None = self.link.request(
                WriteSlot(card_id, decision.slot, record), WriteResult)
        except LinkError as exc:  # the port went down just now: nothing reached the phone
            log.warning("gate %s: write to %016x not sent: %s", self.gate_id, card_id, exc)
            written = None
        write_sent_ns = self.link.last_sent_ns
        try:
            message = self._tap_message(seq, t)
            encoded = self._encode_tap(message)
            write = UnconfirmedWrite(card_id, seq, float(t.tap.time), int(decision.slot), bytes(record),
                                     int(decision.counter), bool(decision.allowed), int(decision.reason),
                                     t.table_version, message.action_id)
            journaled = asyncio.ensure_future(asyncio.to_thread(
                self.journal.append, seq, encoded, None, write.detail()))
        except BaseException:  # a bug: still settle the write, so its SEQ is not held for ever
            if written is not None:
                with contextlib.suppress(LinkError):
                    await written
            raise
        try:
            landed = await self._write(card_id, decision, written)
            t.host_ns += write_sent_ns - t.rx_ns
            t.rx_ns = self.link.last_answer_ns  # the write's answer, for the next gap
        except Exception:  # a bug: the write's landing is unknown, and its row must not stay unsettled
            log.exception("gate %s: write to %016x not settled", self.gate_id, card_id)
            landed = None
        finally:
            await journaled
        if landed is True:
            self.state.remember_counter(card_id, decision.counter)
            # applied now, or found in the wallet already (another gate wrote it): offer it no more
            if t.action is not None and decision.flags & (_ACTION_FLAGS | Flag.ACTION_ALREADY_APPLIED):
                self.state.action_applied(t.action)
            return True
        if landed is None:  # unknown: keep what the write would have made, say so
            await self.unconfirmed.remember(write, self._encode_tap(self._as_unconfirmed(message)))
        else:  # known not to have landed: nothing was charged
            update: dict[str, object] = {
                "allowed": False, "reason": Reason.READ_FAILED, "flags": 0, "fare": 0,
                "balance_after": message.balance_before, "counter_after": message.counter_before,
                "action_id": None, "topup_applied": 0}
            rewritten = self._encode_tap(message.model_copy(update=update))
            await asyncio.to_thread(self.journal.replace, seq, rewritten)
        self._done_in_field.discard(card_id)
        self._finalise(seq)
        self.metrics.taps.labels(outcome="write_failed").inc()
        zh, en = display_text(Reason.READ_FAILED, 0, 0)
        await self._show(_STYLE_DENY, zh, en, 2000)
        return False

    @staticmethod
    def _as_unconfirmed(message: TapMessage) -> TapMessage:
        """A tap whose write may or may not have landed: refused (barrier shut), flagged UNCONFIRMED,
        fare and counters as the write would have made them (docs/ledger.md)."""
        return message.model_copy(update={"allowed": False, "reason": Reason.READ_FAILED,
                                          "flags": message.flags | Flag.UNCONFIRMED})

    async def _open_and_show(self, seq: int, t: _Tap,
                             settling: Awaitable[None] | None = None) -> TapOutcome:
        """Open the barrier first (the figure a commuter feels), then the display, lights, buzzer.
        `settling`: the row's settle, fsynced meanwhile; the row is final (published) once it is."""
        decision = t.decision
        opened_us = None
        settle = None if settling is None else asyncio.ensure_future(settling)
        try:
            if decision.allowed:
                await self.link.request(BarrierOpen(self.direction, 1, self.hold_ms), Ack)
                host_ns = t.host_ns + self.link.last_sent_ns - t.rx_ns
                opened_us = (time.perf_counter_ns() - t.t_field_ns) // 1000
                self.metrics.observe_open(opened_us / 1e6, host_ns / 1e9)
        finally:
            if settle is not None:
                await settle
                self._finalise(seq)
        self.metrics.taps.labels(outcome=Reason(decision.reason).name.lower()).inc()
        outcome = TapOutcome(seq, t.card_id, decision.reason, decision.allowed, decision.fare,
                             decision.allowed, t.decision_us, opened_us)
        if self.on_tap:
            self.on_tap(outcome)
        await self._show(_STYLE_OK if decision.allowed else _STYLE_DENY, decision.display_zh,
                         decision.display_en, 3000)
        await self.link.request(Lights(Light.GREEN if decision.allowed else Light.RED), Ack)
        await self.link.request(Buzzer(BuzzerPattern.BEEP if decision.allowed else BuzzerPattern.DOUBLE), Ack)
        return outcome

    async def _write(self, card_id: int, decision: fare_core.Decision,
                     written: Awaitable[WriteResult] | None) -> bool | None:
        """The new record's write, sent as `written`: True when the wallet holds it, False when it
        does not, None when that cannot be known (the answer was lost and the phone could not be read
        back). None: the write never went out (the port was down), so nothing landed."""
        if written is None:
            return False
        try:
            result = await written
            if result.outcome == WriteOutcome.OK:
                return True
            if result.outcome == WriteOutcome.NO_PHONE:
                return False  # nothing was written
            if result.outcome == WriteOutcome.TORN:  # the device counted what landed: a partial slot
                return result.bytes_written >= SLOT_SIZE  # is invalid, so the old record is in force
        except LinkError as exc:
            log.warning("gate %s: write to %016x unanswered: %s", self.gate_id, card_id, exc)
        # Torn, failed or unanswered: the wallet itself says whether the new record is there.
        for _attempt in range(3):
            try:
                again = await self.link.request(ReadWallet(card_id), Wallet)
            except LinkError as exc:
                log.warning("gate %s: read-back of %016x failed: %s", self.gate_id, card_id, exc)
                continue
            if again.status != RfStatus.OK:
                break  # the phone has gone
            try:
                record, _slot = fare_core.read_wallet(again.wallet, card_id, self.sam)
            except WalletError:
                return False  # no valid slot at all cannot be our complete write
            return bool(record.counter >= decision.counter)
        return None

    async def _recover(self, card_id: int, wallet: bytes, t_field_ns: int, host_ns: int,
                       rx_ns: int) -> TapOutcome | None:
        """A phone whose last write here was unconfirmed taps again. If the wallet holds the record that
        write put there, it landed: journal a RECOVERED tap (nothing written, fare 0; the backend
        settles the unconfirmed one from it) and let the commuter through as first decided. If not
        (it did not land, or the phone was written elsewhere since), forget it: None, decide afresh."""
        pending = self.unconfirmed.take(card_id)
        assert pending is not None
        record = None if self.unconfirmed.expired(pending) else pending.landed_in(wallet, self.sam)
        if record is None:
            await self.unconfirmed.forget(card_id)
            self._hold_back_action(pending, wallet)
            return None
        if len(self._field_now) > 1:  # a second phone came in while reading: open for nobody
            self.unconfirmed.keep(pending)
            return None
        decision_us = (time.perf_counter_ns() - t_field_ns) // 1000
        self._done_in_field.add(card_id)
        seq = self.journal.next_seq()
        message = self._recovered_message(seq, pending, wallet, record, decision_us)
        allowed = message.allowed
        await asyncio.to_thread(self.journal.append, seq, self._encode_tap(message), card_id)
        self._finalise(seq)
        self.state.remember_counter(card_id, pending.counter)
        action = self.state.action_for(card_id)
        if action is not None and action.action_id == pending.action_id:
            self.state.action_applied(action)  # the landed write applied it: never again here
        opened_us = None
        if allowed:
            await self.link.request(BarrierOpen(self.direction, 1, self.hold_ms), Ack)
            opened_us = (time.perf_counter_ns() - t_field_ns) // 1000
            self.metrics.observe_open(opened_us / 1e6, (host_ns + self.link.last_sent_ns - rx_ns) / 1e9)
        self.metrics.taps.labels(outcome="recovered").inc()
        outcome = TapOutcome(seq, card_id, int(message.reason), allowed, 0, allowed, decision_us, opened_us,
                             extra={"recovered": True, "recovers_seq": pending.seq})
        if self.on_tap:
            self.on_tap(outcome)
        if allowed:
            zh, en = f"请通行 余额 {yuan(record.balance)} 元", f"Please pass  Balance ¥{yuan(record.balance)}"
        else:
            zh, en = display_text(message.reason, 0, record.balance)
        await self._show(_STYLE_OK if allowed else _STYLE_DENY, zh, en, 3000)
        await self.link.request(Lights(Light.GREEN if allowed else Light.RED), Ack)
        await self.link.request(Buzzer(BuzzerPattern.BEEP if allowed else BuzzerPattern.DOUBLE), Ack)
        return outcome

    def _hold_back_action(self, pending: UnconfirmedWrite, wallet: bytes) -> None:
        """The unconfirmed write applied an OTA action (a top-up) and the phone has been written since
        by someone else, so whether it landed cannot be told here: never apply it again at this gate
        (a landed top-up would be paid twice). The back office knows from the card's chain whether it
        landed; if not, the action stays listed and the phone gets it at any other gate."""
        action = self.state.action_for(pending.card_id)
        if action is None or action.action_id != pending.action_id:
            return
        if not pending.surely_not_landed(wallet, self.sam):
            log.warning("gate %s: action %d of %016x held back: its unconfirmed write cannot be told",
                        self.gate_id, action.action_id, pending.card_id)
            self.state.action_applied(action)

    def _recovered_message(self, seq: int, pending: UnconfirmedWrite, wallet: bytes,
                           record: fare_core.CardRecord, decision_us: int) -> TapMessage:
        """The RECOVERED tap: this gate, now; allowed as first decided (unless the gate has been closed
        since: the write still landed, the barrier stays shut); the wallet as read, unchanged."""
        closed = self.state.mode in (GateMode.CLOSED, GateMode.MAINTENANCE)
        allowed = pending.allowed and not closed
        reason = Reason.OK if allowed else Reason.GATE_CLOSED if closed else Reason(pending.reason)
        return TapMessage(
            tap_id=tap_id(self.station_id, self.gate_no, seq), station_id=self.station_id,
            gate_no=self.gate_no, seq=seq, card_id=pending.card_id,
            time=datetime.fromtimestamp(int(self.clock()), UTC), direction=self.direction,
            mode=GateMode(self.state.mode), allowed=allowed,
            reason=reason, flags=int(Flag.RECOVERED), fare=0,
            balance_before=record.balance, balance_after=record.balance, counter_before=record.counter,
            counter_after=record.counter, wallet_before=bytes(wallet).hex(),
            fare_table_version=pending.fare_table_version, denylist_version=self.state.denylist.version,
            min_counter=self.state.min_counter(pending.card_id), latency_us=decision_us)

    def _finalise(self, seq: int) -> None:
        self.final_seq = seq
        if self.on_final:
            self.on_final(seq)

    async def _show(self, style: DisplayStyle, zh: str, en: str, timeout_ms: int) -> None:
        await self.link.request(Display(style, timeout_ms, zh, en), Ack)

    @staticmethod
    def _counter_of(decision: fare_core.Decision) -> int:
        """The counter the wallet held: decide() reports the one it wrote, or the one it read (0 when no
        slot was valid), so the wallet needs no second MAC check here."""
        return int(decision.counter) - 1 if decision.record is not None else int(decision.counter)

    def _tap_message(self, seq: int, t: _Tap) -> TapMessage:
        tap, d = t.tap, t.decision
        counter_before = self._counter_of(d)
        applied = d.record is not None and d.flags & _ACTION_FLAGS
        return TapMessage(
            tap_id=tap_id(self.station_id, self.gate_no, seq), station_id=self.station_id,
            gate_no=self.gate_no, seq=seq, card_id=tap.card_id,
            time=datetime.fromtimestamp(tap.time, UTC), direction=Direction(tap.direction),
            mode=GateMode(tap.mode), allowed=bool(d.allowed), reason=Reason(d.reason), flags=int(d.flags),
            fare=int(d.fare),
            balance_before=int(d.balance_before), balance_after=int(d.balance_after),
            counter_before=counter_before, counter_after=int(d.counter),
            wallet_before=bytes(t.wallet).hex(), fare_table_version=t.table_version,
            denylist_version=self.state.denylist.version, min_counter=tap.min_counter,
            action_id=getattr(t.action, "action_id", None) if applied else None,
            topup_applied=int(d.topup), latency_us=t.decision_us,
        )

    tap_key: bytes | None = None  # the gate's uplink MAC key; gate/runtime.py sets it from the config

    def _encode_tap(self, message: TapMessage) -> bytes:
        """A tap's journaled (and published) bytes: its JSON with the gate's MAC, made once, here, so
        the backend can tell this gate's taps from anyone else's on the broker (docs/security.md)."""
        if self.tap_key is None:  # a controller built without a runtime: the development key
            self.tap_key = derive_gate_key(DEVELOPMENT_UPLINK_MASTER_KEY, message.gate_id)
        return encode_with_mac(message, self.tap_key)
