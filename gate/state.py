"""What a gate knows besides its journal: deny-list, fare tables, action list, mode — kept on disk.

Every update arrives as a message of protocol/mqtt/messages.py and is applied all or nothing: a delta on the
wrong base, a bad checksum, a truncated artefact or an older version leaves the state exactly as it
was, and the result says whether to ask the backend for a full snapshot. Everything applied is saved
before it counts, so a rebooted gate decides with what it had, at once, without the network.

Files in the gate's data directory: denylist.snapshot (fare_core's format, saved atomically),
faretable.fgt and faretable.next.fgt (fare_core artefacts), and the journal's key/value table for the
mode, the action list and the action ids already applied.
"""

from __future__ import annotations

import base64
import binascii
import enum
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fare_core import DenyList, DenyListDelta, DenyListError, FareCoreError, FareTable, GateMode
from protocol.mqtt import (
    Action,
    ActionListMessage,
    DenyListDeltaMessage,
    DenyListSnapshotMessage,
    DenyListSnapshotRef,
    FareTableMessage,
    GateCommand,
)

from .journal import Journal

log = logging.getLogger(__name__)

RECENT_CARDS = 100_000  # counters remembered for replay detection (about 10 MB)


class Outcome(enum.Enum):
    APPLIED = "applied"
    IGNORED = "ignored"  # not newer than what the gate holds: nothing to do
    REFUSED = "refused"  # cannot apply cleanly: kept the old state, ask for a snapshot


@dataclass(frozen=True)
class UpdateResult:
    outcome: Outcome
    detail: str = ""

    @property
    def needs_snapshot(self) -> bool:
        return self.outcome is Outcome.REFUSED


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` all or nothing, fsynced: a power cut leaves the old file or the new."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class LocalState:
    """What this gate knows locally: deny-list, fare table(s), action list, mode, recent counters."""

    def __init__(self, data_dir: Path, journal: Journal) -> None:
        self.data_dir = data_dir
        self.journal = journal
        data_dir.mkdir(parents=True, exist_ok=True)
        self.denylist = self._load_denylist()
        self._denylist_lock = threading.Lock()  # deltas and snapshots are applied in worker threads
        self.fare_table, self.next_table, self.next_activate_at = self._load_tables()
        self.mode = GateMode(journal.get_state("mode", int(GateMode.NORMAL)))
        self.command_id = int(journal.get_state("command_id", 0))
        self.actions_version = int(journal.get_state("actions_version", 0))
        self.actions: dict[int, Action] = {
            a.card_id: a for a in (Action.model_validate(x) for x in journal.get_state("actions", []))}
        self.applied_actions: set[int] = set(journal.get_state("applied_actions", []))
        self.recent_counters: OrderedDict[int, int] = OrderedDict()

    # ---------------------------------------------------------------------------- loading
    @property
    def _denylist_path(self) -> Path:
        return self.data_dir / "denylist.snapshot"

    def _load_denylist(self) -> DenyList:
        if self._denylist_path.exists():
            try:
                return DenyList.load(self._denylist_path)
            except DenyListError as exc:
                log.error("stored deny-list unreadable (%s): starting empty, will ask for a snapshot", exc)
        return DenyList((), version=0)

    def _load_tables(self) -> tuple[FareTable | None, FareTable | None, datetime | None]:
        tables: list[FareTable | None] = []
        for name in ("faretable.fgt", "faretable.next.fgt"):
            path = self.data_dir / name
            table = None
            if path.exists():
                try:
                    table = FareTable.from_bytes(path.read_bytes())
                except FareCoreError as exc:
                    log.error("stored fare table %s unreadable: %s", name, exc)
            tables.append(table)
        raw = self.journal.get_state("next_activate_at")
        activate_at = datetime.fromisoformat(raw) if raw and tables[1] is not None else None
        return tables[0], tables[1], activate_at

    # ------------------------------------------------------------------------- deny-list
    def apply_denylist_delta(self, msg: DenyListDeltaMessage) -> UpdateResult:
        with self._denylist_lock:
            return self._apply_denylist_delta(msg)

    def _apply_denylist_delta(self, msg: DenyListDeltaMessage) -> UpdateResult:
        held = self.denylist.version
        if msg.version <= held:
            return UpdateResult(Outcome.IGNORED, f"version {msg.version} is not newer than {held}")
        try:
            delta = DenyListDelta(version=msg.version, base_version=msg.base_version, add=tuple(msg.add),
                                  remove=tuple(msg.remove), checksum=msg.checksum)
            self.denylist.apply_delta(delta)  # all or nothing: on error the list is untouched
        except (DenyListError, ValueError, TypeError) as exc:
            return UpdateResult(Outcome.REFUSED, f"delta {msg.base_version}->{msg.version} refused: {exc}")
        self.denylist.save(self._denylist_path)
        return UpdateResult(Outcome.APPLIED, f"deny-list now version {msg.version}")

    def apply_denylist_snapshot(self, msg: DenyListSnapshotMessage) -> UpdateResult:
        with self._denylist_lock:
            return self._apply_denylist_snapshot(msg)

    def _apply_denylist_snapshot(self, msg: DenyListSnapshotMessage) -> UpdateResult:
        if msg.version <= self.denylist.version:
            return UpdateResult(Outcome.IGNORED, f"snapshot {msg.version} is not newer")
        try:
            candidate = DenyList(msg.card_ids, version=msg.version)
        except (DenyListError, ValueError) as exc:
            return UpdateResult(Outcome.REFUSED, f"snapshot refused: {exc}")
        if candidate.checksum != msg.checksum:
            return UpdateResult(Outcome.REFUSED, "snapshot checksum does not match its ids")
        candidate.save(self._denylist_path)
        self.denylist = candidate
        return UpdateResult(Outcome.APPLIED, f"deny-list snapshot version {msg.version}")

    def apply_denylist_file(self, path: Path, ref: DenyListSnapshotRef, sha256: str) -> UpdateResult:
        """A downloaded binary snapshot (`path`, of SHA-256 `sha256`) named by a verified `ref`: loaded
        and checked (fare_core verifies the file's own order and checksum; its SHA-256, version and
        checksum must be the ref's), then made the gate's stored list by renaming the file into place
        and swapped in. Anything else leaves the list as it was; `path` is consumed either way. CPU
        and disk work: call it in a worker thread."""
        try:
            with self._denylist_lock:
                if ref.version <= self.denylist.version:
                    return UpdateResult(Outcome.IGNORED, f"snapshot {ref.version} is not newer")
                if sha256 != ref.sha256:
                    return UpdateResult(Outcome.REFUSED, "downloaded snapshot's SHA-256 is not the ref's")
                try:
                    candidate = DenyList.load(path)
                except (DenyListError, ValueError) as exc:
                    return UpdateResult(Outcome.REFUSED, f"downloaded snapshot refused: {exc}")
                if (candidate.version, candidate.checksum, len(candidate)) != (ref.version, ref.checksum,
                                                                               ref.size):
                    return UpdateResult(Outcome.REFUSED, f"downloaded snapshot is version "
                                        f"{candidate.version} ({len(candidate)} ids), not the ref's")
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
                os.replace(path, self._denylist_path)
                directory = os.open(self.data_dir, os.O_RDONLY)
                try:
                    os.fsync(directory)
                finally:
                    os.close(directory)
                self.denylist = candidate
                return UpdateResult(Outcome.APPLIED, f"deny-list snapshot version {ref.version} "
                                    f"({len(candidate)} ids) fetched over HTTP")
        finally:
            path.unlink(missing_ok=True)

    # ------------------------------------------------------------------------ fare table
    def table_at(self, now: datetime) -> FareTable | None:
        """The table in force at `now`, switching to the pending one once its time has come."""
        if self.next_table is not None and self.next_activate_at is not None and now >= self.next_activate_at:
            os.replace(self.data_dir / "faretable.next.fgt", self.data_dir / "faretable.fgt")
            self.fare_table, self.next_table, self.next_activate_at = self.next_table, None, None
            self.journal.set_state("next_activate_at", None)
        return self.fare_table

    @property
    def newest_fare_table_version(self) -> int:
        """The newest fare table held, in force or pending (0: none at all, the gate must ask)."""
        return max((t.version for t in (self.fare_table, self.next_table) if t is not None), default=0)

    def apply_fare_table(self, msg: FareTableMessage, now: datetime | None = None) -> UpdateResult:
        now = now or datetime.now(UTC)
        newest = self.newest_fare_table_version
        if msg.version <= newest:
            return UpdateResult(Outcome.IGNORED, f"fare table {msg.version} is not newer than {newest}")
        try:
            blob = base64.b64decode(msg.artefact, validate=True)
            table = FareTable.from_bytes(blob)
        except (binascii.Error, ValueError, FareCoreError) as exc:
            return UpdateResult(Outcome.REFUSED, f"fare table artefact refused: {exc}")
        if (table.version, table.checksum) != (msg.version, msg.checksum):
            return UpdateResult(Outcome.REFUSED, "fare table version or checksum differs from its message")
        if msg.activate_at <= now or self.fare_table is None:
            atomic_write(self.data_dir / "faretable.fgt", blob)
            self.fare_table = table
            return UpdateResult(Outcome.APPLIED, f"fare table {table.version} in force")
        atomic_write(self.data_dir / "faretable.next.fgt", blob)
        self.next_table, self.next_activate_at = table, msg.activate_at
        self.journal.set_state("next_activate_at", msg.activate_at.isoformat())
        return UpdateResult(Outcome.APPLIED, f"fare table {table.version} from {msg.activate_at.isoformat()}")

    # --------------------------------------------------------------------- actions, mode
    def apply_actions(self, msg: ActionListMessage) -> UpdateResult:
        if msg.version <= self.actions_version:
            return UpdateResult(Outcome.IGNORED, f"action list {msg.version} is not newer")
        listed = {a.action_id for a in msg.actions}
        self.actions = {}
        # a phone's oldest action first: its wallet takes only ids above the last one it holds
        for action in sorted(msg.actions, key=lambda a: a.action_id):
            if action.action_id not in self.applied_actions:
                self.actions.setdefault(action.card_id, action)
        self.applied_actions &= listed  # forget ids the backend has retired
        self.actions_version = msg.version
        self.journal.set_state("actions", [a.model_dump(mode="json") for a in self.actions.values()])
        self.journal.set_state("applied_actions", sorted(self.applied_actions))
        self.journal.set_state("actions_version", msg.version)
        return UpdateResult(Outcome.APPLIED, f"{len(self.actions)} actions pending")

    def action_for(self, card_id: int) -> Action | None:
        return self.actions.get(card_id)

    def action_applied(self, action: Action) -> None:
        """Applied on a tap: never again on this gate, even if the list lags behind."""
        self.applied_actions.add(action.action_id)
        self.actions.pop(action.card_id, None)
        self.journal.set_state("actions", [a.model_dump(mode="json") for a in self.actions.values()])
        self.journal.set_state("applied_actions", sorted(self.applied_actions))

    def apply_command(self, msg: GateCommand) -> UpdateResult:
        if msg.command_id <= self.command_id:
            return UpdateResult(Outcome.IGNORED, f"command {msg.command_id} already seen")
        self.set_mode(GateMode(msg.mode), msg.command_id)
        return UpdateResult(Outcome.APPLIED, f"mode {GateMode(msg.mode).name}")

    def set_mode(self, mode: GateMode, command_id: int | None = None) -> None:
        self.mode = mode
        self.journal.set_state("mode", int(mode))
        if command_id is not None:
            self.command_id = command_id
            self.journal.set_state("command_id", command_id)

    # -------------------------------------------------------------------- replay defence
    def min_counter(self, card_id: int) -> int:
        """The lowest counter this gate accepts from the card: one past the last it wrote."""
        return self.recent_counters.get(card_id, 0)

    def remember_counter(self, card_id: int, counter: int) -> None:
        self.recent_counters[card_id] = counter
        self.recent_counters.move_to_end(card_id)
        if len(self.recent_counters) > RECENT_CARDS:
            self.recent_counters.popitem(last=False)

