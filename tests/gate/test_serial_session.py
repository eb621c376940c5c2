"""The gate's link opens a session (OpenSession) as the first frame on every open of the port, and
nothing else goes out before its SessionOpened: against the simulated reader on a real pty."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from firmware_sim.sim import Sim
from firmware_sim.transport import PtyLink
from gate.serial_link import LinkTimeout, ReaderLink
from protocol.serial import FieldChanged, Heartbeat, HeartbeatReply, PhoneSignal, encode


def _link_and_rx(sim: Sim) -> list[tuple[str, Any]]:
    """The device's history of sessions, plugs and requests, in order."""
    found = []
    for record in sim.gate(0).records():
        if record.kind == "rx":
            found.append(("rx", record.data.get("message")))
        elif record.kind == "link" and "state" in record.data:
            found.append((record.data["state"], record.data.get("nonce")))
    return found


async def test_every_open_of_the_port_starts_with_a_session(tmp_path: Path) -> None:
    with Sim(gates=1, links=[tmp_path / "reader"]) as sim:
        asked: list[asyncio.Future[HeartbeatReply]] = []
        link: ReaderLink

        def on_state(up: bool) -> None:  # as the gate does: ask the device at once when the port is up
            if up:
                asked.append(asyncio.ensure_future(link.request(Heartbeat(), HeartbeatReply)))

        link = ReaderLink(sim.url(0), on_state=on_state)
        await link.open()
        try:
            first = link.session
            assert first is not None and first.boot_id == sim.gate(0).boot_id
            assert isinstance(await asked[0], HeartbeatReply)
            sim.unplug(0, 0.2)
            await asyncio.to_thread(sim.wait_for, lambda: len(asked) == 2, 10)
            assert isinstance(await asked[1], HeartbeatReply)
            second = link.session
            assert second is not None and second.nonce != first.nonce and link.reopens == 1
        finally:
            await link.close()
        history = _link_and_rx(sim)
    # each open: the session first, then the request made the moment the port came up
    assert history == [("session", first.nonce), ("rx", Heartbeat()), ("unplugged", None),
                       ("plugged", None), ("session", second.nonce), ("rx", Heartbeat())]


async def test_a_session_unanswered_fails_the_request_and_the_next_request_asks_again() -> None:
    with Sim(gates=1) as sim:
        device = sim.gate(0)
        sim.hang(0, 3600)  # the firmware is frozen when the gate comes up
        link = ReaderLink(sim.url(0), retries=0)  # one OpenSession each, no resend
        await link.open()  # returns although the session failed: the port is open
        try:
            assert link.is_up and link.session is None
            with pytest.raises(LinkTimeout, match="OpenSession"):
                await link.request(Heartbeat(), HeartbeatReply)  # a new OpenSession, unanswered too
            assert link.session is None
            with device.lock:
                device._hung_until = 0.0  # the firmware runs again
            assert isinstance(await link.request(Heartbeat(), HeartbeatReply), HeartbeatReply)
            session = link.session
            assert session is not None
        finally:
            await link.close()
        history = _link_and_rx(sim)
    assert history == [("session", session.nonce), ("rx", Heartbeat())]  # the frozen firmware saw nothing


async def test_what_the_line_held_before_the_open_is_not_served(tmp_path: Path) -> None:
    """A phone's FieldChanged sent while no controller had the port (the previous one stopped, this one
    not yet started) waits in the pty: served after the open, it would be a tap on a phone since gone.
    pyserial's open discards the input buffer (the field is polled after the open instead,
    GateController.link_up); one sent after the open is served."""
    device = PtyLink(tmp_path / "reader")
    try:
        stale = encode(FieldChanged((PhoneSignal(0x5B01, -40),)).to_frame(1))
        assert device.write(stale) == len(stale)
        link = ReaderLink(str(tmp_path / "reader"), session=False)
        await link.open()
        try:
            await asyncio.sleep(0.3)
            assert link.events.empty()
            fresh = encode(FieldChanged((PhoneSignal(0x5B02, -40),)).to_frame(2))
            device.write(fresh)
            async with asyncio.timeout(5):
                event = await link.events.get()
            assert isinstance(event, FieldChanged) and event.phones[0].card_id == 0x5B02
        finally:
            await link.close()
    finally:
        device.close()
