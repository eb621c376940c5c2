"""The simulated gate: taps made by the real fare_core, and its uplink's window, acks, resend requests and
stall replay through a real broker, with a plain client playing the backend."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from fare_core.reasons import Direction, Reason
from faregate.simgate import SimGate, SimUplink, new_phone
from protocol.mqtt import Committed, ResendRequest, TapMessage, Topics, encode
from tests.backend.conftest import BrokerInfo, wait_for

CARD = 0x0123456789ABCDEF
MORNING = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)  # off-peak in tiny.toml


def test_honest_taps_chain_the_wallet_and_are_journaled() -> None:
    alpha, delta = SimGate(1), SimGate(4)
    wallet = new_phone(CARD, balance=5000)
    entry, wallet = alpha.tap(wallet, CARD, Direction.ENTRY, MORNING)
    exit_, after = delta.tap(wallet, CARD, Direction.EXIT, MORNING.replace(minute=30))
    assert (entry.tap_id, entry.allowed, exit_.tap_id, exit_.fare) == ("1-1:1", True, "4-1:1", 400)
    assert exit_.counter_before == entry.counter_after and exit_.balance_before == entry.balance_after
    assert exit_.wallet_before == wallet.hex() and after != wallet
    assert [TapMessage.model_validate_json(p) for p in delta.journal] == [exit_]


def test_a_repeated_seq_replaces_its_entry_and_a_lie_overrides_the_report() -> None:
    gate = SimGate(4)
    wallet = new_phone(CARD)
    honest, _ = gate.tap(wallet, CARD, Direction.ENTRY, MORNING)
    lying, _ = gate.tap(wallet, CARD, Direction.ENTRY, MORNING, seq=honest.seq, fare=honest.fare + 100)
    assert (lying.tap_id, lying.fare, gate.seq) == (honest.tap_id, honest.fare + 100, 1)
    assert TapMessage.model_validate_json(gate.journal[0]) == lying
    with pytest.raises(ValueError, match="seq 3"):
        gate.journal_tap(b"{}", seq=3)


def test_a_topup_is_applied_and_its_action_reported() -> None:
    tap, _ = SimGate(1).tap(new_phone(CARD, balance=100), CARD, Direction.ENTRY, MORNING, topup=1000,
                                 action_id=7)
    assert (tap.reason, tap.topup_applied, tap.action_id, tap.balance_after) == (Reason.OK, 1000, 7, 1100)


class Backend:
    """A plain client on the taps topic that acks and asks for resends by hand."""

    def __init__(self, broker: BrokerInfo, topics: Topics) -> None:
        self.topics = topics
        self.client = SimUplink(broker.url, topics, version=broker.version, subscribe=[topics.all_taps])

    def seqs(self, gate: str) -> list[int]:
        """Every tap seq received from the gate, in arrival order, repeats included."""
        out = []
        for payload in self.client.messages(self.topics.taps(gate)):
            body = json.loads(payload)  # one tap, or an array of them
            out += [tap["seq"] for tap in (body if isinstance(body, list) else [body])]
        return out

    def send(self, gate: str, message: Committed | ResendRequest) -> None:
        leaf = self.topics.committed if isinstance(message, Committed) else self.topics.resend
        self.client.publish(leaf(gate), encode(message))


@pytest.fixture
def topics(unique: str) -> Topics:
    return Topics(f"sim{unique}")


@pytest.fixture
def unique() -> Iterator[str]:
    yield uuid.uuid4().hex[:10]


async def started(*clients: SimUplink) -> None:
    for client in clients:
        client.start()
        await asyncio.to_thread(client.wait_ready)


async def test_the_window_holds_until_committed_and_a_resend_sends_the_range(
    broker: BrokerInfo, topics: Topics
) -> None:
    backend = Backend(broker, topics)
    a, b = SimGate(1, 1, window=5, batch_max=2), SimGate(1, 2, window=5, batch_max=2)
    for gate in (a, b):
        gate.synthetic_taps(12)
    uplink = SimUplink(broker.url, topics, [a, b], version=broker.version, stall_s=60)
    try:
        await started(backend.client, uplink)
        await wait_for(lambda: len(backend.seqs("1-1")) == len(backend.seqs("1-2")) == 5)
        await asyncio.sleep(0.3)  # nothing more goes out without an ack
        assert backend.seqs("1-1") == backend.seqs("1-2") == [1, 2, 3, 4, 5]
        assert uplink.publishes == 6  # two gates x messages of 2, 2 and 1 taps
        now = datetime.now(UTC)
        await asyncio.to_thread(backend.send, "1-1", Committed(gate_id="1-1", through_seq=4, time=now))
        await wait_for(lambda: len(backend.seqs("1-1")) == 9)
        assert backend.seqs("1-1")[5:] == [6, 7, 8, 9] and a.committed == 4
        request = ResendRequest(gate_id="1-1", from_seq=2, to_seq=3, time=now)
        await asyncio.to_thread(backend.send, "1-1", request)  # below the commit: only 5..9 are open
        request = ResendRequest(gate_id="1-1", from_seq=6, to_seq=7, time=now)
        await asyncio.to_thread(backend.send, "1-1", request)
        await wait_for(lambda: len(backend.seqs("1-1")) == 11)
        assert backend.seqs("1-1")[9:] == [6, 7]
        assert backend.seqs("1-2") == [1, 2, 3, 4, 5]  # the other gate's window is its own
    finally:
        uplink.close()
        backend.client.close()


async def test_a_stall_replays_what_is_not_committed(broker: BrokerInfo, topics: Topics) -> None:
    backend = Backend(broker, topics)
    gate = SimGate(2, 1, window=3)
    gate.synthetic_taps(3)
    uplink = SimUplink(broker.url, topics, [gate], version=broker.version, stall_s=0.5)
    try:
        await started(backend.client, uplink)
        await wait_for(lambda: len(backend.seqs("2-1")) >= 6)  # sent, then again after the stall
        assert backend.seqs("2-1")[:6] == [1, 2, 3, 1, 2, 3]
        when = datetime.now(UTC)
        await asyncio.to_thread(backend.send, "2-1", Committed(gate_id="2-1", through_seq=3, time=when))
        await wait_for(lambda: gate.committed == 3)
        settled = len(backend.seqs("2-1"))
        await asyncio.sleep(1.2)  # all committed: no replay
        assert len(backend.seqs("2-1")) == settled
    finally:
        uplink.close()
        backend.client.close()


async def test_many_gates_on_one_client_driven_from_the_callers_thread(
    broker: BrokerInfo, topics: Topics
) -> None:
    """The benchmark's way: connect() and run() on one thread, no thread of the uplink's own; the
    backend here acks every gate's highest seq with no gap below it."""
    backend = Backend(broker, topics)
    gates = [SimGate(3, n, window=20, batch_max=7) for n in range(40)]
    for gate in gates:
        gate.synthetic_taps(50)
    uplink = SimUplink(broker.url, topics, gates, version=broker.version, record=False)

    async def ack() -> None:
        acked = dict.fromkeys((g.id for g in gates), 0)
        while True:
            for gate_id, done in acked.items():
                seen, through = set(backend.seqs(gate_id)), done
                while through + 1 in seen:
                    through += 1
                if through > done:
                    acked[gate_id] = through
                    message = Committed(gate_id=gate_id, through_seq=through, time=datetime.now(UTC))
                    await asyncio.to_thread(backend.send, gate_id, message)
            await asyncio.sleep(0.02)

    try:
        await started(backend.client)
        await asyncio.to_thread(uplink.connect)
        acker = asyncio.create_task(ack())
        try:
            await asyncio.to_thread(uplink.run, 60)
        finally:
            acker.cancel()
        assert uplink.all_committed() and uplink.received == []
        assert all(sorted(set(backend.seqs(g.id))) == list(range(1, 51)) for g in gates)
        assert uplink.publishes >= 40 * 8  # 50 taps a gate in messages of at most 7
    finally:
        uplink.close()
        backend.client.close()


async def test_a_will_goes_out_when_the_gate_vanishes(broker: BrokerInfo, topics: Topics) -> None:
    watcher = SimUplink(broker.url, topics, version=broker.version, subscribe=[topics.status("5-1")])
    gate = SimUplink(broker.url, topics, [SimGate(5, 1)], version=broker.version,
                     will=(topics.status("5-1"), b"offline"))
    try:
        await started(watcher, gate)
        gate.vanish()
        assert await wait_for(lambda: watcher.messages(topics.status("5-1")), timeout=60) == [b"offline"]
    finally:
        gate.close()
        watcher.close()
