"""The uplink's publisher ends when its session is cancelled, even when a tap wakes it in the same
moment: on Python 3.11, asyncio.wait_for returns instead of raising when its wait ends as the task is
cancelled, and the publisher's loop then outlived the cancel (the session's stop waited forever)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from gate.journal import Journal
from gate.state import LocalState
from gate.uplink import Uplink


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
