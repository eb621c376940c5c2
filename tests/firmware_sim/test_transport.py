"""Ports and pacing: the pacer's arithmetic, raw ptys, the pyserial URL opener."""

from __future__ import annotations

import os
import termios
from pathlib import Path

import pytest

from firmware_sim.transport import Pacer, PtyLink, TcpLink, open_port
from protocol.serial import Heartbeat, ReadWallet
from protocol.serial.timing import byte_time, response_timeout, wire_time


def test_byte_time_is_ten_bits() -> None:
    assert byte_time(115200) == pytest.approx(86.8e-6, rel=1e-3)
    assert wire_time(143, 115200) == pytest.approx(143 * 10 / 115200)
    with pytest.raises(ValueError):
        byte_time(0)


def test_pacer_never_hands_a_slice_over_before_its_last_byte_left() -> None:
    pacer = Pacer(115200)
    slices = pacer.plan(143, now=10.0)
    assert slices[0][1] == 0 and slices[-1][2] == 143
    for due, _start, end in slices:
        assert due == pytest.approx(10.0 + end * 10 / 115200)
    assert pacer.line_free_at == pytest.approx(10.0 + 143 * 10 / 115200)
    follow = pacer.plan(10, now=10.0)  # queued behind the first frame on the same line
    assert follow[-1][0] == pytest.approx(10.0 + 153 * 10 / 115200)
    assert pacer.slice_bytes == int(0.001 / (10 / 115200))


def test_pacer_send_sleeps_until_each_due_time() -> None:
    clock = [0.0]
    written: list[tuple[float, bytes]] = []
    pacer = Pacer(9600, slice_s=0.005)

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    def tick() -> float:  # a fake clock that moves a microsecond per reading (so spinning ends)
        clock[0] += 1e-6
        return clock[0]

    pacer.send(bytes(20), lambda data: written.append((clock[0], data)), clock=tick, sleep=sleep)
    assert b"".join(d for _, d in written) == bytes(20)
    for (at, _), (due, _, _) in zip(written, Pacer(9600, slice_s=0.005).plan(20, 0.0), strict=True):
        assert at >= due - 1e-12


class _FakeLine:
    """A fake clock that moves a microsecond per reading (so spinning ends) and records writes."""

    def __init__(self, start: float) -> None:
        self.now = start
        self.written: list[tuple[float, bytes]] = []

    def clock(self) -> float:
        self.now += 1e-6
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)

    def write(self, data: bytes) -> None:
        self.written.append((self.now, data))


@pytest.mark.parametrize("ready_at", [0.5, 1.0, 1.5])  # before the call (a late thread), at it, after it
def test_pacer_starts_a_frame_when_it_was_ready_never_before(ready_at: float) -> None:
    byte = 10 / 9600
    line, pacer = _FakeLine(1.0), Pacer(9600, slice_s=0.005)
    pacer.send(bytes(range(20)), line.write, clock=line.clock, sleep=line.sleep, ready_at=ready_at)
    assert b"".join(d for _, d in line.written) == bytes(range(20))
    sent = 0
    for at, data in line.written:
        sent += len(data)
        assert at >= ready_at + sent * byte - 1e-12  # no byte before the line could have carried it
    assert pacer.line_free_at == pytest.approx(ready_at + 20 * byte)


def test_pacer_frame_ready_early_still_waits_for_a_busy_line() -> None:
    line, pacer = _FakeLine(1.0), Pacer(9600, slice_s=0.005)
    pacer.line_free_at = 1.2  # still sending an earlier frame: that one goes first
    pacer.send(bytes(5), line.write, clock=line.clock, sleep=line.sleep, ready_at=0.9)
    assert line.written[-1][0] >= 1.2 + 5 * 10 / 9600


def test_receive_side_arrival() -> None:
    pacer = Pacer(115200)
    assert pacer.arrival(14, 1.0) == pytest.approx(1.0 + 14 * 10 / 115200)


def test_response_timeouts_cover_rf_time() -> None:
    assert response_timeout(ReadWallet(1)) > 0.3 > response_timeout(Heartbeat())


def test_pty_is_raw_and_talks_both_ways() -> None:
    link = PtyLink()
    try:
        attrs = termios.tcgetattr(link._slave)
        assert not attrs[3] & termios.ECHO and not attrs[3] & termios.ICANON
        with open_port(link.name, timeout=0.5) as port:
            port.write(b"\xa5\x00\n\r\x03")  # no line discipline: bytes pass untouched
            got = b""
            while len(got) < 5:
                got += link.read(0.5) or b""
            assert got == b"\xa5\x00\n\r\x03"
            assert link.write(b"\x11\x13\r\n") == 4
            assert port.read(4) == b"\x11\x13\r\n"
    finally:
        link.close()
    assert not link.is_open and link.read(0.01) is None
    assert link.write(b"x") == 0 and link.dropped_bytes == 1


def test_pty_link_symlink_follows_reopen(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "reader")
    link = PtyLink(path)
    try:
        assert os.path.realpath(path) == link.slave_path
        link.reopen()
        assert os.path.realpath(path) == link.slave_path
    finally:
        link.close()
    assert not os.path.lexists(path)


def test_an_unplug_removes_the_link_path_before_the_line_dies(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A controller that sees the line end reopens by the path: were the path still there, it could
    lead to the closed pty's number, which the kernel hands to the next pty opened on the machine."""
    path = tmp_path / "reader"
    link = PtyLink(path)
    master, seen = link._master, []
    real_close = os.close

    def close(fd: int) -> None:
        if fd == master:
            seen.append(os.path.lexists(path))
        real_close(fd)

    monkeypatch.setattr(os, "close", close)
    link.close()
    monkeypatch.undo()
    assert seen == [False] and not link.is_open


def test_tcp_link_accepts_and_echoes() -> None:
    link = TcpLink()
    try:
        with open_port(link.name, timeout=0.5) as port:
            assert link.read(0.5) == b""  # the accept
            port.write(b"abc")
            got = b""
            while len(got) < 3:
                got += link.read(0.5) or b""
            assert got == b"abc"
            link.write(b"xyz")
            assert port.read(3) == b"xyz"
    finally:
        link.close()


def test_a_second_simulator_refuses_a_link_in_use_and_takes_it_once_freed(tmp_path: Path) -> None:
    link = tmp_path / "gate0"
    first = PtyLink(link)
    try:
        target = os.readlink(link)
        with pytest.raises(OSError, match="in use by another simulator"):
            PtyLink(link)
        assert os.readlink(link) == target  # the first one's symlink is untouched
    finally:
        first.close()
    assert not link.exists()
    second = PtyLink(link)  # free again: a stopped (or killed) simulator never leaves it stuck
    try:
        assert os.readlink(link) == second.slave_path
    finally:
        second.close()
