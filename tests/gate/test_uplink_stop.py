"""The uplink's publisher: it ends when its session is cancelled, even when a tap wakes it in the same
moment (on Python 3.11, asyncio.wait_for returns instead of raising when its wait ends as the task is
cancelled, and the publisher's loop then outlived the cancel: the session's stop waited forever); and
its stall replay backs off while no ack comes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gate.journal import Journal
from gate.state import LocalState
from gate.uplink import Uplink
from protocol.mqtt import Committed, Topics, encode
from tests.backend.conftest import make_tap
from tests.gate.test_downlink_attacks import BACKEND, eventually, publish

from .brokers import Broker


async def test_a_publisher_woken_as_it_is_cancelled_still_stops(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    try:
        uplink = Uplink(gate_id="1-1", host="127.0.0.1", port=1, prefix="t", journal=journal,
                        state=LocalState(tmp_path, journal), final_seq=lambda: 0)
        client: Any = None  # nothing is pending, so the publisher never touches the client
        stopped = 0
        for _ in range(20):
            publisher = asyncio.create_task(uplink._publisher(client))
            await asyncio.sleep(0.01)  # waiting for a tap
            uplink.tap_journaled(1)  # a tap wakes it ...
            publisher.cancel()  # ... in the very iteration its session is cancelled
            done, _ = await asyncio.wait({publisher}, timeout=3.0)
            stopped += bool(done) and publisher.cancelled()
            if not done:  # the old bug: cancel it again so the test itself ends
                publisher.cancel()
                await asyncio.wait({publisher}, timeout=3.0)
        assert stopped == 20
    finally:
        journal.close()


class WaitRecordingUplink(Uplink):
    """An Uplink that records each stall wait it sets, beside the journal's commit point at that moment
    (the test then reads what the ack did, however many replays a slow machine ran before it looked)."""

    @property
    def _stall_wait(self) -> float:
        return float(self.__dict__["stall_wait"])

    @_stall_wait.setter
    def _stall_wait(self, wait: float) -> None:
        self.__dict__["stall_wait"] = wait
        self.__dict__.setdefault("waits", []).append((wait, self.journal.committed_through))

    @property
    def waits(self) -> list[tuple[float, int]]:
        return list(self.__dict__.get("waits", []))


async def test_the_stall_replay_backs_off_until_an_ack_moves(broker: Broker, tmp_path: Path) -> None:
    """No commit comes (a station cut off from the centre still PUBACKs): each replay of the backlog
    doubles the wait before the next, up to stall_max_s, so the station's queue does not grow with the
    square of the outage; the backend's ack starts the wait again at stall_s."""
    gate_id, prefix = "12-3", f"st{tmp_path.name[-10:].replace('_', '')}"
    port = int(broker.url.rsplit(":", 1)[1])
    with Journal(tmp_path / "journal.db") as journal:
        for seq in range(1, 6):
            journal.append(seq, encode(make_tap(seq)))
        uplink = WaitRecordingUplink(gate_id=gate_id, host="127.0.0.1", port=port, prefix=prefix,
                                     journal=journal, state=LocalState(tmp_path / "state", journal),
                                     final_seq=lambda: 5, stall_s=0.1, stall_max_s=0.4)
        await uplink.start()
        try:
            await eventually(lambda: uplink.stall_replays >= 4)
            assert uplink._stall_wait == 0.4  # 0.1 -> 0.2 -> 0.4, then held at the cap
            ack = Committed(gate_id=gate_id, through_seq=2, time=datetime.now(UTC))
            await publish(broker, Topics(prefix).committed(gate_id), encode(BACKEND.sign(ack)))
            await eventually(lambda: journal.committed_through == 2)
            # the ack started the wait again at stall_s (nothing else sets stall_s with seq 2 committed:
            # no reconnection here), however many replays ran before this looked
            await eventually(lambda: (0.1, 2) in uplink.waits)
        finally:
            await uplink.stop()
    before = [wait for wait, through in uplink.waits if through == 0]
    while before[0] == 0.1:  # set at construction and at the connection
        before.pop(0)
    assert before[:3] == [0.2, 0.4, 0.4] and set(before[1:]) == {0.4}  # doubled, then held at the cap
