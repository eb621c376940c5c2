"""The gate's serial link against a scripted device on a real pseudo-terminal, and its transport
against a pseudo-terminal whose other side is not read (a stuck UART)."""

from __future__ import annotations

import asyncio
import os
import pty
import select
import threading
import time
import tty
from collections.abc import Callable, Iterator

import pytest

from gate.serial_link import LinkDown, LinkNak, LinkTimeout, ReaderLink, wake_up
from protocol.serial import (
    FrameDecoder,
    Heartbeat,
    HeartbeatReply,
    Message,
    Nak,
    NakReason,
    ReadWallet,
    RfStatus,
    Wallet,
    parse,
)
from protocol.serial.messages import OpenSession, SessionOpened
from protocol.serial.transactions import Wake

Script = Callable[[int, Message], Message | None]  # (seq, request) -> answer or None (stay silent)
Device = Callable[[Script], tuple[str, list[tuple[int, Message]]]]


@pytest.fixture
def device() -> Iterator[Device]:
    """A device that answers each request as the script says, recording (seq, request); it opens
    the link's session itself (OpenSession is neither scripted nor recorded)."""
    stop = threading.Event()
    threads: list[threading.Thread] = []
    fds: list[int] = []

    def start(script: Script) -> tuple[str, list[tuple[int, Message]]]:
        master, slave = pty.openpty()
        tty.setraw(slave)
        fds.extend((master, slave))
        seen: list[tuple[int, Message]] = []

        def serve() -> None:
            decoder = FrameDecoder()
            os.set_blocking(master, False)
            while not stop.is_set():
                try:
                    data = os.read(master, 4096)
                except (BlockingIOError, OSError):
                    stop.wait(0.002)
                    continue
                for frame in decoder.feed(data):
                    request = parse(frame)
                    if isinstance(request, OpenSession):
                        os.write(master, SessionOpened(request.nonce, 1).to_bytes(frame.seq))
                        continue
                    seen.append((frame.seq, request))
                    answer = script(len(seen), request)
                    if answer is not None:
                        os.write(master, answer.to_bytes(frame.seq))

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        threads.append(thread)
        return os.ttyname(slave), seen

    yield start
    stop.set()
    for thread in threads:
        thread.join(5)
    for fd in fds:
        os.close(fd)


async def test_busy_is_retried_as_a_new_request(device: Device) -> None:
    wallet = Wallet(7, RfStatus.OK, bytes(128))
    path, seen = device(lambda n, req: Nak(req.CODE, NakReason.BUSY) if n <= 2 else wallet)
    link = ReaderLink(path)
    await link.open()
    try:
        answer = await link.request(ReadWallet(7), Wallet)
    finally:
        await link.close()
    assert answer == wallet
    seqs = [seq for seq, _ in seen]
    assert len(seqs) == 3 and len(set(seqs)) == 3  # a NAK is final for its SEQ: each retry is new


async def test_other_naks_are_final_and_silence_times_out(device: Device) -> None:
    path, seen = device(lambda n, req: Nak(req.CODE, NakReason.BAD_PAYLOAD))
    link = ReaderLink(path)
    await link.open()
    try:
        with pytest.raises(LinkNak, match="BAD_PAYLOAD"):
            await link.request(ReadWallet(7), Wallet)
        assert len(seen) == 1
    finally:
        await link.close()
    path, seen = device(lambda n, req: None)
    link = ReaderLink(path, retries=2)
    await link.open()
    try:
        with pytest.raises(LinkTimeout):
            await link.request(ReadWallet(7), Wallet, timeout=0.05)
    finally:
        await link.close()
    assert [seq for seq, _ in seen] == [seen[0][0]] * 3  # resent with the same SEQ, 1 + 2 retries


async def test_unexpected_answer_type_is_an_error(device: Device) -> None:
    path, _seen = device(lambda n, req: HeartbeatReply(1, 2))
    link = ReaderLink(path)
    await link.open()
    try:
        with pytest.raises(Exception, match="expected Wallet"):
            await link.request(ReadWallet(7), Wallet)
    finally:
        await link.close()


async def test_the_frame_is_on_the_wire_before_the_request_is_awaited(device: Device) -> None:
    """The controller sends the wallet write and journals the tap while the phone writes."""
    wallet = Wallet(7, RfStatus.OK, bytes(128))
    path, seen = device(lambda n, req: wallet)
    link = ReaderLink(path)
    await link.open()
    try:
        pending = link.request(ReadWallet(7), Wallet)
        deadline = time.monotonic() + 2.0
        while not seen and time.monotonic() < deadline:  # no await: the event loop does not run
            time.sleep(0.001)
        assert [type(request) for _, request in seen] == [ReadWallet]
        assert await pending == wallet
    finally:
        await link.close()


async def test_a_corrupt_frame_while_waiting_resends_at_once(device: Device) -> None:
    wallet = Wallet(7, RfStatus.OK, bytes(128))

    def corrupt_then_answer(n: int, request: Message) -> Message | None:
        return None if n == 1 else wallet

    path, seen = device(corrupt_then_answer)
    link = ReaderLink(path, retries=0)
    await link.open()
    try:
        pending = asyncio.ensure_future(link.request(ReadWallet(7), Wallet, timeout=30.0))
        while not seen:
            await asyncio.sleep(0.001)
        bad = bytearray(Wallet(7, RfStatus.OK, bytes(128)).to_bytes(seen[0][0]))
        bad[-1] ^= 0xFF  # the answer with a broken CRC, as line noise would leave it
        link.feed(bytes(bad))
        assert await asyncio.wait_for(pending, 5.0) == wallet  # the 30 s timeout would come far later
        assert link.timeouts == 0  # resent on the corrupt frame, not after a silence
    finally:
        await link.close()
    assert [seq for seq, _ in seen] == [seen[0][0]] * 2  # the same SEQ: the device answers from cache


async def test_an_answer_right_after_a_timeout_is_taken_without_a_resend(device: Device) -> None:
    """The timer fires and the answer is read in the same loop iteration: the answer wins."""
    wallet = Wallet(7, RfStatus.OK, bytes(128))
    path, seen = device(lambda n, req: None)  # the device stays silent; the test answers
    link = ReaderLink(path, retries=3)
    await link.open()
    try:
        pending = link.request(ReadWallet(7), Wallet, timeout=30.0)
        seq = link._seqs.last  # the SEQ just sent
        flight = link._pending[seq]
        wake_up(flight.woken, Wake.SILENCE)
        link.feed(wallet.to_bytes(seq))
        assert await pending == wallet
        assert link.timeouts == 0
        deadline = time.monotonic() + 2.0
        while not seen and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # a resend would already be on the line: give the device time to read it
    finally:
        await link.close()
    assert len(seen) == 1


async def test_a_request_frame_from_the_device_answers_nothing(device: Device) -> None:
    """Only response codes answer requests; a request code read back (a looped-back line) is
    neither an answer nor an event."""
    path, _seen = device(lambda n, req: None)
    link = ReaderLink(path, retries=0)
    await link.open()
    try:
        pending = asyncio.ensure_future(link.request(Heartbeat(), HeartbeatReply, timeout=0.2))
        link.feed(Heartbeat().to_bytes(link._seqs.last))
        with pytest.raises(LinkTimeout):
            await pending
        assert link.bad_frames == 1 and link.events.empty()
    finally:
        await link.close()


# ------------------------------------------------------------------- a port that takes nothing
@pytest.fixture
def quiet_pty() -> Iterator[tuple[str, int]]:
    """A pseudo-terminal whose device side nobody reads until the test does: writes fill it."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    yield os.ttyname(slave), master
    os.close(master)
    os.close(slave)


async def _tick(ticks: list[float]) -> None:
    while True:
        ticks.append(time.monotonic())
        await asyncio.sleep(0.005)


def _saturate(path: str) -> int:
    """Fill the pty through a second descriptor of our own until the kernel takes nothing more, even
    after pauses: a pty hands its buffered bytes on to the other side's line discipline in deferred
    bursts, so one EAGAIN does not yet mean full, and a test that needs "the port takes nothing" must
    wait for the bursts to end. Returns the zero bytes written (line noise, skipped by a decoder)."""
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY)
    written, idle_rounds = 0, 0
    try:
        while idle_rounds < 5:
            took = 0
            while True:
                try:
                    took += os.write(fd, bytes(4096))
                except BlockingIOError:
                    break
            written += took
            idle_rounds = idle_rounds + 1 if took == 0 else 0
            time.sleep(0.02)
    finally:
        os.close(fd)
    return written


def _fill(link: ReaderLink) -> int:
    """Saturate the port, then hand the link bytes it must hold back; returns all the noise written."""
    noise = _saturate(link.url) + 4096
    link.transport.write(bytes(4096))
    assert link.transport.out_pending == 4096
    return noise


def _read(master: int, n_bytes: int, limit_s: float = 5.0) -> bytes:
    """The device side reads `n_bytes` (blocking, in a worker thread)."""
    data = bytearray()
    deadline = time.monotonic() + limit_s
    while len(data) < n_bytes and time.monotonic() < deadline:
        if select.select([master], [], [], 0.05)[0]:
            data += os.read(master, 65536)
    return bytes(data)


async def test_a_write_the_port_cannot_take_waits_on_the_loop_not_in_it(quiet_pty: tuple[str, int]) -> None:
    path, master = quiet_pty
    link = ReaderLink(path, session=False)  # the transport alone: nobody answers an OpenSession
    await link.open()
    ticks: list[float] = []
    ticker = asyncio.create_task(_tick(ticks))
    try:
        noise = _saturate(path)
        blob = bytes(range(256)) * 256
        started = time.monotonic()
        link.transport.write(blob)
        assert time.monotonic() - started < 0.05  # handed over, not waited for
        held_back = link.transport.out_pending
        assert held_back == len(blob)
        before = len(ticks)
        await asyncio.sleep(0.2)
        assert len(ticks) - before >= 10  # the loop ran other tasks meanwhile
        assert link.transport.out_pending == held_back and link.is_up  # nothing drained, not down
        line = await asyncio.to_thread(_read, master, noise + len(blob))
        assert line == bytes(noise) + blob  # whole and in order, after what was there
        assert link.transport.out_pending == 0
    finally:
        ticker.cancel()
        await link.close()


async def test_a_request_behind_a_full_port_goes_out_whole_once_the_device_reads(
        quiet_pty: tuple[str, int]) -> None:
    path, master = quiet_pty
    link = ReaderLink(path, session=False)  # the transport alone: nobody answers an OpenSession
    await link.open()
    ticks: list[float] = []
    ticker = asyncio.create_task(_tick(ticks))
    try:
        noise = _fill(link)
        pending = link.request(Heartbeat(), HeartbeatReply, timeout=10.0)  # returns at once
        seq = link._seqs.last
        before = len(ticks)
        await asyncio.sleep(0.1)
        assert len(ticks) - before >= 5
        frame = Heartbeat().to_bytes(seq)
        line = await asyncio.to_thread(_read, master, noise + len(frame))
        assert line == bytes(noise) + frame  # the request came out whole, after the noise
        os.write(master, HeartbeatReply(1, 2).to_bytes(seq))
        assert await asyncio.wait_for(pending, 5.0) == HeartbeatReply(1, 2)
    finally:
        ticker.cancel()
        await link.close()


async def test_a_port_that_takes_nothing_for_too_long_is_down_and_reopened(
        quiet_pty: tuple[str, int]) -> None:
    path, _master = quiet_pty
    states: list[bool] = []
    link = ReaderLink(path, on_state=states.append, stall_s=0.3, session=False)
    await link.open()
    ticks: list[float] = []
    ticker = asyncio.create_task(_tick(ticks))
    try:
        _fill(link)
        pending = link.request(Heartbeat(), HeartbeatReply, timeout=30.0)
        started = time.monotonic()
        with pytest.raises(LinkDown, match="took no byte"):
            await asyncio.wait_for(pending, 10.0)
        assert 0.25 < time.monotonic() - started < 5.0  # the stall limit, not the request's 30 s timeout
        assert len(ticks) >= 30  # the loop ran throughout
        assert link.transport.stalls == 1 and link._pending == {}
        assert await link.wait_up(3.0) and link.reopens == 1
        assert states == [True, False, True]
    finally:
        ticker.cancel()
        await link.close()
