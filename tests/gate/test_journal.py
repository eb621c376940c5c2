"""The gate journal keeps every tap, in sequence, across restarts and SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gate.journal import Journal, JournalError


def test_append_pending_commit_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    with Journal(path) as j:
        assert (j.last_seq, j.committed_through, j.next_seq()) == (0, 0, 1)
        for seq in range(1, 6):
            j.append(seq, f"tap {seq}".encode())
        assert [s for s, _ in j.pending()] == [1, 2, 3, 4, 5]
        assert j.pending(after=2, limit=2) == [(3, b"tap 3"), (4, b"tap 4")]
        j.mark_committed(3)
        assert [s for s, _ in j.pending()] == [4, 5] and j.pending_count() == 2
        j.mark_committed(2)  # an older ack never moves the mark back
        assert j.committed_through == 3
        j.set_state("mode", {"mode": 1, "command_id": 7})
    with Journal(path) as j:
        assert (j.last_seq, j.committed_through, j.next_seq()) == (5, 3, 6)
        assert [s for s, _ in j.pending()] == [4, 5]
        assert j.get_state("mode") == {"mode": 1, "command_id": 7}
        assert j.get_state("missing", "default") == "default"


def test_sequence_cannot_skip_or_repeat(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.db") as j:
        j.append(1, b"a")
        with pytest.raises(JournalError, match="not the next"):
            j.append(1, b"again")
        with pytest.raises(JournalError, match="not the next"):
            j.append(3, b"skip")
        assert j.pending() == [(1, b"a")]


def test_ack_beyond_what_was_journaled_erases_nothing_unseen(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.db") as j:
        for seq in (1, 2):
            j.append(seq, b"x")
        j.mark_committed(99)
        assert j.committed_through == 2
        j.append(3, b"y")
        assert j.pending() == [(3, b"y")]


_WRITER = """
import sys
from gate.journal import Journal
j = Journal(sys.argv[1])
seq = j.next_seq()
while True:
    j.append(seq, b"tap %d" % seq)
    print(seq, flush=True)
    seq += 1
"""


def test_sigkill_mid_traffic_loses_no_acknowledged_tap_and_reuses_no_seq(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    reported: list[int] = []
    for _round in range(2):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE,
                                text=True, env=dict(os.environ))
        assert proc.stdout is not None
        try:
            for _ in range(200):
                reported.append(int(proc.stdout.readline()))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            proc.stdout.close()
    with Journal(path) as j:
        stored = [seq for seq, _ in j.pending(limit=10_000)]
        # every seq a writer reported after its commit is there; nothing is missing between them
        assert set(reported) <= set(stored)
        assert stored == list(range(1, j.last_seq + 1))
        # the second writer went on where the first stopped: no seq used twice
        assert len(reported) == len(set(reported)) == 400
        assert all(payload == b"tap %d" % seq for seq, payload in j.pending(limit=10_000))
