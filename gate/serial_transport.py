"""One serial port on the event loop: open, read into frames, write without blocking, reopen.

The port is opened with pyserial's `serial_for_url` (a pseudo-terminal, /dev/ttyUSB0 or socket://)
and then driven on its file descriptor: `add_reader` reads it, so a byte costs no thread hand-off on
the tap path, and writes never block the loop. A write puts on the port what it takes at once
(`os.write` on the non-blocking descriptor; pyserial's own write with write_timeout=0 spins while the
buffer is full) and hands the rest to `add_writer`, which sends it as the port drains. A port that
accepts no byte for `stall_s` counts as down: a stuck UART costs the gate one reopen, never a frozen
journal and uplink. Gates run Linux: POSIX only.

Bytes go to a FrameDecoder that only ever returns whole frames with a good CRC; a partial frame left
when the line goes quiet for FRAME_GAP_S is a false START and is expired. The decoder is reset on
every (re)open: half a frame is never acted on. What the frames mean is serial_link's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import serial

from protocol.serial import Frame, FrameDecoder
from protocol.serial.timing import DEFAULT_BAUD, FRAME_GAP_S

log = logging.getLogger(__name__)

#: A port that accepts no byte of a pending write for this long is taken for dead (the longest frame
#: takes 21 ms at 115200 baud, a full kernel buffer a few hundred ms).
WRITE_STALL_S = 1.0
REOPEN_FIRST_S = 0.05
REOPEN_MAX_S = 2.0


class LinkError(Exception):
    """A request to the device did not succeed."""


class LinkDown(LinkError):
    """The port is closed (unplugged, stalled, or not yet reopened)."""


class SerialTransport:
    """The port's lifecycle and bytes. `on_frame` gets every good frame, `on_corrupt` is called when
    bytes were thrown away (a corrupt frame may have been an answer), `on_state` with True on every
    open and with the LinkDown that closed it."""

    def __init__(self, url: str, baud: int = DEFAULT_BAUD, *, on_frame: Callable[[Frame], None],
                 on_corrupt: Callable[[], None], on_state: Callable[[LinkDown | None], None],
                 stall_s: float = WRITE_STALL_S) -> None:
        self.url = url
        self.baud = baud
        self.stall_s = stall_s
        self.decoder = FrameDecoder()
        self._on_frame = on_frame
        self._on_corrupt = on_corrupt
        self._on_state = on_state
        self._port: Any = None
        self._fd = -1
        self._out = bytearray()  # bytes written but not yet taken by the port
        self._out_progress = 0.0  # when the port last took a byte of them (monotonic)
        self._stall_handle: asyncio.TimerHandle | None = None
        self._up = asyncio.Event()
        self._closing = False
        self._reopen_task: asyncio.Task[None] | None = None
        self._expire_handle: asyncio.TimerHandle | None = None
        self._last_rx = 0.0
        self.rx_ns = 0  # when the latest bytes were read (perf_counter_ns)
        self.reopens = 0
        self.stalls = 0

    # ---------------------------------------------------------------------------- lifecycle
    @property
    def is_up(self) -> bool:
        return self._up.is_set()

    @property
    def out_pending(self) -> int:
        """Bytes written that the port has not taken yet."""
        return len(self._out)

    def open(self) -> None:
        """Open now if the port is there, else keep trying in the background."""
        self._closing = False
        try:
            self._open_port()
        except (serial.SerialException, OSError) as exc:
            log.warning("serial %s not available (%s); retrying", self.url, exc)
            self._schedule_reopen()

    async def wait_up(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):  # not wait_for: on 3.11 it can swallow a cancel
                await self._up.wait()
        return self.is_up

    async def close(self) -> None:
        self._closing = True
        if self._reopen_task is not None:
            self._reopen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reopen_task
        self._drop_port(LinkDown("link closed"))

    def _open_port(self) -> None:
        port = serial.serial_for_url(self.url, baudrate=self.baud, timeout=0, write_timeout=0)
        fd = port.fileno()
        os.set_blocking(fd, False)
        self._port, self._fd = port, fd
        self.decoder.reset()
        asyncio.get_running_loop().add_reader(fd, self._on_readable)
        self._up.set()
        log.info("serial %s open", self.url)
        self._on_state(None)

    def _drop_port(self, error: LinkDown) -> None:
        port, fd = self._port, self._fd
        self._port, self._fd = None, -1
        was_up = self.is_up
        self._up.clear()
        for handle in (self._expire_handle, self._stall_handle):
            if handle is not None:
                handle.cancel()
        self._expire_handle = self._stall_handle = None
        self._out.clear()
        if port is not None:
            loop = asyncio.get_running_loop()
            with contextlib.suppress(Exception):
                loop.remove_reader(fd)
            with contextlib.suppress(Exception):
                loop.remove_writer(fd)
            with contextlib.suppress(Exception):  # frames queued in the driver must not go out late
                port.reset_output_buffer()
            with contextlib.suppress(Exception):
                port.close()
        self.decoder.reset()
        if was_up:
            self._on_state(error)

    def _failed(self, why: str) -> LinkDown:
        log.warning("serial %s failed: %s; reopening", self.url, why)
        error = LinkDown(f"serial port failed: {why}")
        self._drop_port(error)
        self._schedule_reopen()
        return error

    def _schedule_reopen(self) -> None:
        if self._closing or (self._reopen_task is not None and not self._reopen_task.done()):
            return
        self._reopen_task = asyncio.get_running_loop().create_task(self._reopen_loop())

    async def _reopen_loop(self) -> None:
        delay = REOPEN_FIRST_S
        while not self._closing:
            await asyncio.sleep(delay)
            try:
                self._open_port()
            except (serial.SerialException, OSError):
                delay = min(delay * 2, REOPEN_MAX_S)
                continue
            self.reopens += 1
            return

    # ------------------------------------------------------------------------------- write
    def write(self, data: bytes) -> None:
        """Put `data` on the port without blocking: what the port takes now goes at once, the rest
        as it drains. LinkDown if the port is down or failed."""
        if self._fd < 0:
            raise LinkDown(f"serial {self.url} is down")
        if self._out:  # earlier bytes still wait: keep the order
            self._out += data
            return
        try:
            sent = os.write(self._fd, data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise self._failed(f"write: {exc}") from exc
        if sent < len(data):
            self._out += memoryview(data)[sent:]
            self._out_progress = time.monotonic()
            loop = asyncio.get_running_loop()
            loop.add_writer(self._fd, self._on_writable)
            self._stall_handle = loop.call_later(self.stall_s, self._check_stall)

    def _on_writable(self) -> None:
        try:
            sent = os.write(self._fd, self._out)
        except BlockingIOError:
            return
        except OSError as exc:
            self._failed(f"write: {exc}")
            return
        if sent:
            del self._out[:sent]
            self._out_progress = time.monotonic()
        if not self._out:
            asyncio.get_running_loop().remove_writer(self._fd)
            if self._stall_handle is not None:
                self._stall_handle.cancel()
                self._stall_handle = None

    def _check_stall(self) -> None:
        self._stall_handle = None
        if not self._out:
            return
        quiet = time.monotonic() - self._out_progress
        if quiet >= self.stall_s:
            self.stalls += 1
            self._failed(f"the port took no byte for {quiet:.2f} s ({len(self._out)} waiting)")
        else:
            self._stall_handle = asyncio.get_running_loop().call_later(self.stall_s - quiet,
                                                                       self._check_stall)

    # -------------------------------------------------------------------------------- read
    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:  # EIO: the other end of a pty went away, a USB adapter was pulled
            self._failed(f"read: {exc}")
            return
        if not data:  # readable yet empty: end of file (a socket closed, a tty hung up)
            self._failed("read: end of file")
            return
        self.feed(data)

    def feed(self, data: bytes) -> None:
        """Bytes just read from the port: whole frames are handed on, a partial one waits."""
        self.rx_ns = time.perf_counter_ns()
        self._last_rx = time.monotonic()
        decoder = self.decoder
        errors = decoder.bad_crc + decoder.length_errors
        for frame in decoder.feed(data):
            self._on_frame(frame)
        if decoder.bad_crc + decoder.length_errors != errors:
            self._on_corrupt()
        self._arm_expiry()

    def _arm_expiry(self) -> None:
        """A partial frame left pending after the line goes quiet is a false START: drop it."""
        if self._expire_handle is not None:
            self._expire_handle.cancel()
            self._expire_handle = None
        if self.decoder.pending:
            self._expire_handle = asyncio.get_running_loop().call_later(FRAME_GAP_S, self._expire)

    def _expire(self) -> None:
        self._expire_handle = None
        if time.monotonic() - self._last_rx >= FRAME_GAP_S:
            for frame in self.decoder.expire():
                self._on_frame(frame)
            self._on_corrupt()  # a frame was cut short: it may have been an answer
        self._arm_expiry()
