"""Control-plane messages from gates: status (last seen, versions, mode) and snapshot requests.

Both must carry the gate's MAC (docs/security.md): a forged one is dead-lettered and alarmed, never
recorded or acted on. A gate reporting backend messages it refused for their signature raises a
`downlink_refused` alarm when its count grows (at most one unacknowledged alarm a minute per gate, as
every alarm an attacker can trigger). A MAC does not stop a replay, so a status whose `time` is not
newer than the gate's `last_seen` is ignored and counted (`stale_statuses`): replayed statuses can
neither move `last_seen` backwards, undo newer versions, nor alternate to raise alarms.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from protocol.mqtt import GateState, GateStatus, SnapshotRequest, Topics, UpdateKind, parse_gate_id

from .catchup import Answer
from .config import Settings
from .ingest import authn
from .ingest.store import RawMessage, dead_letter_row
from .tables import AlarmRow, DeadLetterRow, GateRow

log = logging.getLogger("faregate.control")

SNAPSHOT_WINDOW_S = 5.0  # one republish of a kind per window, whoever asks and however often
DELTA_GATHER_S = 0.5  # a deny-list catch-up waits this long after its first request, serving the rest
DELTA_VERSIONS_PER_WINDOW = 8  # distinct deny-list versions answered with a delta within a window
REQUESTS_PER_GATE = 6  # requests one gate may make within a window (two per kind); more are dropped
CLOCK_SKEW_EVERY = timedelta(hours=1)  # one clock_skew alarm per gate within this
StatusOf = tuple[GateStatus, int, int]  # an authenticated status, its gate's station and number
#: Statuses ignored per gate because their `time` was not newer than the gate's last_seen (replays).
stale_statuses: Counter[str] = Counter()


class Republish(Protocol):
    """Republish a kind whole (`have_version` None), or answer a gate holding deny-list version
    `have_version` (backend/catchup.py's Answer; None counts as SNAPSHOT): `Distributor.resend`."""

    def __call__(self, kind: UpdateKind, have_version: int | None = None, /) -> Awaitable[Answer | None]: ...


#: A republish of a kind (have None), or the catch-up of gates holding deny-list version `have`.
Key = tuple[UpdateKind, int | None]


class SnapshotRequests:
    """Snapshot requests coalesced per kind (per version held, for deny-list catch-ups), rate-limited
    per gate, and bounded.

    The fare table, deny-list snapshot and action list go to one topic every gate reads (286 KB for a
    fare table), so a republish for one gate is one for all: a kind is republished at once if it was
    not within the last window, else once at the end of that window however many requests came
    meanwhile (the later askers still get a republish after their request). A gate asking more than
    REQUESTS_PER_GATE times within a window is ignored until it slows down. `republish_all` is the
    same path for the backend's own (re)connection to the broker.

    A deny-list request names the version the gate holds; it is answered with the net delta from that
    version to the current one (backend/catchup.py), on the shared delta topic, which every gate
    holding that version applies: so deltas are coalesced per version held, the first `gather_s`
    after the first request (the gates a live delta left behind ask within a moment of each other),
    then at most one a window like a kind. A gate holding the current version causes nothing. When a
    delta is not the way (a version the backend never made, too far behind, a delta not smaller than
    the list) the request joins the deny-list snapshot's republish. At most `versions_per_window`
    distinct versions are answered with a delta within a window; requests at further versions join
    the snapshot too, so a compromised gate (its MAC genuine), or many, cannot make the backend
    compute and publish unbounded deltas: per window, at most that many catch-ups plus one republish
    of each kind, however many gates ask at however many versions.
    """

    def __init__(
        self,
        republish: Republish,
        *,
        window_s: float = SNAPSHOT_WINDOW_S,
        per_gate: int = REQUESTS_PER_GATE,
        retry_s: float = 1.0,
        gather_s: float = DELTA_GATHER_S,
        versions_per_window: int = DELTA_VERSIONS_PER_WINDOW,
    ) -> None:
        self.republish = republish
        self.window_s = window_s
        self.per_gate = per_gate
        self.retry_s = retry_s
        self.gather_s = gather_s
        self.versions_per_window = versions_per_window
        self._done_at: dict[Key, float] = {}  # when each kind (or catch-up) was last published
        self._pending: dict[Key, asyncio.Task[None]] = {}
        self._versions: dict[int, float] = {}  # deny-list versions held by askers: when last answered
        self._asked: dict[str, deque[float]] = {}
        self.republished: dict[UpdateKind, int] = dict.fromkeys(UpdateKind, 0)
        self.answers: Counter[Answer] = Counter()  # deny-list catch-ups: delta, current, snapshot
        self.dropped = 0  # requests over a gate's limit
        self.capped = 0  # deny-list requests sent to the snapshot: too many versions within the window

    def ask(self, gate: str, kind: UpdateKind, have_version: int | None = None) -> bool:
        """A gate's request (with the version it holds); False when the gate is over its limit
        (nothing is scheduled)."""
        now = time.monotonic()
        asked = self._asked.setdefault(gate, deque())
        while asked and now - asked[0] > self.window_s:
            asked.popleft()
        if len(asked) >= self.per_gate:
            self.dropped += 1
            return False
        asked.append(now)
        if len(self._asked) > 10_000:  # forget gates that stopped asking (hostile topics cannot pile up)
            quiet = [g for g, times in self._asked.items() if not times or now - times[-1] > self.window_s]
            for other in quiet:
                del self._asked[other]
        if kind is UpdateKind.DENYLIST and have_version is not None:
            if self._version_admitted(have_version, now):
                self._schedule((kind, have_version))
                return True
            self.capped += 1
        self._schedule((kind, None))
        return True

    def _version_admitted(self, have: int, now: float) -> bool:
        """May gates holding `have` get a delta: is it one of the versions being answered within this
        window, or is there room for one more?"""
        for version, at in list(self._versions.items()):
            if now - at > self.window_s and (UpdateKind.DENYLIST, version) not in self._pending:
                del self._versions[version]
                self._done_at.pop((UpdateKind.DENYLIST, version), None)
        if have not in self._versions and len(self._versions) >= self.versions_per_window:
            return False
        self._versions[have] = now
        return True

    def republish_all(self) -> None:
        """The backend (re)connected to the broker: a broker restarted without persistence has lost
        the retained state, so every kind is republished (coalesced like a request)."""
        for kind in UpdateKind:
            self._schedule((kind, None))

    def _schedule(self, key: Key) -> None:
        if key in self._pending:  # one is already waiting for its turn: it serves this request too
            return
        first = 0.0 if key[1] is None else self.gather_s
        last = self._done_at.get(key)
        delay = first if last is None else max(first, last + self.window_s - time.monotonic())
        task = asyncio.get_running_loop().create_task(self._publish(key, delay), name=f"republish {key}")
        self._pending[key] = task

    async def _publish(self, key: Key, delay: float) -> None:
        kind, have = key
        try:
            await asyncio.sleep(delay)
            while True:
                try:
                    answer = await self.republish(kind, have) or Answer.SNAPSHOT
                except Exception as error:  # the broker or the database is away: try again later
                    log.warning(
                        "republishing the %s failed (%s); again in %.0f s", kind.value, error, self.retry_s
                    )
                    await asyncio.sleep(self.retry_s)
                    continue
                now = time.monotonic()
                self._done_at[key] = now  # requests during the publish were served by it
                if have is None:
                    self.republished[kind] += 1
                else:
                    self.answers[answer] += 1
                    self._versions[have] = now
                    if answer is Answer.SNAPSHOT:  # only the whole list will do: the kind's republish
                        self._schedule((kind, None))
                return
        finally:
            if self._pending.get(key) is asyncio.current_task():
                del self._pending[key]

    async def aclose(self) -> None:
        tasks = list(self._pending.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def handle_control_message(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    message: RawMessage,
    distributor: object | None = None,
) -> None:
    await handle_control_messages(settings, sessions, [message], distributor)


async def handle_control_messages(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    messages: list[RawMessage],
    distributor: object | None = None,
) -> None:
    """One ingest batch's status and request messages. The statuses that verify are recorded together
    in one transaction (`record_statuses`): a city's gates reconnecting at once send thousands, and one
    transaction each kept the workers behind the taps for tens of seconds (measured in the city bench)."""
    statuses: list[StatusOf] = []
    for message in messages:
        leaf = message.topic.rsplit("/", 1)[-1]
        try:
            gate = Topics.gate_of(message.topic)
            station_id, gate_no = parse_gate_id(gate)
            if leaf == "status":
                status = GateStatus.model_validate_json(message.payload)
                if status.gate_id != gate:
                    raise ValueError(f"status of gate {status.gate_id} on the topic of gate {gate}")
                await _authentic(settings, sessions, status, gate)
                statuses.append((status, station_id, gate_no))
            elif leaf == "request":
                await _request(settings, sessions, message, gate, distributor)
        except (ValidationError, ValueError) as error:
            try:
                async with sessions.begin() as session:
                    reason = f"invalid {leaf}: {error}"
                    row = dead_letter_row(message.topic, bytes(message.payload), reason, datetime.now(UTC))
                    session.add(DeadLetterRow(**row))
            except Exception:  # the others' statuses are still recorded below
                log.exception("control message on %s not dead-lettered", message.topic)
        except Exception:  # one message's failure (its alarm, a republish) never costs the batch's statuses
            log.exception("control message on %s failed", message.topic)
    if statuses:
        await record_statuses(sessions, statuses, skew_alarm_s=settings.clock_skew_alarm_s)


async def _request(settings: Settings, sessions: async_sessionmaker[AsyncSession], message: RawMessage,
                   gate: str, distributor: object | None) -> None:
    request = SnapshotRequest.model_validate_json(message.payload)
    if request.gate_id != gate:
        raise ValueError(f"request of gate {request.gate_id} on the topic of gate {gate}")
    await _authentic(settings, sessions, request, gate)
    have = request.have_version if request.kind is UpdateKind.DENYLIST else None
    if isinstance(distributor, SnapshotRequests):  # coalesced, rate-limited, in the background
        distributor.ask(gate, request.kind, have)
    elif distributor is not None:  # a Distributor, answering at once
        resend = distributor.resend  # type: ignore[attr-defined]
        answer = await resend(request.kind, have)
        if answer is Answer.SNAPSHOT and have is not None:  # the catch-up needs the whole list
            await resend(request.kind)
    log.info("gate %s asked for the %s (has version %d)", gate, request.kind.value, request.have_version)


async def _authentic(settings: Settings, sessions: async_sessionmaker[AsyncSession],
                     message: GateStatus | SnapshotRequest, gate: str) -> None:
    """Return if the gate's MAC verifies; otherwise alarm (bounded) and raise, to dead-letter it."""
    why = authn.refusal(authn.gate_keys(settings), message, gate)
    if why is not None:
        async with sessions.begin() as session:
            await authn.alarm_once(session, "uplink_forged", gate,
                                   f"{type(message).__name__} {why}; dead-lettered", datetime.now(UTC))
        raise ValueError(why)


async def _downlink_refused(session: AsyncSession, status: GateStatus) -> None:
    """An alarm when the gate's count of refused backend messages has grown since the last alarm (the
    count leads the alarm's detail, so the comparison survives a backend restart), or is lower (a
    restarted gate counting again); through `alarm_once`, so never more than one a minute per gate."""
    count = status.auth_refused or 0
    last = await session.scalar(
        select(AlarmRow.detail)
        .where(AlarmRow.kind == "downlink_refused", AlarmRow.gate_id == status.gate_id)
        .order_by(AlarmRow.id.desc())
        .limit(1)
    )
    before = int(last.split(" ", 1)[0]) if last and last.split(" ", 1)[0].isdigit() else 0
    if count > before or (count and count < before):  # grown, or a restarted gate counting again
        await authn.alarm_once(
            session, "downlink_refused", status.gate_id,
            f"{count} backend message(s) refused by the gate for their signature; "
            f"latest: {status.auth_alarm or '?'}", datetime.now(UTC),
        )


async def _clock_skew(session: AsyncSession, status: GateStatus, limit_s: float, now: datetime) -> None:
    """One `clock_skew` alarm an hour for a gate whose clock (its status time) is more than `limit_s`
    from the backend's. Its taps are still ordered by the wallet counter (docs/ledger.md), but its tap
    times, service days and time-band fares follow its clock."""
    assert status.time is not None
    skew = (status.time - now).total_seconds()
    if abs(skew) <= limit_s:
        return
    recent = await session.scalar(
        select(AlarmRow.id)
        .where(AlarmRow.kind == "clock_skew", AlarmRow.gate_id == status.gate_id,
               AlarmRow.created_at > now - CLOCK_SKEW_EVERY)
        .limit(1)
    )
    if recent is None:
        session.add(AlarmRow(
            created_at=now, kind="clock_skew", severity="warning", gate_id=status.gate_id,
            detail=f"gate clock {'ahead of' if skew > 0 else 'behind'} the backend's by {abs(skew):.0f} s "
                   f"(status of {status.time.isoformat()} received at {now.isoformat()})",
        ))


async def record_status(
    sessions: async_sessionmaker[AsyncSession], status: GateStatus, station_id: int, gate_no: int,
    *, skew_alarm_s: float | None = None,
) -> bool:
    """Record a gate's (authenticated) status; False when it is ignored as not newer than the last.
    With `skew_alarm_s`, a status whose time is further than that from now raises a clock_skew alarm."""
    return (await record_statuses(sessions, [(status, station_id, gate_no)], skew_alarm_s=skew_alarm_s))[0]


async def record_statuses(
    sessions: async_sessionmaker[AsyncSession], statuses: list[StatusOf],
    *, skew_alarm_s: float | None = None,
) -> list[bool]:
    """`record_status` for several (status, station, gate number), their gates' rows read in one query
    and written in one transaction. If that transaction fails (another worker made one of these gates'
    rows first, or one status breaks something), each is recorded on its own, so one never costs the
    others; one that still fails is logged and skipped (its gate sends its status again)."""
    try:
        return await _record_together(sessions, statuses, skew_alarm_s)
    except Exception:
        if len(statuses) == 1:  # once more: a row another worker made meanwhile is read this time
            return await _record_together(sessions, statuses, skew_alarm_s)
        log.warning("recording %d statuses together failed; one by one", len(statuses), exc_info=True)
    recorded = []
    for item in statuses:
        try:
            recorded += await record_statuses(sessions, [item], skew_alarm_s=skew_alarm_s)
        except Exception:
            log.exception("status of gate %s not recorded", item[0].gate_id)
            recorded.append(False)
    return recorded


async def _record_together(sessions: async_sessionmaker[AsyncSession], statuses: list[StatusOf],
                           skew_alarm_s: float | None) -> list[bool]:
    async with sessions.begin() as session:
        ids = sorted({status.gate_id for status, _, _ in statuses})
        found = await session.scalars(select(GateRow).where(GateRow.gate_id.in_(ids)))
        rows = {row.gate_id: row for row in found}
        recorded = [await _apply_status(session, rows, status, station_id, gate_no, skew_alarm_s)
                    for status, station_id, gate_no in statuses]
    for (status, _, _), taken in zip(statuses, recorded, strict=True):  # counted once it is committed
        if not taken:
            stale_statuses[status.gate_id] += 1
            log.info("gate %s: status of %s not newer than its last seen; ignored (%d so far)",
                     status.gate_id, status.time.isoformat() if status.time else "?",
                     stale_statuses[status.gate_id])
    return recorded


async def _apply_status(session: AsyncSession, rows: dict[str, GateRow], status: GateStatus,
                        station_id: int, gate_no: int, skew_alarm_s: float | None) -> bool:
    row = rows.get(status.gate_id)
    if row is not None and status.time is not None and row.last_seen is not None \
            and status.time <= row.last_seen:  # a replay (or a reordered old status): ignored, counted
        return False  # (counted by _record_together once the transaction is committed)
    if skew_alarm_s is not None and status.time is not None:  # after the replay check: a replayed
        await _clock_skew(session, status, skew_alarm_s, datetime.now(UTC))  # status says nothing
    if row is None:
        row = rows[status.gate_id] = GateRow(
            gate_id=status.gate_id,
            station_id=station_id,
            gate_no=gate_no,
            committed_seq=0,
            highest_seq=0,
            command_id=0,
        )
        session.add(row)
    if status.state == GateState.OFFLINE and row.state != GateState.OFFLINE.value:
        session.add(
            AlarmRow(
                created_at=datetime.now(UTC),
                kind="gate_offline",
                severity="warning",
                gate_id=status.gate_id,
                detail="the broker published the gate's last will",
            )
        )
    if status.auth_refused:
        await _downlink_refused(session, status)
    row.state = status.state.value
    if status.time is not None:  # the gate's own clock; a last will (no time) leaves it, so the
        row.last_seen = status.time  # backend's clock never orders the gate's statuses
    if status.state == GateState.ONLINE:
        for name in (
            "mode",
            "fare_table_version",
            "denylist_version",
            "actions_version",
            "journal_pending",
            "software",
            "tap_to_open_p50_ms",
            "tap_to_open_p99_ms",
            "host_p99_ms",
            "tailgating_alarms",
            "forced_door_alarms",
        ):
            value = getattr(status, name)
            if value is not None:
                setattr(row, name, int(value) if name == "mode" else value)
    return True


__all__ = ["UpdateKind", "handle_control_message", "handle_control_messages", "record_status",
           "record_statuses"]
