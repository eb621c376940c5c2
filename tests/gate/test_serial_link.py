"""The gate's serial link against a scripted device on a real pseudo-terminal."""

from __future__ import annotations

import asyncio
import os
import pty
import threading
import time
import tty
from collections.abc import Callable, Iterator

import pytest

from gate.serial_link import SILENT, LinkNak, LinkTimeout, ReaderLink, wake_up
from protocol.serial import (
    FrameDecoder,
    HeartbeatReply,
    Message,
    Nak,
    NakReason,
    ReadWallet,
    RfStatus,
    Wallet,
    parse,
)

Script = Callable[[int, Message], Message | None]  # (seq, request) -> answer or None (stay silent)
Device = Callable[[Script], tuple[str, list[tuple[int, Message]]]]


@pytest.fixture
def device() -> Iterator[Device]:
    """A device that answers each request as the script says, recording (seq, request)."""
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
        seq = link._seq  # the SEQ just sent
        flight = link._pending[seq]
        wake_up(flight.woken, SILENT)
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
