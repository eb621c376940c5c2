"""The gate's MQTT side: taps out of the journal, acks and updates in (docs/mqtt.md).

Store-and-forward: taps are published from the journal, never from memory, with at most `window`
QoS 1 publishes in flight (a paho client handed a whole backlog at once stalls at 65,535 message ids).
A backlog goes as arrays of up to `batch_max` taps a message; a lone tap as itself, at once.
A tap leaves the journal only when the backend's "committed through seq N" arrives: a PUBACK covers one
hop, the backend's ack covers the database. After every reconnect, on a resend request, and when the
backend's ack has not moved for `stall_s`, publishing starts again from the last committed seq (and
the next such wait doubles, up to `stall_max_s`, until an ack moves: behind a station cut off from the
centre every replay is queued there); the backend stores by tap id, so repeats are harmless.

The connection is a plain reconnect loop around `async with aiomqtt.Client` (aiomqtt's own advice);
the gate keeps deciding offline meanwhile, its journal growing. Updates (deny-list, fare table,
actions, mode) go through LocalState, which applies them all or nothing; a verified one it refuses makes
the gate ask for a snapshot.

Trust (docs/security.md): every message from the backend must carry a valid signature by one of the
backend keys in the gate's configuration before anything is applied; an unsigned or badly signed one
is refused, counted (`auth_refused`) and reported at once in the gate's status, with no snapshot asked
(a forger must not make gates flood the backend). A message that does not even parse is refused the
same way: unparsed, it cannot be verified, so it is unverified input like any forgery. Only a verified
message that cannot be applied (a delta on the wrong base, a bad checksum) makes the gate ask for a
snapshot, besides the fare-table watch (none held, or older than announced; with back-off). A committed
ack must name this gate and may not go past the highest seq this gate can have handed to the broker
(`_ack_bound`); one that does is refused and reported the same way. Everything the gate sends carries
its MAC.

Every deny-list change also brings the retained, signed reference (`DenyListSnapshotRef`), the beacon
the gate keeps; the retained snapshot, the whole list, it takes only while it holds an older version
than the newest reference (protocol.mqtt.follow), so a current gate never receives the whole list again.
A deny-list past MQTT's size comes as the reference alone, with no snapshot;
`DenyListFetcher` downloads the binary snapshot it names from the backend over HTTP (the gate's MAC in
the headers), after a random delay so a station's gates do not all ask at once, and applies it only if
it is exactly the referenced file. Without a backend URL the gate says so once and catches up by delta.

MQTT 3.1.1 by default: the embedded amqtt broker speaks nothing newer, and a gate needs no v5 feature.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
import httpx
from pydantic import ValidationError

from fare_core import SNAPSHOT_HEADER_SIZE
from protocol.mqtt import (
    DENYLIST_FETCH_PATH,
    DEVELOPMENT_PUBLIC_KEY,
    DEVELOPMENT_UPLINK_MASTER_KEY,
    FETCH_GATE_HEADER,
    FETCH_MAC_HEADER,
    FETCH_TIME_HEADER,
    MAX_TAPS_PER_MESSAGE,
    ActionListMessage,
    Committed,
    DenyListDeltaMessage,
    DenyListSnapshotMessage,
    DenyListSnapshotRef,
    FareTableMessage,
    GateCommand,
    GateFetchAuth,
    GateState,
    GateStatus,
    Payload,
    ResendRequest,
    SnapshotRequest,
    Topics,
    UpdateKind,
    Verifier,
    derive_gate_key,
    encode_taps,
    encode_with_mac,
    with_mac,
)
from protocol.mqtt.auth import AuthError
from protocol.mqtt.follow import DELTA_GRACE_S, SnapshotNeed, Take

from .journal import Journal
from .state import LocalState, Outcome, UpdateResult

log = logging.getLogger(__name__)
M = TypeVar("M", bound=Payload)

SOFTWARE = "faregate-gate/0.1"
STOP_WAIT_S = 5.0  # how long stop() waits for the MQTT session to close before cancelling it again


class FetchFailed(Exception):
    """A deny-list download that did not give the referenced file (HTTP error, too long, cut short);
    `retry_after`: the seconds the backend asked the gate to wait (429), if it did."""

    def __init__(self, why: str, retry_after: float | None = None) -> None:
        super().__init__(why)
        self.retry_after = retry_after


class DenyListFetcher:
    """Downloads the deny-list a verified `DenyListSnapshotRef` names, over HTTP, and applies it.

    Only the newest reference counts. It is fetched after a random delay of 0..`jitter_s`, streamed to
    a temporary file in the data directory (at most the ref's header + 8 * size bytes accepted), then
    hashed, loaded and checked in a worker thread (LocalState.apply_denylist_file), so the tap loop
    only ever waits for a chunk's write. The TLS context is built once, at start, not per download.
    The backend serves only the version asked for
    (409 if it has moved on: the next reference is awaited, no download is wasted). A failure keeps
    the list held and retries after `retry_s`, doubling up to `retry_max_s`, or at once on a newer
    reference."""

    def __init__(self, *, gate_id: str, url: str, state: LocalState, mac_key: bytes,
                 clock: Callable[[], float] = time.time, jitter_s: float = 5.0, retry_s: float = 30.0,
                 retry_max_s: float = 900.0, timeout_s: float = 60.0, verify: ssl.SSLContext | bool = True
                 ) -> None:
        self.gate_id, self.url, self.state = gate_id, url.rstrip("/"), state
        self.mac_key, self.clock = mac_key, clock
        self.jitter_s, self.retry_s, self.retry_max_s = jitter_s, retry_s, max(retry_s, retry_max_s)
        self.timeout_s = timeout_s
        # built here, once: httpx would load the CA bundle on the event loop at every download
        self.verify: ssl.SSLContext | bool = ssl.create_default_context() if verify is True else verify
        self.on_applied: Callable[[], Awaitable[None]] | None = None  # the uplink sends its status
        self.pending: DenyListSnapshotRef | None = None  # the newest reference not yet applied
        self._offered = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.fetched = 0  # snapshots applied
        self.failures = 0  # downloads that failed or gave another file
        self.last_error: str | None = None

    def offer(self, ref: DenyListSnapshotRef) -> None:
        """A verified reference: fetch it if it is newer than the list held and not older than the one
        pending (the same version again, e.g. republished after a failed fetch, is tried again)."""
        if ref.version <= self.state.denylist.version:
            return
        if self.pending is None or ref.version >= self.pending.version:
            self.pending = ref
            self._offered.set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name=f"denylist fetch {self.gate_id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        backoff = self.retry_s
        while True:
            await self._offered.wait()
            self._offered.clear()
            await asyncio.sleep(random.uniform(0, self.jitter_s))  # spreading load, not a secret
            ref = self.pending
            if ref is None or ref.version <= self.state.denylist.version:
                self.pending = None
                continue
            wait = backoff
            try:
                result = await self.fetch(ref)
            except (httpx.HTTPError, OSError, FetchFailed) as exc:
                result = UpdateResult(Outcome.REFUSED, f"fetch failed: {exc}")
                if isinstance(exc, FetchFailed) and exc.retry_after is not None:
                    wait = max(wait, exc.retry_after)
            except Exception as exc:  # a bug must not end the fetching for good: logged, retried
                log.exception("gate %s: deny-list %d fetch crashed", self.gate_id, ref.version)
                result = UpdateResult(Outcome.REFUSED, f"fetch crashed: {exc!r}")
            log.info("gate %s: deny-list %d over HTTP: %s %s", self.gate_id, ref.version,
                     result.outcome.value, result.detail)
            if result.outcome is Outcome.REFUSED:
                self.failures += 1
                self.last_error = result.detail
                with contextlib.suppress(TimeoutError):  # a newer reference, or the back-off
                    async with asyncio.timeout(wait):
                        await self._offered.wait()
                backoff = min(backoff * 2, self.retry_max_s)
                self._offered.set()
                continue
            backoff = self.retry_s
            if self.pending is ref:  # applied, or the backend moved on (its next reference follows)
                self.pending = None
            if result.outcome is Outcome.APPLIED:
                self.fetched += 1
                if self.on_applied is not None:
                    await self.on_applied()

    def _hash_and_apply(self, path: Path, ref: DenyListSnapshotRef) -> UpdateResult:
        """In a worker thread: the file's SHA-256 (80 MB for 10 million phones), then apply it."""
        with open(path, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        return self.state.apply_denylist_file(path, ref, digest)

    def _headers(self, target: str) -> dict[str, str]:
        sent = datetime.fromtimestamp(int(self.clock()), UTC)
        auth = with_mac(GateFetchAuth(gate_id=self.gate_id, method="GET", target=target, time=sent),
                        self.mac_key)
        return {FETCH_GATE_HEADER: self.gate_id, FETCH_TIME_HEADER: auth.model_dump(mode="json")["time"],
                FETCH_MAC_HEADER: str(auth.mac)}

    async def fetch(self, ref: DenyListSnapshotRef) -> UpdateResult:
        """Download `ref`'s file and apply it (the result says how it went); FetchFailed, httpx.HTTPError
        or OSError when no complete file came."""
        target = f"{DENYLIST_FETCH_PATH}?version={ref.version}"
        url = httpx.URL(self.url + target)
        limit = SNAPSHOT_HEADER_SIZE + 8 * ref.size  # fare_core's snapshot: the header, 8 bytes an id
        fd, name = tempfile.mkstemp(dir=self.state.data_dir, prefix=".denylist.fetch.", suffix=".tmp")
        path = Path(name)
        try:
            received = 0
            with os.fdopen(fd, "wb") as out:
                async with httpx.AsyncClient(timeout=self.timeout_s, verify=self.verify) as client:
                    headers = self._headers(url.raw_path.decode())
                    async with client.stream("GET", url, headers=headers) as response:
                        if response.status_code == httpx.codes.CONFLICT:
                            return UpdateResult(Outcome.IGNORED, f"the backend moved on to version "
                                                f"{response.headers.get('X-Faregate-Version', '?')}")
                        if response.status_code != httpx.codes.OK:
                            await response.aread()
                            retry_after = response.headers.get("Retry-After", "")
                            raise FetchFailed(f"HTTP {response.status_code}: {response.text[:200]}",
                                              float(retry_after) if retry_after.isdigit() else None)
                        async for chunk in response.aiter_bytes():
                            received += len(chunk)
                            if received > limit:
                                raise FetchFailed(f"more than the {limit} bytes the ref names")
                            out.write(chunk)
            if received != limit:
                raise FetchFailed(f"{received} bytes, the ref names {limit}")
            result = await asyncio.to_thread(self._hash_and_apply, path, ref)
        finally:
            path.unlink(missing_ok=True)
        return result


class Uplink:
    """Publishes one gate's journal and applies what the backend sends it."""

    def __init__(self, *, gate_id: str, host: str, port: int, prefix: str, journal: Journal,
                 state: LocalState, final_seq: Callable[[], int], window: int = 500, batch_max: int = 50,
                 heartbeat_s: float = 30.0, stall_s: float = 10.0, stall_max_s: float = 300.0,
                 on_mode: Callable[[], Awaitable[None]] | None = None,
                 extra_status: Callable[[], dict[str, Any]] | None = None,
                 username: str | None = None, password: str | None = None,
                 tls_context: ssl.SSLContext | None = None, mac_key: bytes | None = None,
                 backend_keys: list[bytes] | None = None, clock: Callable[[], float] = time.time,
                 fetcher: DenyListFetcher | None = None) -> None:
        self.gate_id = gate_id
        self.fetcher = fetcher  # None: a deny-list past MQTT's size is not fetched (said once)
        self._fetch_off_said = False
        self.clock = clock  # the gate's wall clock: status and snapshot-request times
        self.host, self.port = host, port
        self.topics = Topics(prefix)
        self.journal = journal
        self.state = state
        self.final_seq = final_seq
        self.window = window  # MQTT messages in flight (QoS 1, not yet PUBACKed)
        if not 1 <= batch_max <= MAX_TAPS_PER_MESSAGE:
            raise ValueError(f"batch_max must be 1..{MAX_TAPS_PER_MESSAGE}, not {batch_max}")
        self.batch_max = batch_max  # taps in one message at most (a backlog goes as arrays)
        self.heartbeat_s = heartbeat_s
        self.stall_s = stall_s
        self.stall_max_s = max(stall_s, stall_max_s)
        self._stall_wait = stall_s  # doubles after each republish that brought no commit
        self.on_mode = on_mode
        self.extra_status = extra_status
        self.username, self.password = username, password
        self.tls_context = tls_context  # None: plain TCP
        # None: the development keys (gate/config.py refuses them in production)
        self.mac_key = mac_key or derive_gate_key(DEVELOPMENT_UPLINK_MASTER_KEY, gate_id)
        self.verifier = Verifier(backend_keys or [DEVELOPMENT_PUBLIC_KEY])
        self.auth_refused = 0  # backend messages refused: malformed, unsigned, badly signed, impossible ack
        self.auth_alarm: str | None = None  # the latest refusal
        self._alarm_published = 0.0
        # Highest seq that may have been handed to the broker, ever: every tap journaled before this
        # start (a previous run may have published them all), then what this process publishes.
        self._sent_through = journal.last_seq
        # No fare table, or one older than a fare table message announced: ask the backend, first after
        # `fare_table_ask_s` (the retained copy normally comes right after subscribing), then backing
        # off to `fare_table_ask_max_s`, until one is held (a broker restarted without persistence).
        self.fare_table_ask_s = 2.0
        self.fare_table_ask_max_s = 60.0
        self.fare_table_requests = 0
        self._announced_fare_table = 0  # the newest version a (trusted) fare table message named
        self.connected = asyncio.Event()
        self._wake = asyncio.Event()
        self._cursor = 0  # highest seq handed to the broker in this connection
        self._last_progress = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._client: aiomqtt.Client | None = None
        self.published = 0
        self.stall_replays = 0  # republishes for want of a commit
        self.rejected_updates = 0
        self.snapshots_skipped = 0  # deny-list snapshots not newer than the list held: not verified
        # the retained snapshot only while behind the newest reference (protocol.mqtt.follow)
        self.snapshot_need = SnapshotNeed()
        self.snapshot_subscriptions = 0  # times this gate subscribed to the snapshot: it was behind
        self._grace: asyncio.Task[None] | None = None  # waiting DELTA_GRACE_S for a delta
        self.connects = 0

    # ---------------------------------------------------------------------------- running
    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"uplink {self.gate_id}")
        if self.fetcher is not None:
            self.fetcher.on_applied = self.publish_status_soon
            await self.fetcher.start()

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    async def stop(self) -> None:
        """Cancel the session; bounded, so a broker that never answers DISCONNECT (aiomqtt waits for it
        without a timeout) cannot hold the gate's shutdown: a second cancel ends that wait."""
        if self.fetcher is not None:
            await self.fetcher.stop()
        if self._grace is not None:
            self._grace.cancel()
        if self._task is not None:
            for attempt in range(3):
                self._task.cancel()
                done, _ = await asyncio.wait({self._task}, timeout=STOP_WAIT_S)
                if done:
                    break
                log.warning("gate %s: MQTT session still closing after %.0f s (attempt %d)", self.gate_id,
                            STOP_WAIT_S, attempt + 1)
            if self._task.done() and not self._task.cancelled() and self._task.exception() is not None:
                log.warning("gate %s: MQTT session ended with %r", self.gate_id, self._task.exception())
            self._task = None

    def tap_journaled(self, seq: int) -> None:
        """The controller finished a tap: publish it as soon as the link allows."""
        self._wake.set()

    async def _run(self) -> None:
        delay = 0.2
        while True:
            try:
                await self._session()
            except aiomqtt.MqttError as exc:
                log.info("gate %s: broker %s:%s unreachable or lost (%s)", self.gate_id, self.host,
                         self.port, exc)
            finally:
                self.connected.clear()
                self._client = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _session(self) -> None:
        offline = encode_with_mac(GateStatus(gate_id=self.gate_id, state=GateState.OFFLINE), self.mac_key)
        will = aiomqtt.Will(self.topics.status(self.gate_id), offline, qos=1, retain=True)
        async with aiomqtt.Client(
            self.host, self.port, identifier=f"faregate-gate-{self.gate_id}", will=will,
            protocol=aiomqtt.ProtocolVersion.V311, clean_session=True, keepalive=15,
            username=self.username, password=self.password, tls_context=self.tls_context,
            max_queued_outgoing_messages=None,
        ) as client:
            self._client = client
            self.connects += 1
            for topic in (self.topics.committed(self.gate_id), self.topics.resend(self.gate_id),
                          self.topics.command(self.gate_id), self.topics.denylist_delta,
                          self.topics.denylist_snapshot_ref, self.topics.fare_table, self.topics.actions):
                await client.subscribe(topic, qos=1)
            if self.snapshot_need.at_connect(self.state.denylist.version):
                await self._follow_snapshot()  # no list yet, or behind: the retained snapshot comes now
            self.connected.set()
            self._cursor = self.journal.committed_through  # resend everything not yet committed
            self._last_progress = time.monotonic()
            self._stall_wait = self.stall_s
            await self.publish_status()
            # Not a TaskGroup: it would wrap a lost broker's MqttError in an ExceptionGroup, and the
            # reconnect loop must see the MqttError itself.
            tasks = {asyncio.create_task(self._publisher(client)), asyncio.create_task(self._heartbeat()),
                     asyncio.create_task(self._fare_table_watch()),
                     asyncio.create_task(self._receiver(client))}
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    task.result()  # raises what ended the session
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                        await task

    async def _receiver(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            await self._on_message(str(message.topic), bytes(message.payload))

    # --------------------------------------------------------------------------- publishing
    async def _publisher(self, client: aiomqtt.Client) -> None:
        in_flight = asyncio.Semaphore(self.window)
        tasks: set[asyncio.Task[None]] = set()

        async def publish(payload: bytes, count: int) -> None:
            try:
                await client.publish(self.topics.taps(self.gate_id), payload, qos=1)
                self.published += count
            except aiomqtt.MqttError:
                pass  # the connection is going; the journal still has the taps for the next one
            finally:
                in_flight.release()

        while True:
            if (self.journal.pending_count() and time.monotonic() - self._last_progress > self._stall_wait
                    and self._cursor >= self.final_seq()):
                log.info("gate %s: no commit for %.0f s, republishing from %d", self.gate_id,
                         self._stall_wait, self.journal.committed_through)
                self._cursor = self.journal.committed_through
                self._last_progress = time.monotonic()
                # Back off: behind a station cut off from the centre the PUBACKs keep coming and every
                # replay is queued at the station, so replaying at a fixed pace grows its queue with
                # the square of the outage. A commit (or a new connection) starts again at stall_s.
                self.stall_replays += 1
                self._stall_wait = min(self._stall_wait * 2, self.stall_max_s)
            pending = self.journal.pending(after=self._cursor, limit=self.window * self.batch_max,
                                           through=self.final_seq())
            if not pending:
                self._wake.clear()
                # asyncio.timeout, not wait_for: on Python 3.11 a wait_for whose inner wait ends as the
                # task is cancelled returns instead of raising, and this loop would outlive stop()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._wake.wait()
                continue
            # Only what is already pending is grouped: a lone tap leaves at once, never waits for company.
            for start in range(0, len(pending), self.batch_max):
                group = pending[start:start + self.batch_max]
                await in_flight.acquire()
                payload = encode_taps([tap for _, tap in group])
                task = asyncio.get_running_loop().create_task(publish(payload, len(group)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                self._cursor = max(self._cursor, group[-1][0])
                self._sent_through = max(self._sent_through, self._cursor)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            await self.publish_status()

    async def publish_status(self) -> None:
        client = self._client
        if client is None:
            return
        table = self.state.fare_table
        status = GateStatus(
            gate_id=self.gate_id, state=GateState.ONLINE, time=self._now(), mode=self.state.mode,
            fare_table_version=table.version if table is not None else 0,
            denylist_version=self.state.denylist.version, actions_version=self.state.actions_version,
            last_seq=self.journal.last_seq, journal_pending=self.journal.pending_count(), software=SOFTWARE,
            auth_refused=self.auth_refused, auth_alarm=self.auth_alarm,
            **(self.extra_status() if self.extra_status else {}),
        )
        await client.publish(self.topics.status(self.gate_id), encode_with_mac(status, self.mac_key), qos=1,
                             retain=True)

    async def publish_status_soon(self) -> None:
        """A status outside the heartbeat (an alarm): skipped quietly while the broker is away."""
        with contextlib.suppress(aiomqtt.MqttError):
            await self.publish_status()

    def _fare_table_missing(self) -> bool:
        held = self.state.newest_fare_table_version
        return held == 0 or held < self._announced_fare_table

    async def _fare_table_watch(self) -> None:
        """Ask for the fare table while none is held (or only a stale one), backing off; a gate never
        sits refusing commuters "No fare table" because a retained message went missing."""
        delay = self.fare_table_ask_s
        while True:
            await asyncio.sleep(delay)
            if not self._fare_table_missing():
                delay = self.fare_table_ask_s
                continue
            log.info("gate %s: no current fare table (holds %d); asking the backend", self.gate_id,
                     self.state.newest_fare_table_version)
            await self._ask_snapshot(UpdateKind.FARE_TABLE, self.state.newest_fare_table_version)
            self.fare_table_requests += 1
            delay = min(delay * 2, self.fare_table_ask_max_s)

    async def _ask_snapshot(self, kind: UpdateKind, have: int) -> None:
        if self._client is None:
            return
        request = SnapshotRequest(gate_id=self.gate_id, kind=kind, have_version=have, time=self._now())
        await self._client.publish(self.topics.request(self.gate_id), encode_with_mac(request, self.mac_key),
                                   qos=1)

    # ---------------------------------------------------------------------------- receiving
    async def _on_message(self, topic: str, payload: bytes) -> None:
        t = self.topics
        try:
            if topic == t.committed(self.gate_id):
                committed = self._trusted(Committed.model_validate_json(payload))
                if committed.gate_id != self.gate_id:
                    raise AuthError(f"ack for gate {committed.gate_id}")
                if committed.through_seq > self._ack_bound:  # signed, yet impossible: keep the taps
                    raise AuthError(f"ack through {committed.through_seq}, this gate can have sent "
                                    f"through {self._ack_bound} only")
                if committed.through_seq > self.journal.committed_through:
                    await asyncio.to_thread(self.journal.mark_committed, committed.through_seq)
                    self._last_progress = time.monotonic()
                    self._stall_wait = self.stall_s
            elif topic == t.resend(self.gate_id):
                resend = self._trusted(ResendRequest.model_validate_json(payload))
                if resend.gate_id != self.gate_id:
                    raise AuthError(f"resend request for gate {resend.gate_id}")
                self._cursor = min(self._cursor, max(resend.from_seq - 1, self.journal.committed_through))
                self._wake.set()
            elif topic == t.command(self.gate_id):
                command = self._trusted(GateCommand.model_validate_json(payload))
                if command.gate_id != self.gate_id:
                    raise AuthError(f"command for gate {command.gate_id}")
                await self._updated(self.state.apply_command(command), mode_changed=True)
            elif topic == t.denylist_delta:
                delta = DenyListDeltaMessage.model_validate_json(payload)
                delta = await asyncio.to_thread(self._trusted, delta)  # a big list: off the tap loop
                result = await asyncio.to_thread(self.state.apply_denylist_delta, delta)
                if result.outcome is Outcome.REFUSED:
                    self.snapshot_need.announced(delta.version)  # the retained snapshot will do
                await self._updated(result, UpdateKind.DENYLIST, self.state.denylist.version)
                await self._follow_snapshot()
            elif topic == t.denylist_snapshot:
                snapshot = DenyListSnapshotMessage.model_validate_json(payload)
                if snapshot.version <= self.state.denylist.version:
                    # not newer (a delta came first, or a retained copy older than the reference): it
                    # is never applied, so its signature is not worth checking (the whole list)
                    self.snapshots_skipped += 1
                else:
                    snapshot = await asyncio.to_thread(self._trusted, snapshot)
                    result = await asyncio.to_thread(self.state.apply_denylist_snapshot, snapshot)
                    await self._updated(result, UpdateKind.DENYLIST, self.state.denylist.version)
                await self._follow_snapshot()
            elif topic == t.denylist_snapshot_ref:
                await self._on_ref(self._trusted(DenyListSnapshotRef.model_validate_json(payload)))
            elif topic == t.fare_table:
                table = FareTableMessage.model_validate_json(payload)
                table = await asyncio.to_thread(self._trusted, table)  # up to 64 MiB: off the tap loop
                self._announced_fare_table = max(self._announced_fare_table, table.version)
                current = self.state.fare_table.version if self.state.fare_table else 0
                await self._updated(self.state.apply_fare_table(table), UpdateKind.FARE_TABLE, current)
            elif topic == t.actions:
                actions = self._trusted(ActionListMessage.model_validate_json(payload))
                await self._updated(self.state.apply_actions(actions))
        except AuthError as exc:
            await self._refuse(topic, str(exc))
        except ValidationError as exc:
            # Unverifiable, so untrusted: refused like a forgery, and never answered with a snapshot
            # request (anyone on a shared topic could otherwise make every gate ask at once).
            errors = exc.errors()
            await self._refuse(topic, f"malformed: {errors[0].get('msg') if errors else exc}")

    async def _on_ref(self, ref: DenyListSnapshotRef) -> None:
        """The beacon: a verified reference newer than the list held means a delta was missed (or is
        still on its way: one version behind waits DELTA_GRACE_S for it); the list comes from the
        retained snapshot, or past MQTT's size over HTTP."""
        take = self.snapshot_need.on_ref(ref.version, ref.size, self.state.denylist.version)
        if take is Take.SUBSCRIBE:
            await self._follow_snapshot()
        elif take is Take.SUBSCRIBE_AFTER_GRACE and (self._grace is None or self._grace.done()):
            self._grace = asyncio.get_running_loop().create_task(self._follow_after_grace())
        elif take is Take.FETCH and self.fetcher is not None:
            self.fetcher.offer(ref)
        elif take is Take.FETCH and not self._fetch_off_said:
            self._fetch_off_said = True
            log.warning("gate %s: deny-list version %d (%d ids) is only on HTTP and this gate has no "
                        "[backend] url: not fetched (said once); catching up by delta only",
                        self.gate_id, ref.version, ref.size)

    async def _follow_snapshot(self) -> None:
        """Subscribe to the retained deny-list snapshot while behind the newest announced version,
        unsubscribe once current (protocol.mqtt.follow): a current gate never receives the whole list."""
        client, held = self._client, self.state.denylist.version
        if client is None:
            return
        change = self.snapshot_need.step(held)
        if change is True:
            self.snapshot_subscriptions += 1
            log.info("gate %s: deny-list %d held, %d announced: taking the retained snapshot", self.gate_id,
                     held, self.snapshot_need.wanted)
            await client.subscribe(self.topics.denylist_snapshot, qos=1)
        elif change is False:
            await client.unsubscribe(self.topics.denylist_snapshot)

    async def _follow_after_grace(self) -> None:
        await asyncio.sleep(DELTA_GRACE_S)
        with contextlib.suppress(aiomqtt.MqttError):  # the connection went: the next one decides again
            await self._follow_snapshot()

    @property
    def _ack_bound(self) -> int:
        """The highest seq a genuine `Committed` can name: the highest seq this gate can have handed to
        the broker. Every tap journaled before this process started counts (the journal's last seq
        is persisted with each tap, and a previous run may have published them all just before it
        stopped, so the backend's retained ack, read right after a restart, may cover all of them);
        after that, only what this process has published. Not the journal's live last seq: a tap
        journaled since, not yet final or not yet sent, cannot be in the backend's database, and an
        ack over it would drop a row the controller may still rewrite."""
        return self._sent_through

    def _trusted(self, message: M) -> M:
        """`message` if one of the backend's keys signed it; AuthError otherwise (nothing is applied)."""
        self.verifier.check(message)
        return message

    async def _refuse(self, topic: str, why: str) -> None:
        """Count and report a message refused unverified (malformed, unsigned, badly signed) or
        impossible though signed (another gate's, an ack past what was sent): the status
        goes out at once, at most once a second, so a flood of forgeries cannot flood the broker."""
        self.auth_refused += 1
        self.auth_alarm = f"{topic.rsplit('/', 1)[-1]}: {why}"[:200]
        log.warning("gate %s: refused a message on %s: %s", self.gate_id, topic, why)
        if time.monotonic() - self._alarm_published >= 1.0:
            self._alarm_published = time.monotonic()
            await self.publish_status_soon()

    async def _updated(self, result: UpdateResult, kind: UpdateKind | None = None, have: int = 0,
                       mode_changed: bool = False) -> None:
        log.info("gate %s: %s %s", self.gate_id, result.outcome.value, result.detail)
        if result.outcome is Outcome.REFUSED:
            self.rejected_updates += 1
            if kind is not None:
                await self._ask_snapshot(kind, have)
        elif result.outcome is Outcome.APPLIED:
            if mode_changed and self.on_mode is not None:
                await self.on_mode()
            await self.publish_status()
