"""Deny-list versions and the current snapshot (JSON, or fare_core's binary snapshot), for operators;
and the binary snapshot for gates, authenticated by the gate's own MAC (`gate_snapshot`)."""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response, status
from pydantic import ValidationError
from sqlalchemy import select

from protocol.mqtt import (
    DENYLIST_FETCH_PATH,
    FETCH_GATE_HEADER,
    FETCH_MAC_HEADER,
    FETCH_MAX_SKEW_S,
    FETCH_TIME_HEADER,
    GateFetchAuth,
)

from ...ingest.authn import gate_keys
from ...tables import DenyListVersionRow, GateRow
from ..deps import DistributorDep, PageDep, SessionDep, SettingsDep, ViewerDep
from ..schemas import DenyListSnapshotPublic, DenyListVersionPublic

router = APIRouter(prefix="/denylist", tags=["deny-list"])


@router.get("/versions", response_model=list[DenyListVersionPublic])
async def list_versions(_: ViewerDep, session: SessionDep, page: PageDep) -> list[DenyListVersionRow]:
    rows = await session.execute(
        select(DenyListVersionRow)
        .order_by(DenyListVersionRow.version.desc())
        .limit(page.limit)
        .offset(page.offset)
    )
    return list(rows.scalars())


@router.get("/snapshot", response_model=DenyListSnapshotPublic)
async def snapshot(_: ViewerDep, distributor: DistributorDep) -> DenyListSnapshotPublic:
    denylist = await distributor.snapshot()
    return DenyListSnapshotPublic(
        version=denylist.version, checksum=denylist.checksum, card_ids=[f"{c:016x}" for c in denylist.ids()]
    )


@router.get(
    "/snapshot.bin", response_class=Response, responses={200: {"content": {"application/octet-stream": {}}}}
)
async def snapshot_bytes(_: ViewerDep, distributor: DistributorDep) -> Response:
    """fare_core's snapshot file (DenyList.from_bytes reads it): what a gate downloads past MQTT sizes."""
    denylist = await distributor.snapshot()
    return Response(
        denylist.to_bytes(),
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="denylist-{denylist.version}.bin"'},
    )


log = logging.getLogger("faregate.api.denylist")

FETCHES_PER_GATE = 6  # downloads one gate may start within FETCH_WINDOW_S; more get 429
FETCH_WINDOW_S = 600.0
_ROUTER_PATH = "/gate.bin"
assert DENYLIST_FETCH_PATH.endswith(router.prefix + _ROUTER_PATH)  # the path the gates are told


class FetchLimiter:
    """At most `limit` fetches per gate within `window_s`, in this process (an API process serves
    its share of the gates; the check runs after the MAC, so only the gate's key spends its budget)."""

    def __init__(self, limit: int = FETCHES_PER_GATE, window_s: float = FETCH_WINDOW_S) -> None:
        self.limit, self.window_s = limit, window_s
        self._times: dict[str, deque[float]] = {}

    def allow(self, gate: str) -> float | None:
        """None when `gate` may fetch now (counted); else the seconds until it may."""
        now = time.monotonic()
        times = self._times.setdefault(gate, deque())
        while times and now - times[0] > self.window_s:
            times.popleft()
        if len(times) >= self.limit:
            return self.window_s - (now - times[0])
        times.append(now)
        return None


def _refused(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Faregate-Gate"})


def _authenticated(request: Request, settings: SettingsDep, gate: str | None, sent_at: str | None,
                   mac: str | None) -> GateFetchAuth:
    """The request's `GateFetchAuth` from its headers, if its time is fresh and its MAC is the gate's;
    401 otherwise (missing, malformed, stale or forged), said in the log."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if not gate or not sent_at or not mac:
        raise _refused(f"{FETCH_GATE_HEADER}, {FETCH_TIME_HEADER} and {FETCH_MAC_HEADER} are required")
    try:
        auth = GateFetchAuth.model_validate_json(json.dumps(
            {"gate_id": gate, "method": request.method, "target": target, "time": sent_at, "mac": mac}))
    except ValidationError as exc:
        raise _refused(f"malformed gate authentication: {exc.errors()[0]['msg']}") from None
    skew = abs((datetime.now(UTC) - auth.time).total_seconds())
    if skew > FETCH_MAX_SKEW_S:
        log.warning("gate %s: deny-list fetch refused, its time is %.0f s off", auth.gate_id, skew)
        raise _refused(f"time {sent_at} is more than {FETCH_MAX_SKEW_S} s from the backend's clock")
    if not gate_keys(settings).valid(auth, auth.gate_id):
        log.warning("gate %s: deny-list fetch refused, bad MAC (from %s)", auth.gate_id,
                    request.client.host if request.client else "?")
        raise _refused(f"bad MAC for gate {auth.gate_id}")
    return auth


@router.get(
    _ROUTER_PATH, response_class=Response, responses={200: {"content": {"application/octet-stream": {}}}}
)
async def gate_snapshot(
    request: Request,
    settings: SettingsDep,
    session: SessionDep,
    distributor: DistributorDep,
    version: Annotated[int | None, Query(ge=0, le=2**32 - 1)] = None,
    gate: Annotated[str | None, Header(alias=FETCH_GATE_HEADER)] = None,
    sent_at: Annotated[str | None, Header(alias=FETCH_TIME_HEADER)] = None,
    mac: Annotated[str | None, Header(alias=FETCH_MAC_HEADER)] = None,
) -> Response:
    """The current deny-list as fare_core's binary snapshot, for a gate (no operator login): the
    headers carry its gate id, its time and its MAC over method, path and query, gate id and time
    (protocol.mqtt.GateFetchAuth, under the gate's own uplink key). Refused: no or a bad MAC, a time
    more than FETCH_MAX_SKEW_S off (401), a gate the backend has never heard from (403), more than
    FETCHES_PER_GATE fetches within FETCH_WINDOW_S (429). With `version`, only that version: 409 if
    the backend has moved on (the gate waits for the next signed reference instead of downloading a
    file it could not verify). X-Faregate-Version and X-Faregate-Sha256 say what the body is."""
    auth = _authenticated(request, settings, gate, sent_at, mac)
    if await session.get(GateRow, auth.gate_id) is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"unknown gate {auth.gate_id}")
    limiter: FetchLimiter | None = getattr(request.app.state, "gate_fetches", None)
    if limiter is None:
        limiter = request.app.state.gate_fetches = FetchLimiter()
    wait = limiter.allow(auth.gate_id)
    if wait is not None:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, f"gate {auth.gate_id}: too many fetches",
                            headers={"Retry-After": str(max(1, int(wait) + 1))})
    built = await distributor.snapshot_file()
    headers = {"X-Faregate-Version": str(built.version), "X-Faregate-Sha256": built.sha256}
    if version is not None and version != built.version:
        raise HTTPException(status.HTTP_409_CONFLICT, f"version {version} is not the current one "
                            f"({built.version})", headers=headers)
    return Response(built.data, media_type="application/octet-stream", headers=headers)
