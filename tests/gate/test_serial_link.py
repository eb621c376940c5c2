"""The gate's serial link against a scripted device on a real pseudo-terminal."""

from __future__ import annotations

import os
import pty
import threading
import tty
from collections.abc import Callable, Iterator

import pytest

from firmware_sim.protocol import (
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
from gate.serial_link import LinkNak, LinkTimeout, ReaderLink

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
