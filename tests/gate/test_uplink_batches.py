"""The uplink sends a journal backlog as arrays of at most `batch_max` taps, a lone tap as itself,
through a real broker (embedded amqtt and Mosquitto), oldest first, each tap exactly once per pass."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import aiomqtt
import pytest

from backend.ingest.store import RawMessage, Refused, parse
from gate.journal import Journal
from gate.state import LocalState
from gate.uplink import Uplink
from protocol.mqtt import MAX_TAPS_PER_MESSAGE, Topics, encode, encode_taps
from tests.backend.conftest import make_tap

from .brokers import Broker

GATE = "12-3"


def test_encode_taps_is_the_tap_itself_or_an_array() -> None:
    one, two = encode(make_tap(1)), encode(make_tap(2))
    assert encode_taps([one]) == one
    assert [t["seq"] for t in json.loads(encode_taps([one, two]))] == [1, 2]
    with pytest.raises(ValueError, match="no taps"):
        encode_taps([])
    with pytest.raises(ValueError, match="at most"):
        encode_taps([one] * (MAX_TAPS_PER_MESSAGE + 1))


def test_uplink_refuses_a_batch_size_the_backend_would_dead_letter(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.db") as journal:
        state = LocalState(tmp_path / "state", journal)
        for bad in (0, MAX_TAPS_PER_MESSAGE + 1):
            with pytest.raises(ValueError, match="batch_max"):
                Uplink(gate_id=GATE, host="127.0.0.1", port=1, prefix="p", journal=journal, state=state,
                       final_seq=lambda: 0, batch_max=bad)


async def collect(broker: Broker, topic: str, ready: asyncio.Event, into: list[bytes]) -> None:
    host, port = "127.0.0.1", int(broker.url.rsplit(":", 1)[1])
    async with aiomqtt.Client(host, port, identifier=f"watch-{uuid.uuid4().hex[:8]}",
                              protocol=aiomqtt.ProtocolVersion.V311) as client:
        await client.subscribe(topic, qos=1)
        ready.set()
        async for message in client.messages:
            into.append(bytes(message.payload))


async def test_a_backlog_goes_as_arrays_and_a_lone_tap_alone(broker: Broker, tmp_path: Path) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    topics = Topics(prefix)
    backlog, batch_max = 23, 10
    with Journal(tmp_path / "journal.db") as journal:
        for seq in range(1, backlog + 1):  # taps decided while the broker was out of reach
            journal.append(seq, encode(make_tap(seq)))
        state = LocalState(tmp_path / "state", journal)
        uplink = Uplink(gate_id=GATE, host="127.0.0.1", port=int(broker.url.rsplit(":", 1)[1]),
                        prefix=prefix, journal=journal, state=state, final_seq=lambda: journal.last_seq,
                        window=2, batch_max=batch_max, stall_s=600)
        received: list[bytes] = []
        ready = asyncio.Event()
        watcher = asyncio.create_task(collect(broker, topics.taps(GATE), ready, received))
        try:
            await asyncio.wait_for(ready.wait(), 10)
            await uplink.start()
            for _ in range(200):
                if len(received) >= 3:
                    break
                await asyncio.sleep(0.05)
            journal.append(backlog + 1, encode(make_tap(backlog + 1)))  # a new tap once caught up
            uplink.tap_journaled(backlog + 1)
            for _ in range(200):
                if len(received) >= 4:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # nothing more may come: nothing was asked again
        finally:
            await uplink.stop()
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
    assert [len(json.loads(p)) if p.startswith(b"[") else 1 for p in received] == [10, 10, 3, 1]
    assert received[-1].startswith(b"{")  # the lone tap is a plain TapMessage, as before batching
    taps = [t for p in received for t in parse(RawMessage(topics.taps(GATE), p))]
    assert not [t for t in taps if isinstance(t, Refused)]  # the backend's parser takes every one
    assert [t.seq for t in taps if not isinstance(t, Refused)] == list(range(1, backlog + 2))
    assert uplink.published == backlog + 1
