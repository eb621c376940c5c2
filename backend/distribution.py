"""What the backend sends to gates: deny-list versions, fare tables, the action list, gate commands.

Each change is committed to the database first, then published; a publication that fails can be
repeated from the database at any time (`resend`), and gates treat repeats as no-ops (versions).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Exists, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import fare_core
from fare_core.reasons import Flag
from protocol.mqtt import (
    DENYLIST_FETCH_PATH,
    MAX_LIST_ITEMS,
    Action,
    ActionListMessage,
    DenyListDeltaMessage,
    DenyListSnapshotMessage,
    DenyListSnapshotRef,
    FareTableMessage,
    GateCommand,
    UpdateKind,
)

from .catchup import Answer, catch_up
from .chain import Landing
from .publisher import Publisher
from .tables import (
    ActionRow,
    CounterRow,
    DenyListEntryRow,
    DenyListVersionRow,
    FareTableRow,
    GateRow,
    PhoneRow,
    TapRow,
)

log = logging.getLogger("faregate.distribution")


class Conflict(ValueError):
    """The request contradicts the current state (e.g. blocking a phone that is already blocked)."""


def _ids(text: str) -> list[int]:
    return [int(x, 16) for x in text.split(",") if x]


async def current_denylist(session: AsyncSession) -> tuple[int, list[int]]:
    version = (await session.execute(select(func.max(DenyListVersionRow.version)))).scalar() or 0
    ids = (
        (
            await session.execute(
                select(DenyListEntryRow.card_id).where(DenyListEntryRow.removed_version.is_(None))
            )
        )
        .scalars()
        .all()
    )
    return int(version), sorted(int(x, 16) for x in ids)


async def next_counter(session: AsyncSession, name: str) -> int:
    row = await session.get(CounterRow, name, with_for_update=True)
    if row is None:
        row = CounterRow(name=name, value=0)
        session.add(row)
    row.value += 1
    await session.flush()
    return row.value


def held() -> Exists:
    """An action an UNCONFIRMED tap of its phone applied, while that write is not settled: whether the
    top-up is on the wallet is unknown, so no other gate may apply it meanwhile (the rider would be
    credited twice). Landed, the processor marks it applied; voided, it is on the list again."""
    return exists().where(
        TapRow.card_id == ActionRow.card_id,  # the card's taps by index; a tap cannot hold another's
        TapRow.action_id == ActionRow.id,
        TapRow.flags.bitwise_and(int(Flag.UNCONFIRMED)) != 0,
        or_(TapRow.reconciled.is_(None), TapRow.reconciled == Landing.PENDING.value),
    )


async def is_held(session: AsyncSession, action_id: int) -> bool:
    """Is this pending action held by an unsettled write (held())? Cancelling it then would refund
    money the wallet may already hold: the cancel route should refuse until the write is settled."""
    query = select(ActionRow.id).where(ActionRow.id == action_id, held())
    return await session.scalar(query) is not None


@dataclass(frozen=True)
class SnapshotFile:
    """fare_core's binary snapshot of one deny-list version (DenyList.to_bytes), as gates download it."""

    version: int
    checksum: str
    size: int  # ids
    data: bytes
    sha256: str


def _snapshot_file(denylist: fare_core.DenyList) -> SnapshotFile:
    data = denylist.to_bytes()
    digest = hashlib.sha256(data).hexdigest()
    return SnapshotFile(denylist.version, denylist.checksum, len(denylist), data, digest)


class Distributor:
    _lock = asyncio.Lock()  # one deny-list version at a time in this process
    _snapshot_fits_mqtt: bool | None = None  # whether the last snapshot asked for fitted MQTT's limit

    def __init__(self, sessions: async_sessionmaker[AsyncSession], publisher: Publisher) -> None:
        self.sessions = sessions
        self.publisher = publisher
        self.topics = publisher.topics
        self._file: SnapshotFile | None = None  # the latest version's binary snapshot, built once
        self._file_lock = asyncio.Lock()  # one build at a time: 2,000 gates asking build it once

    # --- deny-list -------------------------------------------------------------------------------

    async def change_denylist(
        self, add: list[str], remove: list[str], reason: str, status: str | None = None
    ) -> DenyListVersionRow:
        """Commit a new deny-list version (add/remove card ids, 16 hex), publish its delta, then the
        retained snapshot (skipped past MAX_LIST_ITEMS ids: `publish_denylist_snapshot`)."""
        async with self._lock:
            async with self.sessions.begin() as session:
                base, ids = await current_denylist(session)
                listed = set(ids)
                add_ids = sorted({int(c, 16) for c in add} - listed)
                remove_ids = sorted({int(c, 16) for c in remove} & listed)
                if not add_ids and not remove_ids:
                    raise Conflict("nothing to change: already in that state")
                version = base + 1
                new_list = fare_core.DenyList((listed | set(add_ids)) - set(remove_ids), version=version)
                for card in add_ids:
                    session.add(
                        DenyListEntryRow(card_id=f"{card:016x}", added_version=version, reason=reason)
                    )
                if remove_ids:
                    rows = (
                        (
                            await session.execute(
                                select(DenyListEntryRow).where(
                                    DenyListEntryRow.card_id.in_([f"{c:016x}" for c in remove_ids]),
                                    DenyListEntryRow.removed_version.is_(None),
                                )
                            )
                        )
                        .scalars()
                        .all()
                    )
                    for entry in rows:
                        entry.removed_version = version
                row = DenyListVersionRow(
                    version=version,
                    base_version=base,
                    added=",".join(f"{c:016x}" for c in add_ids),
                    removed=",".join(f"{c:016x}" for c in remove_ids),
                    checksum=new_list.checksum,
                    size=len(new_list),
                    created_at=datetime.now(UTC),
                    reason=reason[:200],
                )
                session.add(row)
                if status is not None:
                    for card in add_ids + remove_ids:
                        phone = await session.get(PhoneRow, f"{card:016x}")
                        if phone is None:
                            phone = PhoneRow(card_id=f"{card:016x}", balance=0, counter=0)
                            session.add(phone)
                        phone.status = status if card in add_ids else "active"
                        phone.status_reason = reason[:200]
            await self.publish_denylist_delta(row, add_ids, remove_ids)  # first: the block itself
            await self.publish_denylist_snapshot(new_list)  # and its reference, the gates' beacon
            return row

    async def publish_denylist_delta(
        self, row: DenyListVersionRow, add: list[int], remove: list[int]
    ) -> None:
        message = DenyListDeltaMessage(
            version=row.version,
            base_version=row.base_version,
            add=add,
            remove=remove,
            checksum=row.checksum,
            time=datetime.now(UTC),
        )
        await self.publisher.publish(self.topics.denylist_delta, message)

    async def snapshot(self) -> fare_core.DenyList:
        async with self.sessions() as session:
            version, ids = await current_denylist(session)
        return fare_core.DenyList(ids, version=version)

    async def current_version(self) -> int:
        async with self.sessions() as session:
            version = await session.scalar(select(func.max(DenyListVersionRow.version)))
        return int(version or 0)

    async def snapshot_file(self) -> SnapshotFile:
        """The current version's binary snapshot, built once per version (in a worker thread: a
        10-million list is 80 MB) and kept until the next version, so gates fetching it at once cost
        one build, not one each."""
        version = await self.current_version()
        cached = self._file
        if cached is not None and cached.version == version:
            return cached
        async with self._file_lock:
            cached = self._file
            if cached is not None and cached.version >= version:
                return cached
            async with self.sessions() as session:
                version, ids = await current_denylist(session)
            self._file = await asyncio.to_thread(
                lambda: _snapshot_file(fare_core.DenyList(ids, version=version)))
            return self._file

    async def publish_denylist_snapshot(self, denylist: fare_core.DenyList | None = None) -> None:
        """The whole list as the retained MQTT snapshot, then its retained, signed `DenyListSnapshotRef`:
        the beacon every gate keeps, which makes a gate behind it take the snapshot
        (protocol.mqtt.follow; a current gate is not subscribed to the whole list). Past MAX_LIST_ITEMS
        ids, which no MQTT message may carry, the reference alone (said once in the log, and again
        whenever the list crosses the limit): gates catch up by delta or download the binary snapshot
        it names over HTTP (GET DENYLIST_FETCH_PATH with the gate's MAC). `denylist`: the current list
        when the caller holds it; otherwise the size is read from the latest version first, so a list
        past the limit is loaded only for its binary snapshot."""
        if denylist is None:
            async with self.sessions() as session:
                size = await session.scalar(
                    select(DenyListVersionRow.size).order_by(DenyListVersionRow.version.desc()).limit(1)
                )
                if not self._fits_mqtt(int(size or 0)):
                    await self.publish_denylist_ref()
                    return
                version, ids = await current_denylist(session)
            denylist = fare_core.DenyList(ids, version=version)
        if not self._fits_mqtt(len(denylist)):  # grew in between, or handed in past the limit
            await self.publish_denylist_ref(denylist)
            return
        message = DenyListSnapshotMessage(
            version=denylist.version,
            card_ids=list(denylist.ids()),
            checksum=denylist.checksum,
            time=datetime.now(UTC),
        )
        await self.publisher.publish(self.topics.denylist_snapshot, message, retain=True)
        await self.publish_denylist_ref(denylist)  # after the snapshot: a gate it sends there finds it

    async def publish_denylist_ref(self, denylist: fare_core.DenyList | None = None) -> SnapshotFile:
        """The retained `DenyListSnapshotRef` of the current version (its binary snapshot built, or
        taken from the cache, for the SHA-256 the gates check the download against); `denylist`: the
        current list when the caller holds it (not loaded again)."""
        if denylist is not None and (self._file is None or self._file.version < denylist.version):
            file = await asyncio.to_thread(_snapshot_file, denylist)
            async with self._file_lock:
                if self._file is None or self._file.version < file.version:
                    self._file = file
        built = await self.snapshot_file()
        ref = DenyListSnapshotRef(version=built.version, checksum=built.checksum, size=built.size,
                                  sha256=built.sha256, time=datetime.now(UTC))
        await self.publisher.publish(self.topics.denylist_snapshot_ref, ref, retain=True)
        return built

    def _fits_mqtt(self, size: int) -> bool:
        fits = size <= MAX_LIST_ITEMS
        if fits != self._snapshot_fits_mqtt:
            if not fits:
                log.warning(
                    "the deny-list holds %d ids, more than an MQTT message may carry (%d): no MQTT "
                    "snapshot from now on, its reference instead; gates catch up by delta or download "
                    "the binary snapshot (%s, snapshot.bin for operators)", size, MAX_LIST_ITEMS,
                    DENYLIST_FETCH_PATH,
                )
            elif self._snapshot_fits_mqtt is not None:
                log.info("the deny-list holds %d ids again, within MQTT's limit: MQTT snapshots resume", size)
            Distributor._snapshot_fits_mqtt = fits  # once per process, not once per Distributor
        return fits

    async def catch_up_denylist(self, have: int) -> Answer:
        """Bring a gate holding deny-list version `have` up to date: publish the signed net delta
        from `have` when that is the way (backend/catchup.py), nothing when `have` is current.
        Answer.SNAPSHOT publishes nothing: only the whole list will do, and the caller republishes
        it (backend/control.py coalesces those)."""
        async with self.sessions() as session:
            answer, delta = await catch_up(session, have)
        if delta is not None:
            await self.publisher.publish(self.topics.denylist_delta, delta)
        return answer

    # --- fare tables -----------------------------------------------------------------------------

    async def publish_fare_table(self, row: FareTableRow) -> None:
        message = FareTableMessage(
            version=row.version,
            checksum=row.checksum,
            activate_at=row.activate_at,
            artefact=base64.b64encode(row.artefact).decode(),
        )
        await self.publisher.publish(self.topics.fare_table, message, retain=True)

    async def republish_current_fare_table(self) -> None:
        async with self.sessions() as session:
            row = (
                await session.execute(
                    select(FareTableRow)
                    .where(FareTableRow.state == "published")
                    .order_by(FareTableRow.version.desc())
                    .limit(1)
                )
            ).scalar()
        if row is not None:
            await self.publish_fare_table(row)

    # --- actions ---------------------------------------------------------------------------------

    async def publish_actions(self) -> int:
        """The action list: for each phone its oldest pending action, unless that one is held by an
        unsettled write (held()), then none for that phone.

        A wallet takes an action only when its id is above the last one it holds (fare_core's
        `last_action`), so a phone's actions must reach it oldest first: a newer one written first
        would leave the older one never applicable."""
        async with self.sessions.begin() as session:
            version = await next_counter(session, "actions_version")
            pending = (
                (await session.execute(select(ActionRow).where(ActionRow.state == "pending")
                                       .order_by(ActionRow.id)))
                .scalars()
                .all()
            )
            held_ids = set(
                (await session.execute(select(ActionRow.id).where(ActionRow.state == "pending", held())))
                .scalars()
                .all()
            )
            oldest: dict[str, ActionRow] = {}
            for row in pending:
                oldest.setdefault(row.card_id, row)
            actions = [
                Action(action_id=r.id, card_id=int(r.card_id, 16), topup=r.topup, unblock=r.unblock)
                for r in oldest.values()
                if r.id not in held_ids
            ]
        message = ActionListMessage(version=version, actions=actions, time=datetime.now(UTC))
        await self.publisher.publish(self.topics.actions, message, retain=True)
        return version

    # --- gate commands ---------------------------------------------------------------------------

    async def command_gate(self, gate: GateRow, mode: int, reason: str) -> GateCommand:
        message = GateCommand(
            gate_id=gate.gate_id,
            command_id=gate.command_id,
            mode=fare_core.GateMode(mode),
            reason=reason,
            issued_at=datetime.now(UTC),
        )
        await self.publisher.publish(self.topics.command(gate.gate_id), message, retain=True)
        return message

    async def resend(self, kind: UpdateKind, have_version: int | None = None) -> Answer:
        """Republish `kind` whole (Answer.SNAPSHOT); or, for the deny-list with the version a gate
        holds, its catch-up (`catch_up_denylist`: DELTA published, CURRENT nothing, SNAPSHOT nothing
        yet, the caller asks again without a version)."""
        if kind == UpdateKind.DENYLIST:
            if have_version is not None:
                return await self.catch_up_denylist(have_version)
            await self.publish_denylist_snapshot()
        elif kind == UpdateKind.FARE_TABLE:
            await self.republish_current_fare_table()
        else:
            await self.publish_actions()
        return Answer.SNAPSHOT
