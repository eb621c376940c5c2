"""Controller sessions: OpenSession empties the device's retry cache and drops the answers it still
owed to an earlier controller, so a restarted controller whose SEQs start over is never answered for
its predecessor; within a session a resend is still answered from the cache, never executed twice."""

from __future__ import annotations

import dataclasses
import time

from firmware_sim.client import SerialClient
from firmware_sim.sim import Sim
from protocol.serial import (
    PROTOCOL_VERSION,
    BarrierOpen,
    Direction,
    FieldChanged,
    GetVersion,
    Heartbeat,
    HeartbeatReply,
    Message,
    Nak,
    NakReason,
    ReadWallet,
    RfStatus,
    Version,
    Wallet,
)
from protocol.serial.messages import OpenSession, SessionOpened

from .conftest import ALICE, CAROL


def _answer(client: SerialClient, seq: int, timeout: float = 10.0) -> Message:
    """The response carrying `seq`, read off the line (raw frames: no transaction rules)."""
    deadline = time.monotonic() + timeout
    while seq not in client._responses:
        assert time.monotonic() < deadline, f"no answer with SEQ {seq}"
        client.poll(0.01)
    return client._responses.pop(seq)


def _exchange(client: SerialClient, message: Message, seq: int) -> Message:
    client.send_raw(message.to_bytes(seq))
    return _answer(client, seq)


def _move_wallet_on(sim: Sim, card: int) -> bytes:
    """Another gate's write since: the wallet the reader reads now differs from before."""
    record = sim.record(card)
    with sim.gate(0).lock:
        sim.wallets.issue(dataclasses.replace(record, counter=record.counter + 5))
    return sim.wallet(card)


def _repeats(sim: Sim) -> int:
    return sum(1 for r in sim.gate(0).records("rx") if r.data.get("repeat"))


def test_a_request_repeated_after_open_session_is_executed_afresh(sim: Sim, client: SerialClient) -> None:
    sim.present(ALICE, walk=False, dwell_s=10.0)
    client.next_event(FieldChanged)
    before = _exchange(client, ReadWallet(ALICE), 7)
    assert isinstance(before, Wallet) and before.status is RfStatus.OK
    now = _move_wallet_on(sim, ALICE)
    assert now != before.wallet
    # the same SEQ, command and payload without a session: the cache answers (a resend, as it should)
    assert _exchange(client, ReadWallet(ALICE), 7) == before and _repeats(sim) == 1
    # a new controller opens a session first: the same bytes are then a new request, read afresh
    opened = _exchange(client, OpenSession(0x5E55_1017), 1)
    assert opened == SessionOpened(0x5E55_1017, sim.gate(0).boot_id)
    fresh = _exchange(client, ReadWallet(ALICE), 7)
    assert isinstance(fresh, Wallet) and fresh.wallet == now
    assert _repeats(sim) == 1
    sessions = [r for r in sim.gate(0).records("link") if r.data.get("state") == "session"]
    assert [r.data["nonce"] for r in sessions] == [0x5E55_1017]


def test_a_resend_within_a_session_is_still_answered_from_the_cache(sim: Sim, client: SerialClient) -> None:
    _exchange(client, OpenSession(1), 200)
    frame = BarrierOpen(Direction.ENTRY, 1, 2000).to_bytes(77)
    client.send_raw(frame)
    first = _answer(client, 77)
    client.send_raw(frame)  # the controller's resend after a lost answer: same SEQ, same bytes
    assert _answer(client, 77) == first
    assert _repeats(sim) == 1
    assert sim.gate(0).barrier.passages_pending == 1  # one authorisation, not two
    assert len(sim.gate(0).records("authorise")) == 1


def test_open_session_is_always_executed_even_when_resent(sim: Sim, client: SerialClient) -> None:
    """Never answered from the cache: a new controller whose OpenSession has the bytes of an old
    one's still gets its cache emptied."""
    frame = OpenSession(42).to_bytes(9)
    for _ in range(2):
        client.send_raw(frame)
        assert _answer(client, 9) == SessionOpened(42, sim.gate(0).boot_id)
    assert _repeats(sim) == 0
    assert len([r for r in sim.gate(0).records("link") if r.data.get("state") == "session"]) == 2


def test_an_answer_owed_to_an_earlier_session_is_dropped(sim: Sim, client: SerialClient) -> None:
    """A read of the previous controller ends after the new one opened its session: its answer
    would carry a SEQ the new controller may be using, so it is never sent."""
    sim.present(CAROL, walk=False, dwell_s=10.0)
    client.next_event(FieldChanged)
    device = sim.gate(0)
    # three frames in one device action: the read cannot end in between (its timer needs the lock)
    with device.scheduler.acting_at(device.clock()):
        device._handle(ReadWallet(CAROL).to_frame(9))  # the previous controller, killed mid-read
        device._handle(OpenSession(7).to_frame(10))
        device._handle(ReadWallet(CAROL).to_frame(11))  # the reader is still on the old read
    assert _answer(client, 10) == SessionOpened(7, device.boot_id)
    assert _answer(client, 11) == Nak(ReadWallet.CODE, NakReason.BUSY)
    sim.wait_for(lambda: bool(device.records("drop")), timeout=5)
    assert [r.data["seq"] for r in device.records("drop")] == [9]
    wallet = _exchange(client, ReadWallet(CAROL), 12)  # the reader is free again: served
    assert isinstance(wallet, Wallet) and wallet.status is RfStatus.OK
    assert 9 not in client._responses  # all sent before the answer to 12 has been read: no 9


def test_the_client_opens_a_session_with_its_first_request(sim: Sim, client: SerialClient) -> None:
    assert client.session is None
    assert isinstance(client.request(Heartbeat()), HeartbeatReply)
    assert client.session is not None and client.session.boot_id == sim.gate(0).boot_id
    sessions = [r for r in sim.gate(0).records("link") if r.data.get("state") == "session"]
    assert [r.data["nonce"] for r in sessions] == [client.session.nonce]
    assert [r.data["message"] for r in sim.gate(0).records("rx")] == [Heartbeat()]
    version = client.request(GetVersion())  # one session per client (per opened port), not per request
    assert isinstance(version, Version) and version.protocol == PROTOCOL_VERSION == 2
    assert len([r for r in sim.gate(0).records("link") if r.data.get("state") == "session"]) == 1
