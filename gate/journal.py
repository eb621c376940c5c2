"""The gate's durable tap journal: every tap is here, fsynced, before the barrier opens.

SQLite in WAL mode with synchronous=FULL: a commit has reached the disk when `append` returns, so a
power cut or SIGKILL after it loses nothing. The per-gate sequence lives in the same transaction as
the tap, so a seq is never used for two taps, even across crashes. Taps stay until the backend says
"committed through seq N" (docs/mqtt.md); the journal is the only copy until then, since an MQTT
client's queue is memory only.

A small key/value table keeps the gate's other state that must survive a restart (mode, the last
command id applied, the action ids applied): one file to back up, one fsync discipline. The
`unconfirmed` table keeps the wallet writes whose landing the gate could not learn, by card, until the
phone's next tap here settles them (gate/unconfirmed.py); it is written in the same transaction as the
tap row that goes with it.

A tap whose wallet write is still on the wire is journaled *unsettled*: its row carries the write
(`unsettled`, the UnconfirmedWrite's detail) until the write's outcome is known, and that column is
cleared in the same fsynced step that makes the row final (`settle`, `replace`, `replace_unconfirmed`).
A gate that dies in between finds the row unsettled at its next start and rewrites it UNCONFIRMED
(GateController.start) before anything is published; `pending` never returns an unsettled row nor
anything after one.

One connection, guarded by a lock, so the controller can commit from a worker thread (overlapping
the fsync with the wallet write on the serial line) while the uplink reads from the event loop.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS taps (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL, unsettled TEXT);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS unconfirmed (card TEXT PRIMARY KEY, seq INTEGER NOT NULL, at REAL NOT NULL,
                                        detail TEXT NOT NULL);
"""
# Only the rows whose write is on the wire: the first of them bounds `pending` at the cost of one probe.
_UNSETTLED_INDEX = "CREATE INDEX IF NOT EXISTS taps_unsettled ON taps (seq) WHERE unsettled IS NOT NULL"


def _card_key(card_id: int) -> str:
    """A card id as the unconfirmed table keys it: 16 hex digits (a u64 overflows SQLite's INTEGER)."""
    return f"{card_id:016x}"


class JournalError(RuntimeError):
    """The journal refused an operation that would break its sequence."""


class Journal:
    """Append-only, durable, sequence-numbered taps of one gate, plus its persistent state."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        columns = {str(row[1]) for row in self._db.execute("PRAGMA table_info(taps)")}
        if "unsettled" not in columns:  # a journal written before the column existed: all settled
            self._db.execute("ALTER TABLE taps ADD COLUMN unsettled TEXT")
        self._db.execute(_UNSETTLED_INDEX)
        self._last_seq = int(self._meta("last_seq", "0") or 0)
        self._committed = int(self._meta("committed_through", "0") or 0)

    # ------------------------------------------------------------------------------------- taps
    @property
    def last_seq(self) -> int:
        """Highest seq ever journaled (0 before the first tap)."""
        return self._last_seq

    @property
    def committed_through(self) -> int:
        """Highest seq the backend confirmed, with every lower seq confirmed too."""
        return self._committed

    def next_seq(self) -> int:
        return self._last_seq + 1

    def append(self, seq: int, payload: bytes, resolves: int | None = None,
               unsettled: str | None = None) -> None:
        """Store tap `seq` durably; it must be exactly the next seq. `resolves`: a card whose
        unconfirmed write this tap settles (a RECOVERED tap), forgotten in the same transaction.
        `unsettled`: the wallet write still on the wire (an UnconfirmedWrite's detail); the row is
        not final, nor published, until `settle`, `replace` or `replace_unconfirmed` clears it."""
        with self._lock:
            if seq != self._last_seq + 1:
                raise JournalError(f"seq {seq} is not the next one ({self._last_seq + 1})")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT INTO taps (seq, payload, unsettled) VALUES (?, ?, ?)",
                                 (seq, payload, unsettled))
                self._set_meta("last_seq", str(seq))
                if resolves is not None:
                    self._db.execute("DELETE FROM unconfirmed WHERE card = ?", (_card_key(resolves),))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._last_seq = seq

    def settle(self, seq: int) -> None:
        """Tap `seq`'s wallet write landed: the row stands as journaled, and is final (one fsync)."""
        with self._lock:
            self._db.execute("UPDATE taps SET unsettled = NULL WHERE seq = ?", (seq,))

    def unsettled(self) -> list[tuple[int, bytes, str]]:
        """(seq, payload, write detail) of every row whose write never settled (the gate died)."""
        with self._lock:
            rows = self._db.execute("SELECT seq, payload, unsettled FROM taps"
                                    " WHERE unsettled IS NOT NULL ORDER BY seq").fetchall()
        return [(int(seq), bytes(payload), str(detail)) for seq, payload, detail in rows]

    def replace(self, seq: int, payload: bytes) -> None:
        """Rewrite a tap whose outcome changed before it was published (a wallet write that did not
        land), settled; a tap the backend already committed can never be rewritten."""
        with self._lock:
            if not self._committed < seq <= self._last_seq:
                raise JournalError(f"seq {seq} is not an uncommitted tap")
            self._db.execute("UPDATE taps SET payload = ?, unsettled = NULL WHERE seq = ?", (payload, seq))

    def replace_unconfirmed(self, seq: int, payload: bytes, card_id: int, at: float, detail: str) -> None:
        """Rewrite tap `seq` as unconfirmed (as `replace`) and keep the card's unconfirmed write
        (`at`, `detail`), in one transaction: a crash leaves both or neither."""
        with self._lock:
            if not self._committed < seq <= self._last_seq:
                raise JournalError(f"seq {seq} is not an uncommitted tap")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("UPDATE taps SET payload = ?, unsettled = NULL WHERE seq = ?",
                                 (payload, seq))
                self._db.execute(
                    "INSERT INTO unconfirmed (card, seq, at, detail) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT(card) DO UPDATE SET seq = excluded.seq, at = excluded.at,"
                    " detail = excluded.detail", (_card_key(card_id), seq, at, detail))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def unconfirmed_writes(self) -> list[tuple[int, int, float, str]]:
        """(card id, seq, at, detail) of every unconfirmed write kept, oldest seq first."""
        with self._lock:
            rows = self._db.execute("SELECT card, seq, at, detail FROM unconfirmed ORDER BY seq").fetchall()
        return [(int(card, 16), int(seq), float(at), str(detail)) for card, seq, at, detail in rows]

    def forget_unconfirmed(self, card_id: int) -> None:
        """The card's unconfirmed write is settled (it did not land, or can no longer be told)."""
        with self._lock:
            self._db.execute("DELETE FROM unconfirmed WHERE card = ?", (_card_key(card_id),))

    def pending(self, after: int = 0, limit: int = 1000,
                through: int | None = None) -> list[tuple[int, bytes]]:
        """Uncommitted taps with seq > after (and <= through), oldest first; never an unsettled row
        nor one after it (the sequence the backend sees has no gap)."""
        upper = self._last_seq if through is None else through
        with self._lock:
            first_unsettled = self._db.execute(
                "SELECT MIN(seq) FROM taps WHERE unsettled IS NOT NULL").fetchone()[0]
            if first_unsettled is not None:
                upper = min(upper, int(first_unsettled) - 1)
            rows = self._db.execute(
                "SELECT seq, payload FROM taps WHERE seq > ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                (after, self._committed, upper, limit),
            ).fetchall()
        return [(int(seq), bytes(payload)) for seq, payload in rows]

    def pending_count(self) -> int:
        return self._last_seq - self._committed

    def mark_committed(self, through: int) -> None:
        """The backend holds every tap up to `through`: drop them. Never moves backwards, and never
        past what was journaled (a bogus ack must not erase taps the backend has not seen)."""
        through = min(through, self._last_seq)
        if through <= self._committed:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM taps WHERE seq <= ?", (through,))
                self._set_meta("committed_through", str(through))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._committed = through

    # ------------------------------------------------------------------------------------ state
    def get_state(self, key: str, default: Any = None) -> Any:
        raw = self._meta(f"state:{key}", None)
        return default if raw is None else json.loads(raw)

    def set_state(self, key: str, value: Any) -> None:
        with self._lock:
            self._set_meta(f"state:{key}", json.dumps(value))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------------------------- internal
    def _meta(self, key: str, default: str | None) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )
