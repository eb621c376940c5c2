"""One gate's hardware as the controller sees it: a reader and a gate mechanism behind one port.

Two threads per device (see scheduler.py for why threads):

- receive: reads the port, applies controller->device line faults, feeds the FrameDecoder, waits until
  each frame would have fully arrived at the baud rate, then handles it under the sim lock;
- transmit: takes encoded frames from a queue, applies device->controller line faults and hands the
  bytes to the port through the Pacer, so nothing arrives faster than the line allows.

A frame is handled at the device time its last byte arrived, and a frame sent goes onto the line from
the device time it was ready (scheduler.py): the threads' own wake-up and hand-off delays are not
added to the line's time, and no byte is ever delivered before the line could have carried it.

Requests are answered exactly once. A repeat of a recent request (same SEQ, command and payload: the
controller's retry after a lost response) is answered from a cache of the last RECENT responses, never
executed twice: a retried BarrierOpen does not let two people through, a retried WriteSlot does not
write again. A repeat of a request still in progress (an RF read) is ignored; its answer is coming.
A controller opens a session (OpenSession) on every (re)open of the port: the device then forgets that
cache and drops the answers still owed to earlier sessions' requests, so a restarted controller whose
SEQs start over is never answered for its predecessor. OpenSession itself is always executed afresh.

Device faults: `hang(seconds)` - the firmware stops (input ignored, nothing sent, state kept);
`unplug(down_s)` - the port disappears (the controller gets SerialException) and comes back;
`power_cycle(down_s)` - the same, and the device reboots (a write in progress is torn);
`cut_power(down_s)` - a power cycle that starts at this very instant (from a timed action).
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from protocol.serial.framer import Frame, FrameDecoder, encode
from protocol.serial.messages import (
    PROTOCOL_VERSION,
    Ack,
    AlarmKind,
    BarrierClose,
    BarrierOpen,
    Boot,
    Buzzer,
    BuzzerPattern,
    Command,
    Display,
    DisplayStyle,
    Field,
    GetStatus,
    GetVersion,
    Heartbeat,
    HeartbeatReply,
    Kind,
    Light,
    Lights,
    Message,
    Nak,
    NakReason,
    OpenSession,
    PayloadError,
    PollField,
    ReadWallet,
    SessionOpened,
    Status,
    Version,
    WriteSlot,
    kind_of,
    message_fields,
    parse,
)
from protocol.serial.timing import FRAME_GAP_S

from .barrier import Barrier
from .config import DeviceConfig
from .faults import FaultKind, LineFaults
from .reader import Reader
from .scheduler import Scheduler
from .transport import Link, Pacer, sleep_until
from .wallets import WalletStore

RequestKey = tuple[int, int, bytes]  # (seq, command, payload) of a request
RECENT = 16  # requests remembered for answering retries
HISTORY = 100_000  # records kept per device
_POLL_S = 0.01  # how often the receive thread looks at the flags when the line is quiet


@dataclass(frozen=True, slots=True)
class Record:
    """Something that happened at the gate, for the scripted API and tests."""

    t: float  # monotonic seconds
    gate: int
    kind: str  # rx, tx, drop, phone, write, barrier, passage, alarm, display, lights, buzzer, fault, link
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Panel:
    """What the commuter sees and hears right now."""

    style: DisplayStyle = DisplayStyle.INFO
    line_zh: str = ""
    line_en: str = ""
    lights: Light = Light.OFF
    blink: int = 0
    buzzer: BuzzerPattern = BuzzerPattern.OFF


class GateDevice:
    def __init__(self, gate: int, config: DeviceConfig, link: Link, wallets: WalletStore,
                 scheduler: Scheduler, boot_id: int = 1) -> None:
        self.gate = gate
        self.config = config
        self.link = link
        self.scheduler = scheduler
        self.lock = scheduler.lock
        self.clock = scheduler.clock
        self.boot_id = boot_id & 0xFFFF
        self.started_at = self.clock()
        self.history: collections.deque[Record] = collections.deque(maxlen=HISTORY)
        self.listeners: list[Callable[[Record], None]] = []
        self.panel = Panel()
        self.reader = Reader(config.reader, wallets, scheduler, self._emit, self._log)
        self.barrier = Barrier(config.barrier, scheduler, self._emit, self._log)
        seed = config.faults.seed * 1000 + gate * 2
        self.to_gate = LineFaults(config.faults.to_gate.rates(), seed)
        self.to_device = LineFaults(config.faults.to_device.rates(), seed + 1)
        self.decoder = FrameDecoder()
        # (bytes, raw noise?, device time it was ready for the line)
        self._tx: queue.SimpleQueue[tuple[bytes, bool, float] | None] = queue.SimpleQueue()
        self._tx_queued = 0  # frames put on _tx (under the lock)
        self._tx_done = 0  # frames the transmit thread has finished with (by that thread only)
        self._tx_pacer = Pacer(config.link.baud)
        self._rx_pacer = Pacer(config.link.baud)
        self._recent: collections.OrderedDict[RequestKey, bytes | None] = collections.OrderedDict()
        self._session = 0  # OpenSessions handled: an answer owed to an earlier session is dropped
        self._event_seq = 0
        self._hung_until = 0.0
        self._unplug_for: float | None = None
        self._reboot = False
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._receive_loop, name=f"gate{gate}-rx", daemon=True),
            threading.Thread(target=self._transmit_loop, name=f"gate{gate}-tx", daemon=True),
        ]
        self._handlers: dict[type[Message], Callable[[Any, int, tuple[int, int, bytes]], None]] = {
            Heartbeat: self._on_heartbeat, GetStatus: self._on_status, GetVersion: self._on_version,
            PollField: self._on_poll, ReadWallet: self._on_read, WriteSlot: self._on_write,
            BarrierOpen: self._on_open, BarrierClose: self._on_close, Display: self._on_display,
            Lights: self._on_lights, Buzzer: self._on_buzzer,
        }

    # ------------------------------------------------------------ life cycle

    @property
    def url(self) -> str:
        """What a controller passes to serial.serial_for_url (a pty path or socket:// URL)."""
        return self.link.name

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        with self.lock:
            major, minor, patch = self.config.firmware
            self._emit(Boot(self.boot_id, major, minor, patch, PROTOCOL_VERSION))
            self._schedule_noise()

    def stop(self) -> None:
        self._stopping.set()
        self._tx.put(None)
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=5)
        self.link.close()

    def uptime_ms(self) -> int:
        return int((self.clock() - self.started_at) * 1000) & 0xFFFFFFFF

    # ------------------------------------------------------------ device faults

    def hang(self, seconds: float) -> None:
        """Freeze the firmware for `seconds`: input is lost, nothing is sent, state is kept."""
        with self.lock:
            self._hung_until = self.clock() + seconds
            self._log("fault", {"fault": "hang", "seconds": seconds})

    @property
    def hung(self) -> bool:
        return self.clock() < self._hung_until

    def unplug(self, down_s: float) -> None:
        """Pull the cable: the port closes now and comes back after `down_s` (new pty, same link)."""
        with self.lock:
            self._log("fault", {"fault": "unplug", "seconds": down_s})
        self._unplug_for = down_s

    def power_cycle(self, down_s: float) -> None:
        """Cut the power: the port goes away, an RF write in progress is torn, and after `down_s` the
        device boots afresh (new boot_id, barrier closed, display blank, counters zero, Boot event)."""
        with self.lock:
            self._log("fault", {"fault": "power_cycle", "seconds": down_s})
        self._reboot = True
        self._unplug_for = down_s

    def cut_power(self, down_s: float) -> None:
        """Cut the power at this instant (under the lock, at the device time of the calling action):
        an RF write stops where it stands, nothing more is answered or sent, and the device reboots
        after `down_s` as with power_cycle. For a fault at an exact phase of a write (Reader.arm_write);
        power_cycle, called from outside, takes effect when the receive thread next looks."""
        with self.lock:
            self._log("fault", {"fault": "power_cut", "seconds": down_s})
            self.reader.power_off()
            self._hung_until = float("inf")  # dark until the reboot below clears it
        self._reboot = True
        self._unplug_for = down_s

    def inject(self, kind: FaultKind, direction: str = "to_gate", count: int = 1) -> None:
        """Arm a one-shot line fault for the next `count` frames (to_gate) or reads (to_device)."""
        line = {"to_gate": self.to_gate, "to_device": self.to_device}.get(direction)
        if line is None:
            raise ValueError(f"direction must be 'to_gate' or 'to_device', not {direction!r}")
        line.arm(kind, count)
        with self.lock:
            self._log("fault", {"fault": kind.value, "direction": direction, "count": count})

    # ------------------------------------------------------------ history

    def _log(self, kind: str, data: dict[str, Any]) -> None:
        record = Record(self.scheduler.now(), self.gate, kind, data)
        self.history.append(record)
        for listener in list(self.listeners):
            listener(record)

    def records(self, kind: str | None = None, since: float = 0.0) -> list[Record]:
        with self.lock:
            return [r for r in self.history if r.t >= since and (kind is None or r.kind == kind)]

    # ------------------------------------------------------------ sending

    def _send(self, seq: int, message: Message) -> bytes:
        data = encode(message.to_frame(seq))
        self._log("tx", {"seq": seq, "message": message})
        self._transmit(data)
        return data

    def _transmit(self, data: bytes, noise: bool = False) -> None:
        """Queue bytes for the line, ready at the device time (under the lock)."""
        self._tx_queued += 1
        self._tx.put((data, noise, self.scheduler.now()))

    def line_idle(self) -> bool:
        """Nothing queued for the controller and the line's last byte delivered (for benchmarks that
        must not start a measurement behind the previous one's events)."""
        with self.lock:
            return (self._tx_done == self._tx_queued
                    and self._tx_pacer.line_free_at <= self.clock())

    def _emit(self, event: Message) -> None:
        self._event_seq = (self._event_seq + 1) & 0xFF
        self._send(self._event_seq, event)

    def _respond_later(self, seq: int, key: RequestKey) -> Callable[[Message], None]:
        session = self._session

        def respond(message: Message) -> None:
            if session != self._session:  # the controller that asked is gone: its SEQ may be reused
                self._log("drop", {"seq": seq, "message": message, "why": "earlier session"})
                return
            self._recent[key] = self._send(seq, message)
        return respond

    def _remember(self, key: RequestKey) -> None:
        self._recent[key] = None
        while len(self._recent) > RECENT:
            self._recent.popitem(last=False)

    # ------------------------------------------------------------ receiving

    def _handle(self, frame: Frame) -> None:
        """One frame from the controller (under the lock)."""
        seq, key = frame.seq, (frame.seq, frame.command, frame.payload)
        if frame.command == Command.OPEN_SESSION:  # before the cache: a new session never hits it
            self._open_session(frame)
            return
        if key in self._recent:
            cached = self._recent[key]
            self._log("rx", {"seq": seq, "command": frame.command, "repeat": True})
            if cached is not None:
                self._transmit(cached)
            return
        try:
            if kind_of(frame.command) is not Kind.REQUEST:
                raise PayloadError(NakReason.UNKNOWN_COMMAND, f"0x{frame.command:02X} is not a request")
            message = parse(frame)
        except PayloadError as error:
            self._log("rx", {"seq": seq, "command": frame.command, "error": error.reason.name})
            self._remember(key)
            self._respond_later(seq, key)(Nak(frame.command, error.reason))
            return
        self._log("rx", {"seq": seq, "message": message})
        self._remember(key)
        self._handlers[type(message)](message, seq, key)

    def _open_session(self, frame: Frame) -> None:
        """A controller (re)opened the port: forget the retry cache and the answers still owed.

        Logged as a link record, not rx: it is the link's life cycle, like plugged and unplugged.
        An RF operation of the earlier session runs on (a write is never cut short) but its answer is
        dropped; until it ends, the new session's RF requests get NAK BUSY."""
        try:
            message = parse(frame)
        except PayloadError as error:
            self._log("rx", {"seq": frame.seq, "command": frame.command, "error": error.reason.name})
            self._send(frame.seq, Nak(frame.command, error.reason))
            return
        assert isinstance(message, OpenSession)
        self._session += 1
        self._recent.clear()
        self._log("link", {"state": "session", "seq": frame.seq, "nonce": message.nonce,
                           "session": self._session})
        self._send(frame.seq, SessionOpened(message.nonce, self.boot_id))

    def _on_heartbeat(self, _: Heartbeat, seq: int, key: RequestKey) -> None:
        self._respond_later(seq, key)(HeartbeatReply(self.boot_id, self.uptime_ms()))

    def _on_status(self, _: GetStatus, seq: int, key: RequestKey) -> None:
        barrier, decoder = self.barrier, self.decoder
        self._respond_later(seq, key)(Status(
            barrier.position, barrier.direction, barrier.passages_pending, int(barrier.in_passage > 0),
            min(255, len(self.reader.in_range())), self.panel.lights, self.config.reader.rssi_threshold_dbm,
            barrier.entries, barrier.exits, min(0xFFFF, barrier.alarms[AlarmKind.TAILGATING]),
            min(0xFFFF, barrier.alarms[AlarmKind.FORCED_DOOR]), decoder.frames & 0xFFFFFFFF,
            decoder.bad_crc & 0xFFFFFFFF, decoder.discarded_bytes & 0xFFFFFFFF, self.uptime_ms(),
            self.boot_id))

    def _on_version(self, _: GetVersion, seq: int, key: RequestKey) -> None:
        major, minor, patch = self.config.firmware
        self._respond_later(seq, key)(Version(major, minor, patch, PROTOCOL_VERSION, self.config.model))

    def _on_poll(self, _: PollField, seq: int, key: RequestKey) -> None:
        self._respond_later(seq, key)(Field(self.reader.in_range()))

    def _on_read(self, message: ReadWallet, seq: int, key: RequestKey) -> None:
        if self.reader.busy is not None:
            self._respond_later(seq, key)(Nak(message.CODE, NakReason.BUSY))
            return
        self.reader.read(message.card_id, self._respond_later(seq, key))

    def _on_write(self, message: WriteSlot, seq: int, key: RequestKey) -> None:
        if self.reader.busy is not None:
            self._respond_later(seq, key)(Nak(message.CODE, NakReason.BUSY))
            return
        self.reader.write(message.card_id, message.slot, message.record, self._respond_later(seq, key))

    def _on_open(self, message: BarrierOpen, seq: int, key: RequestKey) -> None:
        self._respond_later(seq, key)(Ack(message.CODE))  # acknowledge first, then start the motor
        self._log("authorise", {"direction": message.direction.name, "passages": message.passages})
        self.barrier.open(message.direction, message.passages, message.hold_ms)

    def _on_close(self, message: BarrierClose, seq: int, key: RequestKey) -> None:
        self._respond_later(seq, key)(Ack(message.CODE))
        self.barrier.close()

    def _on_display(self, message: Display, seq: int, key: RequestKey) -> None:
        panel = self.panel
        panel.style, panel.line_zh, panel.line_en = message.style, message.line_zh, message.line_en
        self._log("display", {"style": message.style.name, "zh": message.line_zh, "en": message.line_en})
        if message.timeout_ms:
            self.scheduler.call_later(message.timeout_ms / 1000, self._clear_display, message)
        self._respond_later(seq, key)(Ack(message.CODE))

    def _clear_display(self, shown: Display) -> None:
        panel = self.panel
        if (panel.style, panel.line_zh, panel.line_en) == (shown.style, shown.line_zh, shown.line_en):
            panel.style, panel.line_zh, panel.line_en = DisplayStyle.INFO, "", ""
            self._log("display", {"style": "INFO", "zh": "", "en": ""})

    def _on_lights(self, message: Lights, seq: int, key: RequestKey) -> None:
        self.panel.lights, self.panel.blink = message.lights, message.blink
        self._log("lights", {"lights": int(message.lights), "blink": message.blink})
        self._respond_later(seq, key)(Ack(message.CODE))

    def _on_buzzer(self, message: Buzzer, seq: int, key: RequestKey) -> None:
        self.panel.buzzer = message.pattern
        self._log("buzzer", {"pattern": message.pattern.name, "duration_ms": message.duration_ms})
        self._respond_later(seq, key)(Ack(message.CODE))

    # ------------------------------------------------------------ threads

    def _schedule_noise(self) -> None:
        delay = self.to_gate.next_noise_delay()
        if delay is not None:
            self.scheduler.call_later(delay, self._noise_burst)

    def _noise_burst(self) -> None:
        if self._stopping.is_set():
            return
        self.to_gate.count_noise()
        self._transmit(self.to_gate.noise(), noise=True)
        self._schedule_noise()

    def _receive_loop(self) -> None:
        last_byte_at = self.clock()
        next_noise = self._next_input_noise()
        while not self._stopping.is_set():
            if self._unplug_for is not None:
                self._do_unplug()
                continue
            try:
                data = self.link.read(_POLL_S)
            except OSError as error:
                with self.lock:
                    self._log("link", {"error": str(error)})
                time.sleep(_POLL_S)
                continue
            if data is None:  # link down
                time.sleep(_POLL_S)
                continue
            now = self.clock()
            if next_noise is not None and now >= next_noise:
                self.to_device.count_noise()
                data += self.to_device.noise()
                next_noise = self._next_input_noise()
            if not data:
                if self.decoder.pending and now - last_byte_at > FRAME_GAP_S:
                    self._dispatch(self.decoder.expire(), now)
                continue
            last_byte_at = now
            arrived = self._rx_pacer.arrival(len(data), now)
            if self.hung:
                continue
            self._dispatch(self.decoder.feed(self.to_device.apply(data)), arrived)

    def _next_input_noise(self) -> float | None:
        delay = self.to_device.next_noise_delay()
        return None if delay is None else self.clock() + delay

    def _dispatch(self, frames: list[Frame], arrived: float) -> None:
        if not frames:
            return
        sleep_until(arrived, self.clock)  # honest timing: act only once the last byte could have arrived
        with self.scheduler.acting_at(arrived):  # and as at that instant, however late this thread woke
            for frame in frames:
                self._handle(frame)

    def _do_unplug(self) -> None:
        down_s, self._unplug_for = self._unplug_for or 0.0, None
        reboot, self._reboot = self._reboot, False
        self.link.close()
        with self.lock:
            self._log("link", {"state": "unplugged"})
            if reboot:
                self.reader.power_off()
                self.barrier.reset()
                self.panel = Panel()
                self._hung_until = 0.0
        self._stopping.wait(down_s)
        if self._stopping.is_set():
            return
        self.link.reopen()
        self.decoder.reset()
        with self.lock:
            self._log("link", {"state": "plugged", "url": self.link.name})
            if reboot:
                self.decoder = FrameDecoder()
                self._recent.clear()
                self._event_seq = 0
                self.boot_id = (self.boot_id + 1) & 0xFFFF or 1
                self.started_at = self.clock()
                major, minor, patch = self.config.firmware
                self._emit(Boot(self.boot_id, major, minor, patch, PROTOCOL_VERSION))
                self.reader.power_on()

    def _transmit_loop(self) -> None:
        while True:
            item = self._tx.get()
            if item is None or self._stopping.is_set():
                return
            data, noise, ready_at = item
            try:
                if self.hung or not self.link.is_open:
                    continue  # a frozen firmware sends nothing; an unplugged cable carries nothing
                if not noise:
                    data = self.to_gate.apply(data)
                self._tx_pacer.send(data, self.link.write, self.clock, ready_at=ready_at)
            finally:
                self._tx_done += 1

    # ------------------------------------------------------------ for tests

    def describe(self) -> dict[str, Any]:
        """A snapshot of the state (barrier, panel, field, counters)."""
        with self.lock:
            return {
                "gate": self.gate,
                "url": self.url,
                "barrier": self.barrier.position.name,
                "display": (self.panel.line_zh, self.panel.line_en),
                "field": [message_fields(p) for p in self.reader.in_range()],
                "rx_frames": self.decoder.frames,
                "rx_bad_crc": self.decoder.bad_crc,
                "rx_discarded_bytes": self.decoder.discarded_bytes,
                "entries": self.barrier.entries,
                "exits": self.barrier.exits,
            }
