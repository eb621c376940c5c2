"""Forged backend messages against real gates on real brokers (amqtt, Mosquitto): each is refused,
counted and reported in the gate's status, and the genuine message that follows still applies.

The attacker is any client on the broker: it can publish anything on any topic, but holds no signing
key. Before signed downlinks each of these moved a gate's state for good (issue 12).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from fare_core import DenyList, FareTable, GateMode, artefact, compiler, rules
from fare_core.table_data import TableData
from faregate.station import GateSpec, SimStation
from firmware_sim.config import BarrierConfig, DeviceConfig
from firmware_sim.population import Phone, Population
from gate.journal import Journal
from gate.state import LocalState
from gate.uplink import Uplink
from protocol.mqtt import (
    DEVELOPMENT_SIGNING_SEED,
    DEVELOPMENT_UPLINK_MASTER_KEY,
    U32_MAX,
    Action,
    ActionListMessage,
    Committed,
    DenyListDeltaMessage,
    DenyListSnapshotMessage,
    DenyListSnapshotRef,
    FareTableMessage,
    GateCommand,
    GateStatus,
    Payload,
    Signer,
    SnapshotRequest,
    Topics,
    UpdateKind,
    derive_gate_key,
    encode,
)
from protocol.mqtt.auth import mac_valid
from protocol.mqtt.follow import DELTA_GRACE_S
from tests.backend.conftest import make_tap
from tests.gate.test_gate_updates import EXAMPLES

from .brokers import Broker

pytestmark = pytest.mark.security

DEVICE = DeviceConfig(barrier=BarrierConfig(travel_ms=30, passage_ms=60))
CARD = 0xA000
BACKEND = Signer(DEVELOPMENT_SIGNING_SEED)  # the key the gates trust by default
ATTACKER = Signer(bytes(range(32)))  # a well-formed signature by a key no gate trusts


@pytest.fixture(scope="module")
def table() -> TableData:
    return compiler.compile_rules(rules.load_rules(EXAMPLES / "tiny.toml"), version=2)


async def publish(broker: Broker, topic: str, payload: bytes, retain: bool = False) -> None:
    """Publish as a stranger on the broker would, bounded: a connect or PUBACK that never comes (seen
    once in a loaded CI run) is retried once on a fresh connection instead of hanging the test."""
    host, port = broker.url.removeprefix("mqtt://").split(":")

    async def once() -> None:
        async with aiomqtt.Client(host, int(port), protocol=aiomqtt.ProtocolVersion.V311) as client:
            await client.publish(topic, payload, qos=1, retain=retain)

    try:
        await asyncio.wait_for(once(), 15)
    except TimeoutError:
        await asyncio.wait_for(once(), 15)


async def eventually(predicate: Any, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture
async def station(tmp_path: Path, broker: Broker, table: TableData) -> AsyncIterator[SimStation]:
    population = Population([Phone(card_id=CARD, balance=5000), Phone(card_id=CARD + 1, balance=5000)])
    prefix = f"dl{tmp_path.name[-12:].replace('_', '')}"
    async with SimStation(tmp_path, [GateSpec(1, 1, "entry")], population, table, device=DEVICE,
                          mqtt_url=broker.url, prefix=prefix) as st:
        uplink = st.gates[0].uplink
        assert uplink is not None
        await asyncio.wait_for(uplink.connected.wait(), 10)
        yield st


def forgeries(message: Payload) -> list[bytes]:
    """The message unsigned, signed by an untrusted key, and genuinely signed with its first number
    changed afterwards (a replayed signature on new content)."""
    genuine = BACKEND.sign(message)
    name = next(n for n, v in genuine if isinstance(v, int) and not isinstance(v, bool))
    value = getattr(genuine, name)
    altered = genuine.model_copy(update={name: value + 1 if value < U32_MAX else value - 1})
    return [encode(message), encode(ATTACKER.sign(message)), encode(altered)]


async def test_forged_updates_are_refused_counted_and_alarmed(station: SimStation, broker: Broker) -> None:
    gate = station.gates[0]
    uplink, state = gate.uplink, gate.state
    assert uplink is not None
    topics = Topics(station.prefix)
    now = datetime.now(UTC)
    blob = artefact.pack(compiler.compile_rules(rules.load_rules(EXAMPLES / "tiny.toml"), version=9))
    fare_table = FareTableMessage(version=9, checksum=FareTable.from_bytes(blob).checksum,
                                  activate_at=now - timedelta(seconds=1),
                                  artefact=base64.b64encode(blob).decode())
    attacks: list[tuple[str, Payload]] = [
        (topics.denylist_delta, DenyListDeltaMessage(version=1, base_version=0, add=[], remove=[],
                                                     checksum=DenyList([], version=1).checksum, time=now)),
        (topics.denylist_snapshot, DenyListSnapshotMessage(
            version=U32_MAX, card_ids=[], checksum=DenyList([], version=U32_MAX).checksum, time=now)),
        (topics.fare_table, fare_table),
        (topics.actions, ActionListMessage(version=10**6, actions=[Action(action_id=7, card_id=CARD,
                                                                          topup=20_000)], time=now)),
        (topics.command("1-1"), GateCommand(gate_id="1-1", command_id=10**12, mode=GateMode.CLOSED,
                                             issued_at=now)),
    ]
    async with aiomqtt.Client("127.0.0.1", int(broker.url.rsplit(":", 1)[1]),
                              protocol=aiomqtt.ProtocolVersion.V311) as watcher:
        await watcher.subscribe(topics.status("1-1"), qos=1)
        sent = 0
        for topic, message in attacks:
            for payload in forgeries(message):
                await publish(broker, topic, payload)
                sent += 1
        await eventually(lambda: uplink.auth_refused == sent)
        # nothing moved: versions, mode, actions, fare table
        assert state.denylist.version == 0 and state.actions_version == 0 and state.action_for(CARD) is None
        assert state.mode == GateMode.NORMAL and state.command_id == 0
        assert state.fare_table is not None and state.fare_table.version == 2
        # the alarm reaches the broker in the gate's status, under the gate's own MAC
        key = derive_gate_key(DEVELOPMENT_UPLINK_MASTER_KEY, "1-1")
        async with asyncio.timeout(10):
            async for received in watcher.messages:
                status = GateStatus.model_validate_json(bytes(received.payload))  # type: ignore[arg-type]
                if status.auth_refused:
                    break
        assert mac_valid(status, [key]) and status.auth_alarm
    # the operator's genuine messages still apply: the forgeries froze nothing
    for topic, message in attacks:
        await publish(broker, topic, encode(BACKEND.sign(message)))
    await eventually(lambda: state.denylist.version == U32_MAX and state.actions_version == 10**6
                     and state.mode == GateMode.CLOSED and state.fare_table is not None
                     and state.fare_table.version == 9)
    assert uplink.auth_refused == sent


async def test_forged_committed_during_an_outage_leaves_the_journal_whole(station: SimStation,
                                                                         broker: Broker) -> None:
    gate = station.gates[0]
    uplink = gate.uplink
    assert uplink is not None
    topics = Topics(station.prefix)
    for n in range(1, 4):  # no backend: the taps wait in the journal
        await station.tap(CARD, 0)
        await eventually(lambda n=n: gate.journal.last_seq >= n)  # type: ignore[misc]
    await eventually(lambda: uplink._sent_through == gate.journal.last_seq)
    pending = gate.journal.pending_count()
    assert pending == gate.journal.last_seq >= 2
    forged = Committed(gate_id="1-1", through_seq=10**9, time=datetime.now(UTC))
    for payload in forgeries(forged):
        await publish(broker, topics.committed("1-1"), payload, retain=True)
    await eventually(lambda: uplink.auth_refused == 3)
    # a genuine ack for another gate, and a genuine ack past what this gate sent: refused and reported
    await publish(broker, topics.committed("1-1"),
                  encode(BACKEND.sign(Committed(gate_id="9-9", through_seq=1, time=datetime.now(UTC)))))
    await eventually(lambda: uplink.auth_refused == 4)
    await publish(broker, topics.committed("1-1"), encode(BACKEND.sign(forged)))
    await eventually(lambda: uplink.auth_refused == 5)
    assert uplink.auth_alarm is not None and "ack through 1000000000" in uplink.auth_alarm
    # the sentinel, published after them all: the backend's real ack drops exactly what it covers, so
    # every earlier ack has been handled by now, and none of them dropped a tap
    await publish(broker, topics.committed("1-1"),
                  encode(BACKEND.sign(Committed(gate_id="1-1", through_seq=1, time=datetime.now(UTC)))))
    await eventually(lambda: gate.journal.committed_through == 1)
    assert gate.journal.pending_count() == pending - 1 and uplink.auth_refused == 5


async def test_a_retained_ack_read_after_a_restart_applies_and_one_past_the_journal_is_refused(
        broker: Broker, tmp_path: Path) -> None:
    """The backend's retained ack covers taps a previous run published: the restarted gate applies it
    (every seq journaled before the start may have been sent) without a refusal; an ack over a tap
    journaled since, not yet handed to the broker, is refused and reported like any impossible ack."""
    gate_id, backlog = "12-3", 20
    prefix = f"rs{tmp_path.name[-10:].replace('_', '')}"
    topics = Topics(prefix)
    port = int(broker.url.rsplit(":", 1)[1])

    def ack(through: int) -> bytes:
        return encode(BACKEND.sign(Committed(gate_id=gate_id, through_seq=through, time=datetime.now(UTC))))

    with Journal(tmp_path / "journal.db") as journal:
        for seq in range(1, backlog + 1):  # published by the previous run, then it stopped
            journal.append(seq, encode(make_tap(seq)))
        # while the gate was down the backend committed them all: its ack waits, retained
        await publish(broker, topics.committed(gate_id), ack(backlog), retain=True)
        final = backlog
        # one message in flight at a time: this run has handed only seq 1 to the broker when it reads
        # the retained ack
        uplink = Uplink(gate_id=gate_id, host="127.0.0.1", port=port, prefix=prefix, journal=journal,
                        state=LocalState(tmp_path / "state", journal), final_seq=lambda: final, window=1,
                        batch_max=1, stall_s=600)
        await uplink.start()
        try:
            await eventually(lambda: journal.committed_through == backlog)
            assert uplink.auth_refused == 0 and uplink.auth_alarm is None
            # a tap journaled since, its outcome not yet final, so never sent: an ack over it is impossible
            journal.append(backlog + 1, encode(make_tap(backlog + 1)))
            await publish(broker, topics.committed(gate_id), ack(backlog + 1))
            await eventually(lambda: uplink.auth_refused == 1)
            assert uplink.auth_alarm is not None and "ack through 21" in uplink.auth_alarm
            assert journal.committed_through == backlog and journal.pending_count() == 1
            # once final and sent, the same ack is possible and drops it
            final = backlog + 1
            uplink.tap_journaled(final)
            await eventually(lambda: uplink._sent_through == final)
            await publish(broker, topics.committed(gate_id), ack(backlog + 1))
            await eventually(lambda: journal.committed_through == backlog + 1)
            assert uplink.auth_refused == 1
        finally:
            await uplink.stop()


async def test_malformed_downlink_is_refused_and_never_answered_with_a_snapshot_request(
        station: SimStation, broker: Broker) -> None:
    """Junk on a shared topic (anyone on the broker can post it) is unverifiable: counted and reported
    as refused, and no gate asks for a snapshot because of it. Only a verified delta that cannot be
    applied (the sentinel, published last) makes the gate ask."""
    gate = station.gates[0]
    uplink, state = gate.uplink, gate.state
    assert uplink is not None
    topics = Topics(station.prefix)
    now = datetime.now(UTC)
    junk = [b"", b"not json", b'{"version": "x"}', b"[1, 2, 3]",
            b'{"version": 5, "base_version": 4, "add": [], "remove": [], "checksum": 7}']
    shared = [topics.denylist_delta, topics.denylist_snapshot, topics.fare_table, topics.actions,
              topics.committed("1-1"), topics.resend("1-1"), topics.command("1-1")]
    async with aiomqtt.Client("127.0.0.1", int(broker.url.rsplit(":", 1)[1]),
                              protocol=aiomqtt.ProtocolVersion.V311) as watcher:
        await watcher.subscribe(topics.request("1-1"), qos=1)
        for topic in shared:
            for payload in junk:
                await publish(broker, topic, payload)
        await eventually(lambda: uplink.auth_refused == len(shared) * len(junk))
        assert uplink.auth_alarm is not None and "malformed" in uplink.auth_alarm
        # genuine and applied, then genuine on the wrong base: refused after verification, so it asks
        await publish(broker, topics.denylist_delta, encode(BACKEND.sign(DenyListDeltaMessage(
            version=1, base_version=0, add=[], remove=[], checksum=DenyList([], version=1).checksum,
            time=now))))
        await eventually(lambda: state.denylist.version == 1)
        await publish(broker, topics.denylist_delta, encode(BACKEND.sign(DenyListDeltaMessage(
            version=3, base_version=2, add=[], remove=[], checksum=DenyList([], version=3).checksum,
            time=now))))
        async with asyncio.timeout(10):
            async for received in watcher.messages:
                request = SnapshotRequest.model_validate_json(bytes(received.payload))  # type: ignore[arg-type]
                if request.kind is UpdateKind.DENYLIST:
                    break
    # the gate's requests arrive in the order it sent them: the first is the sentinel's
    assert request.have_version == 1
    assert uplink.auth_refused == len(shared) * len(junk) and state.denylist.version == 1


async def test_key_rotation_accepts_the_next_key_and_refuses_a_retired_one(
        tmp_path: Path, broker: Broker, table: TableData) -> None:
    current, following = Signer(bytes([1]) * 32), Signer(bytes([2]) * 32)
    population = Population([Phone(card_id=CARD, balance=5000)])
    prefix = f"rot{tmp_path.name[-10:].replace('_', '')}"
    topics = Topics(prefix)

    def command(command_id: int) -> GateCommand:
        mode = GateMode.CLOSED if command_id % 2 else GateMode.NORMAL
        return GateCommand(gate_id="1-1", command_id=command_id, mode=mode, issued_at=datetime.now(UTC))

    async with SimStation(tmp_path, [GateSpec(1, 1, "entry")], population, table, device=DEVICE,
                          mqtt_url=broker.url, prefix=prefix,
                          backend_keys=[current.public_key, following.public_key]) as st:
        gate = st.gates[0]
        assert gate.uplink is not None
        await asyncio.wait_for(gate.uplink.connected.wait(), 10)
        await publish(broker, topics.command("1-1"), encode(current.sign(command(1))))
        await eventually(lambda: gate.state.command_id == 1)
        await publish(broker, topics.command("1-1"), encode(following.sign(command(2))))
        await eventually(lambda: gate.state.command_id == 2)
        await asyncio.wait_for(st.gates[0].stop(), 30)
        # the rotation is done: the gate now trusts the new key and the one after it, not the old one
        st.backend_keys = [following.public_key, Signer(bytes([3]) * 32).public_key]
        gate = st.gates[0] = await asyncio.wait_for(st.start_gate(0), 30)
        assert gate.uplink is not None
        await asyncio.wait_for(gate.uplink.connected.wait(), 10)
        await publish(broker, topics.command("1-1"), encode(current.sign(command(3))))
        await eventually(lambda: gate.uplink is not None and gate.uplink.auth_refused == 1)
        assert gate.state.command_id == 2 and gate.uplink.auth_alarm is not None
        assert "retired" in gate.uplink.auth_alarm
        await publish(broker, topics.command("1-1"), encode(following.sign(command(3))))
        await eventually(lambda: gate.state.command_id == 3)


async def test_a_current_gate_takes_no_snapshot_and_a_behind_one_still_refuses_forgeries(
        station: SimStation, broker: Broker) -> None:
    """A gate takes the retained snapshot (the whole list) only while a verified reference says it is
    behind (protocol.mqtt.follow): current, it is not subscribed, so neither the backend's republished
    snapshot nor a stranger's forgery reaches it. A forged reference makes it take nothing. Behind, it
    skips a snapshot not newer than its list before checking the signature (never applied) and
    refuses a newer forgery, then applies the genuine one and leaves the snapshot topic again."""
    gate = station.gates[0]
    uplink, state = gate.uplink, gate.state
    assert uplink is not None
    topics = Topics(station.prefix)
    now = datetime.now(UTC)

    def snapshot(version: int, ids: list[int]) -> DenyListSnapshotMessage:
        return DenyListSnapshotMessage(version=version, card_ids=ids, checksum=DenyList(ids, version=version)
                                       .checksum, time=now)

    def ref(version: int, ids: list[int]) -> DenyListSnapshotRef:
        listed = DenyList(ids, version=version)
        return DenyListSnapshotRef(version=version, checksum=listed.checksum, size=len(listed),
                                   sha256="0" * 64, time=now)

    await publish(broker, topics.denylist_snapshot, encode(BACKEND.sign(snapshot(5, [CARD]))))  # no list yet
    await eventually(lambda: state.denylist.version == 5)
    await eventually(lambda: not uplink.snapshot_need.subscribed)  # current: off the snapshot topic
    taken = uplink.snapshot_subscriptions
    for message in (BACKEND.sign(snapshot(5, [CARD])), ATTACKER.sign(snapshot(6, []))):
        await publish(broker, topics.denylist_snapshot, encode(message))
    await publish(broker, topics.denylist_snapshot_ref, encode(ATTACKER.sign(ref(9, []))))  # forged beacon
    await eventually(lambda: uplink.auth_refused == 1)
    await asyncio.sleep(DELTA_GRACE_S + 0.5)
    assert uplink.snapshot_subscriptions == taken and not uplink.snapshot_need.subscribed
    assert uplink.snapshots_skipped == 0 and state.denylist.version == 5 and CARD in state.denylist
    # a genuine beacon two versions ahead: behind, the gate takes the snapshot topic at once
    await publish(broker, topics.denylist_snapshot, encode(ATTACKER.sign(snapshot(7, []))), retain=True)
    await publish(broker, topics.denylist_snapshot_ref, encode(BACKEND.sign(ref(7, [CARD, 42]))))
    await eventually(lambda: uplink.auth_refused == 2)  # the retained forgery, refused
    assert uplink.snapshot_subscriptions == taken + 1 and state.denylist.version == 5
    await publish(broker, topics.denylist_snapshot, encode(BACKEND.sign(snapshot(5, [CARD]))))  # not newer
    await eventually(lambda: uplink.snapshots_skipped == 1)
    assert uplink.auth_refused == 2
    genuine = BACKEND.sign(snapshot(7, [CARD, 42]))
    await publish(broker, topics.denylist_snapshot, encode(genuine), retain=True)
    await eventually(lambda: state.denylist.version == 7 and 42 in state.denylist)
    await eventually(lambda: not uplink.snapshot_need.subscribed)
