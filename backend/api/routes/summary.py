"""GET /dashboard/api/summary: what the live board shows that the REST API has no cheap call for.

Taps per minute over the last half hour, and per gate and per denial reason for the current service
day, computed with GROUP BY in the database so a 2-second poll stays cheap on a busy network. Reasons
come in words, Chinese and English, from the texts the gate's display shows (fare_core.reasons):
GET /dashboard/api/reasons gives every code's words once, for the pages' other tables. The station
names are stations.py's, included under the same prefix.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel
from sqlalchemy import case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

import fare_core
from fare_core.reasons import Flag, display_text, yuan

from ... import ledger
from ...chain import Landing
from ...config import Settings
from ...tables import FareTableRow, PostingRow, TapRow
from ..deps import SessionDep, SettingsDep, ViewerDep
from . import stations

router = APIRouter(tags=["dashboard"])
router.include_router(stations.router)  # GET /stations: one prefix for what the pages read

#: Bound on the taps read for the per-minute chart (one row per tap, a few columns).
CHART_MAX_TAPS = 200_000
RECENT_TAPS = 15


class MinuteCount(BaseModel):
    minute: datetime  # start of the minute, UTC
    allowed: int
    denied: int


class GateDay(BaseModel):
    gate_id: str
    taps: int
    denied: int
    fen: int  # charged at this gate today: its taps' fares, an unconfirmed write only once it landed
    last_tap: datetime | None
    mean_latency_us: int
    max_latency_us: int


class ReasonWords(BaseModel):
    """A reason code in words, as the gate's display says it (amounts left out: "" for plain OK)."""

    reason: int
    name: str  # the code's name, e.g. NO_ENTRY
    zh: str
    en: str


class ReasonCount(ReasonWords):
    taps: int


class RecentTap(BaseModel):
    tap_id: str
    gate_id: str
    station_id: int
    card_id: str
    time: datetime
    direction: int
    allowed: bool
    reason: int
    reason_name: str
    reason_zh: str  # what the gate's display showed, amounts included
    reason_en: str
    fare: int
    balance_after: int


class Summary(BaseModel):
    now: datetime
    service_day_start: datetime
    taps_today: int
    denied_today: int
    revenue_today_fen: int  # the service day's revenue postings: landed money only (docs/ledger.md)
    denials_today: dict[str, int]  # reason name -> taps
    denial_reasons: list[ReasonCount]  # the same, in words, most taps first
    per_minute: list[MinuteCount]
    gates: list[GateDay]
    recent: list[RecentTap]


def reason_name(code: int) -> str:
    return fare_core.Reason(code).name if code in fare_core.Reason._value2member_map_ else str(code)


#: Fen no real amount has: display_text() is formatted with it, then the amount and its label are cut.
_PLACEHOLDER_FEN = 987_654_321
_MARK = re.escape(yuan(_PLACEHOLDER_FEN))
_AMOUNT_ZH = re.compile(rf"(?:扣费|余额)?\s*{_MARK}\s*元")
_AMOUNT_EN = re.compile(rf"(?:Fare |Balance |fare )?¥{_MARK}")
_DASHES = re.compile(r"\s+-(?:\s+-)+\s+")


def _without_amounts(text: str, amount: re.Pattern[str]) -> str:
    text = _DASHES.sub(" - ", amount.sub("", text))
    return " ".join(text.split()).strip(" -")


def reason_words(code: int) -> ReasonWords:
    """The gate display's words for a reason without the rider's amounts: for counts and tables."""
    zh, en = display_text(code, _PLACEHOLDER_FEN, _PLACEHOLDER_FEN)
    return ReasonWords(reason=code, name=reason_name(code), zh=_without_amounts(zh, _AMOUNT_ZH),
                       en=_without_amounts(en, _AMOUNT_EN))


def service_day_start(now: datetime, settings: Settings) -> datetime:
    """UTC start of the service day holding `now` (network local time; the day starts at e.g. 04:00)."""
    local = now + timedelta(minutes=settings.service_utc_offset_min)
    start = local.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(
        minutes=settings.service_day_start_min
    )
    if local < start:
        start -= timedelta(days=1)
    return start - timedelta(minutes=settings.service_utc_offset_min)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: The network names of each fare table version (a table never changes under its version).
_NETWORKS: dict[int, tuple[str, ...]] = {}


async def networks(session: AsyncSession) -> set[str]:
    """Every network a revenue account can name: those of every fare table, and `unknown` (the
    processor's name for a tap whose table the backend lacks)."""
    versions = (await session.execute(select(FareTableRow.version))).scalars().all()
    missing = [v for v in versions if v not in _NETWORKS]
    if missing:
        rows = await session.execute(
            select(FareTableRow.version, FareTableRow.artefact).where(FareTableRow.version.in_(missing)))
        for version, artefact in rows.all():
            names = fare_core.FareTable.from_bytes(bytes(artefact)).data.network_names
            _NETWORKS[int(version)] = tuple(str(name) for name in names)
    return {"unknown"}.union(*(_NETWORKS.get(v, ()) for v in versions))


async def revenue_today(session: AsyncSession, now: datetime, settings: Settings) -> int:
    """The sum of today's revenue accounts (`revenue:<network>:<service day>`, service day as the
    processor dates it): money from writes known to have landed, never an unconfirmed write's. The
    accounts are named in full so the query reads the day's postings by the account index only."""
    service_day = settings.service_day
    day = service_day.of(now).isoformat()
    accounts = sorted(ledger.revenue(network, day) for network in await networks(session))
    total = await session.scalar(
        select(func.coalesce(func.sum(PostingRow.amount), 0)).where(PostingRow.account.in_(accounts)))
    return int(total or 0)


@router.get("/summary", response_model=Summary)
async def summary(
    _: ViewerDep,
    session: SessionDep,
    settings: SettingsDep,
    minutes: Annotated[int, Query(ge=1, le=240)] = 30,
) -> Summary:
    now = datetime.now(UTC)
    day_start = service_day_start(now, settings)
    denied = case((TapRow.allowed.is_(False), 1), else_=0)
    # a write whose landing is unknown, or that did not land, charged nothing (yet)
    charged = case(
        (or_(TapRow.flags.bitwise_and(int(Flag.UNCONFIRMED)) == 0,
             TapRow.reconciled == Landing.LANDED.value), TapRow.fare),
        else_=0,
    )
    per_gate = await session.execute(
        select(
            TapRow.gate_id,
            func.count(),
            func.sum(denied),
            func.coalesce(func.sum(charged), 0),
            func.max(TapRow.time),
            func.avg(TapRow.latency_us),
            func.max(TapRow.latency_us),
        )
        .where(TapRow.time >= day_start)
        .group_by(TapRow.gate_id)
        .order_by(TapRow.gate_id)
    )
    gates = [
        GateDay(
            gate_id=g,
            taps=int(n),
            denied=int(d or 0),
            fen=int(f or 0),
            last_tap=_utc(t) if t is not None else None,
            mean_latency_us=int(a or 0),
            max_latency_us=int(m or 0),
        )
        for g, n, d, f, t, a, m in per_gate.all()
    ]
    reasons = await session.execute(
        select(TapRow.reason, func.count())
        .where(TapRow.time >= day_start, TapRow.allowed.is_(False))
        .group_by(TapRow.reason)
        .order_by(TapRow.reason)
    )
    counts = [(int(r), int(n)) for r, n in reasons.all()]
    denials = {reason_name(r): n for r, n in counts}
    denial_reasons = [
        ReasonCount(**reason_words(r).model_dump(), taps=n) for r, n in sorted(counts, key=lambda c: -c[1])
    ]

    first_minute = (now - timedelta(minutes=minutes - 1)).replace(second=0, microsecond=0)
    buckets = {first_minute + timedelta(minutes=i): [0, 0] for i in range(minutes)}
    rows = await session.execute(
        select(TapRow.time, TapRow.allowed).where(TapRow.time >= first_minute).limit(CHART_MAX_TAPS)
    )
    for time, allowed in rows.all():
        bucket = buckets.get(_utc(time).replace(second=0, microsecond=0))
        if bucket is not None:
            bucket[0 if allowed else 1] += 1
    recent_rows = await session.execute(
        select(TapRow).order_by(TapRow.received_at.desc(), TapRow.tap_id).limit(RECENT_TAPS)
    )
    recent = [
        RecentTap(
            tap_id=t.tap_id,
            gate_id=t.gate_id,
            station_id=t.station_id,
            card_id=t.card_id,
            time=_utc(t.time),
            direction=t.direction,
            allowed=t.allowed,
            reason=t.reason,
            reason_name=reason_name(t.reason),
            reason_zh=zh,
            reason_en=en,
            fare=t.fare,
            balance_after=t.balance_after,
        )
        for t in recent_rows.scalars()
        for zh, en in [display_text(t.reason, t.fare, t.balance_after)]
    ]
    return Summary(
        now=now,
        service_day_start=day_start,
        taps_today=sum(g.taps for g in gates),
        denied_today=sum(g.denied for g in gates),
        revenue_today_fen=await revenue_today(session, now, settings),
        denials_today=denials,
        denial_reasons=denial_reasons,
        per_minute=[MinuteCount(minute=m, allowed=a, denied=d) for m, (a, d) in buckets.items()],
        gates=gates,
        recent=recent,
    )


@router.get("/reasons", response_model=list[ReasonWords])
async def reason_list(response: Response) -> list[ReasonWords]:
    """Every reason code in words (no amounts); open to anyone: the gates show them to everyone."""
    response.headers["Cache-Control"] = "no-cache"
    return [reason_words(code) for code in sorted(fare_core.Reason)]
