"""Ports: the device's side of a pseudo-terminal or TCP socket, the controller's pyserial side, and
the pacer that keeps bytes to the baud rate.

The controller side is always `serial.serial_for_url(url)`, so the same code talks to a pty path, a
real /dev/ttyUSB0 or `socket://127.0.0.1:PORT`.

The device side is a `Link`. Threading contract: `read`, `close` and `reopen` are called by one
thread only (the device's receive thread, which owns the link's life); `write` may be called by
another thread at the same time. A write while the link is down or nobody listens is dropped, as a
UART drops bytes into an unplugged cable.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pty
import select
import socket
import termios
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import serial

from protocol.serial.timing import BITS_PER_BYTE, DEFAULT_BAUD

#: Writes are sliced so no slice is delivered before its last byte would have left a real UART,
#: with slices about this long (shorter slices cost CPU, longer ones delay the first byte).
PACING_SLICE_S = 0.001


#: The last stretch before a frame's final slice is due is spun rather than slept: Linux oversleeps
#: by 50-100 µs, which would add to every response's latency (earlier slices may be late, harmlessly).
SPIN_S = 0.0002


def sleep_until(deadline: float, clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], object] = time.sleep, spin_s: float = SPIN_S,
                spin: Callable[[], object] = os.sched_yield) -> None:
    """Return at `deadline` or just after, never before: sleep most of the way, spin the rest.

    The spin yields with sched_yield, which releases the GIL and returns in about a microsecond;
    `time.sleep(0)` would arm a timer and come back 60-80 µs later, past the deadline.
    """
    delay = deadline - clock()
    if delay > spin_s:
        sleep(delay - spin_s)
    while clock() < deadline:
        spin()


class Pacer:
    """Delivers bytes no faster than the line could: a frame of n bytes takes n x 10 / baud.

    The pacer keeps the time the line becomes free; a write starts then (or when its frame was ready,
    if later), and each slice of it is handed over only once its last byte would have been fully
    transmitted. Sleeping may oversleep (the bytes arrive a little late, as after a busy UART), never
    undersleep.
    """

    def __init__(self, baud: int = DEFAULT_BAUD, bits_per_byte: int = BITS_PER_BYTE,
                 slice_s: float = PACING_SLICE_S) -> None:
        if baud <= 0:
            raise ValueError(f"baud must be positive, not {baud}")
        self.baud = baud
        self.byte_time = bits_per_byte / baud
        self.slice_bytes = max(1, int(slice_s / self.byte_time))
        self.line_free_at = 0.0

    def wire_time(self, n_bytes: int) -> float:
        return n_bytes * self.byte_time

    def plan(self, n_bytes: int, now: float) -> list[tuple[float, int, int]]:
        """Slices (due time, start, end) for `n_bytes` written at `now`; advances the line clock."""
        begin = max(now, self.line_free_at)
        slices = []
        for start in range(0, n_bytes, self.slice_bytes):
            end = min(n_bytes, start + self.slice_bytes)
            slices.append((begin + end * self.byte_time, start, end))
        self.line_free_at = begin + n_bytes * self.byte_time
        return slices

    def send(self, data: bytes, write: Callable[[bytes], object],
             clock: Callable[[], float] = time.monotonic,
             sleep: Callable[[float], object] = time.sleep, ready_at: float | None = None) -> None:
        """Write `data` through `write`, each slice at its due time (the last one precisely).

        `ready_at` is when the device had the frame ready for the line (its device time, see
        scheduler.py; default now): the line starts then, or when it is free if later. A frame
        ready before this call is not delayed by the thread hand-off to it, and a slice already due
        goes at once; no slice ever goes before `ready_at` plus the wire time of its last byte.
        """
        slices = self.plan(len(data), clock() if ready_at is None else ready_at)
        for index, (due, start, end) in enumerate(slices):
            if index == len(slices) - 1:
                sleep_until(due, clock, sleep)
            else:
                delay = due - clock()
                if delay > 0:
                    sleep(delay)
            write(data[start:end])

    def arrival(self, n_bytes: int, read_at: float) -> float:
        """Receive side: when `n_bytes` read at `read_at` had fully arrived (advances the line clock)."""
        self.line_free_at = max(read_at, self.line_free_at) + n_bytes * self.byte_time
        return self.line_free_at


class Link(Protocol):
    """The device's end of the cable."""

    @property
    def name(self) -> str: ...  # what a controller opens: a pty path or a socket:// URL

    @property
    def is_open(self) -> bool: ...

    def read(self, timeout: float) -> bytes | None:
        """Bytes received within `timeout` (b"" if none); None if the link is down."""

    def write(self, data: bytes) -> int:
        """Queue `data` for the controller; returns the bytes accepted (the rest is dropped)."""

    def close(self) -> None: ...

    def reopen(self) -> None: ...


class PtyLink:
    """A pseudo-terminal in raw mode: the controller opens `slave_path` (or the `link` symlink).

    The device keeps its own descriptor of the slave open, so the pair survives a controller closing
    and reopening the port. `close()` closes both ends: a controller blocked on the port then gets a
    SerialException, exactly as when a USB adapter is pulled out. `reopen()` makes a new pair and
    points the symlink at it (the kernel picks a new /dev/pts number, as it picks a new ttyUSB).
    """

    def __init__(self, link: str | Path | None = None, baud: int = DEFAULT_BAUD) -> None:
        self.baud = baud
        self.link_path = Path(link) if link is not None else None
        self._lock = threading.Lock()
        self._master = -1
        self._slave = -1
        self.slave_path = ""
        self.dropped_bytes = 0
        self._claim = -1
        try:
            self.reopen()
        except BaseException:
            self._release()
            raise

    @property
    def name(self) -> str:
        return str(self.link_path) if self.link_path is not None else self.slave_path

    @property
    def is_open(self) -> bool:
        return self._master >= 0

    def reopen(self) -> None:
        self._close_pair()
        if self.link_path is not None and self._claim < 0:  # given up by close() (an unplug)
            self._claim = _claim_link(self.link_path)
        master, slave = pty.openpty()
        tty.setraw(slave)
        attrs = termios.tcgetattr(slave)
        speed = getattr(termios, f"B{self.baud}", None)
        if speed is not None:
            attrs[4] = attrs[5] = speed
            termios.tcsetattr(slave, termios.TCSANOW, attrs)
        os.set_blocking(master, False)
        slave_path = os.ttyname(slave)
        if self.link_path is not None:  # the link first: once is_open says so, the path opens
            temporary = self.link_path.with_name(self.link_path.name + ".new")
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            temporary.symlink_to(slave_path)
            temporary.replace(self.link_path)  # atomic: a controller never sees a missing link
        with self._lock:
            self._master, self._slave = master, slave
            self.slave_path = slave_path

    def read(self, timeout: float) -> bytes | None:
        master = self._master
        if master < 0:
            return None
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            return b""
        try:
            return os.read(master, 4096)
        except BlockingIOError:
            return b""
        except OSError as error:
            if error.errno == errno.EIO:  # no slave open at all: nothing to read yet
                return b""
            raise

    def write(self, data: bytes) -> int:
        with self._lock:
            if self._master < 0:
                self.dropped_bytes += len(data)
                return 0
            try:
                written = os.write(self._master, data)
            except (BlockingIOError, OSError):
                written = 0
        self.dropped_bytes += len(data) - written
        return written

    def close(self) -> None:
        """Close both ends and give the link path up (another simulator may claim it now)."""
        self._close_pair()
        self._release()

    def _release(self) -> None:
        if self._claim >= 0:
            os.close(self._claim)  # closing the descriptor drops its lock
            self._claim = -1

    def _close_pair(self) -> None:
        """The link path goes before the line dies, as a pulled adapter's node does. The other way
        round, a controller that saw the line end could follow the path to the closed pty's number
        while it still pointed there, and the kernel hands a freed /dev/pts number to the next pty
        opened on the machine (another simulator's): the controller would talk to the wrong device."""
        with self._lock:
            master, slave = self._master, self._slave
            self._master = self._slave = -1
        if master >= 0 and self.link_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link_path.unlink()
        for fd in (slave, master):
            if fd >= 0:
                os.close(fd)

    def __repr__(self) -> str:
        return f"PtyLink({self.name!r}, open={self.is_open})"


def _claim_link(link: Path) -> int:
    """Hold an exclusive lock on `<link>.lock` for as long as this link lives, so a second simulator
    told to use the same path refuses at once instead of taking the symlink over (and deleting it
    when it exits, under the first one's controller). The kernel drops the lock when the process dies,
    so a killed simulator never leaves the path stuck; a stale lock file is harmless."""
    lock_path = link.with_name(link.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OSError(errno.EBUSY, f"{link} is in use by another simulator (stop it, or choose "
                                   f"another --link)") from None
    return fd


class TcpLink:
    """A TCP server on 127.0.0.1 for pyserial's socket:// URLs, one controller at a time.

    A new connection replaces the previous one (a controller that reconnects after a timeout must not
    be locked out by its own dead socket). `close()` drops the connection and stops listening, so the
    controller sees the port vanish; `reopen()` listens again on the same port.
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self._lock = threading.Lock()
        self._server: socket.socket | None = None
        self._client: socket.socket | None = None
        self.dropped_bytes = 0
        self.reopen()

    @property
    def name(self) -> str:
        return f"socket://{self.host}:{self.port}"

    @property
    def is_open(self) -> bool:
        return self._server is not None

    def reopen(self) -> None:
        self.close()
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((self.host, self.port))
        server.listen(1)
        self.port = server.getsockname()[1]
        self._server = server

    def read(self, timeout: float) -> bytes | None:
        server = self._server
        if server is None:
            return None
        client = self._client
        watched = [server] if client is None else [server, client]
        ready, _, _ = select.select(watched, [], [], timeout)
        if server in ready:
            accepted, _ = server.accept()
            accepted.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            accepted.setblocking(False)
            self._set_client(accepted)
            return b""
        if client is None or client not in ready:
            return b""
        try:
            data = client.recv(4096)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError:
            data = b""
        if not data:  # the controller hung up: wait for the next one
            self._set_client(None)
        return data

    def _set_client(self, client: socket.socket | None) -> None:
        with self._lock:
            old, self._client = self._client, client
        if old is not None:
            old.close()

    def write(self, data: bytes) -> int:
        with self._lock:
            client = self._client
            written = 0
            if client is not None:
                try:
                    written = client.send(data)
                except OSError:
                    written = 0
        self.dropped_bytes += len(data) - written
        return written

    def close(self) -> None:
        self._set_client(None)
        server, self._server = self._server, None
        if server is not None:
            server.close()

    def __repr__(self) -> str:
        return f"TcpLink({self.name!r}, open={self.is_open})"


def open_port(url: str, baud: int = DEFAULT_BAUD, timeout: float | None = 0.1) -> serial.SerialBase:
    """The controller's side: any pyserial URL or device path, 8N1 at `baud`."""
    return serial.serial_for_url(url, baudrate=baud, bytesize=8, parity="N", stopbits=1, timeout=timeout)
