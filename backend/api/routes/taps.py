"""Taps and trips: filter, paginate, export as CSV and as TIDES fare_transactions; dead letters."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import StreamingResponse
from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from ... import tides
from ...tables import DeadLetterRow, TapRow, TripRow
from ..deps import PageDep, SessionDep, SettingsDep, ViewerDep
from ..schemas import CardIdStr, DeadLetterPublic, StationQuery, TapPublic, TripPublic

router = APIRouter(tags=["taps"])
EXPORT_MAX = 1_000_000
CSV_FIELDS = [
    "tap_id",
    "gate_id",
    "station_id",
    "gate_no",
    "seq",
    "card_id",
    "time",
    "direction",
    "mode",
    "allowed",
    "reason",
    "flags",
    "fare",
    "balance_before",
    "balance_after",
    "counter_before",
    "counter_after",
    "fare_table_version",
    "denylist_version",
    "action_id",
    "topup_applied",
    "latency_us",
    "reconciled",
    "trip_id",
]


def tap_filters(
    query: Select[Any],
    gate_id: str | None,
    station_id: int | None,
    card_id: str | None,
    since: datetime | None,
    until: datetime | None,
    allowed: bool | None,
    flagged: bool | None,
) -> Select[Any]:
    if gate_id is not None:
        query = query.where(TapRow.gate_id == gate_id)
    if station_id is not None:
        query = query.where(TapRow.station_id == station_id)
    if card_id is not None:
        query = query.where(TapRow.card_id == card_id)
    if since is not None:
        query = query.where(TapRow.time >= since)
    if until is not None:
        query = query.where(TapRow.time < until)
    if allowed is not None:
        query = query.where(TapRow.allowed == allowed)
    if flagged is True:
        query = query.where(TapRow.reconciled.is_not(None), TapRow.reconciled != "ok")
    elif flagged is False:
        query = query.where(TapRow.reconciled == "ok")
    return query


Since = Annotated[datetime | None, Query(description="UTC, inclusive")]
Until = Annotated[datetime | None, Query(description="UTC, exclusive")]
CardQuery = Annotated[CardIdStr | None, Query()]


@router.get("/taps", response_model=list[TapPublic])
async def list_taps(
    _: ViewerDep,
    session: SessionDep,
    page: PageDep,
    gate_id: str | None = None,
    station_id: StationQuery = None,
    card_id: CardQuery = None,
    since: Since = None,
    until: Until = None,
    allowed: bool | None = None,
    flagged: bool | None = None,
) -> list[TapRow]:
    query = tap_filters(select(TapRow), gate_id, station_id, card_id, since, until, allowed, flagged)
    query = query.order_by(TapRow.time.desc(), TapRow.tap_id).limit(page.limit).offset(page.offset)
    return list((await session.execute(query)).scalars())


@router.get(
    "/taps/export.csv", response_class=StreamingResponse, responses={200: {"content": {"text/csv": {}}}}
)
async def export_taps_csv(
    _: ViewerDep,
    session: SessionDep,
    gate_id: str | None = None,
    station_id: StationQuery = None,
    card_id: CardQuery = None,
    since: Since = None,
    until: Until = None,
) -> StreamingResponse:
    query = tap_filters(select(TapRow), gate_id, station_id, card_id, since, until, None, None)

    def row(tap: TapRow) -> list[Any]:
        return [
            tap.time.strftime("%Y-%m-%dT%H:%M:%SZ") if f == "time" else getattr(tap, f) for f in CSV_FIELDS
        ]

    return _csv(session, query, CSV_FIELDS, row, "taps.csv")


@router.get(
    "/taps/export/tides.csv", response_class=StreamingResponse, responses={200: {"content": {"text/csv": {}}}}
)
async def export_tides(
    _: ViewerDep,
    session: SessionDep,
    settings: SettingsDep,
    gate_id: str | None = None,
    station_id: StationQuery = None,
    since: Since = None,
    until: Until = None,
) -> StreamingResponse:
    """TIDES fare_transactions: every column of the schema in its order; passages, and the top-ups,
    refunds, adjustments and transfers the ledger delivered to wallets (docs/tides.md). Amounts in
    yuan; the service day starts at 04:00 local."""
    query = tap_filters(tides.export_query(), gate_id, station_id, None, since, until, None, None)
    day = settings.service_day
    return StreamingResponse(
        tides.fare_transactions_csv(session, query, day, EXPORT_MAX),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="fare_transactions.csv"'},
    )


def _csv(
    session: AsyncSession, query: Select[Any], header: list[str], row: Any, name: str
) -> StreamingResponse:
    async def lines() -> AsyncIterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        stream = await session.stream(query.order_by(TapRow.time, TapRow.tap_id).limit(EXPORT_MAX))
        async for tap in stream.scalars():
            writer.writerow(row(tap))
            if buffer.tell() > 64 * 1024:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    return StreamingResponse(
        lines(), media_type="text/csv", headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )


@router.get("/taps/{tap_id}", response_model=TapPublic, responses={404: {}})
async def get_tap(tap_id: str, _: ViewerDep, session: SessionDep) -> TapRow:
    row = await session.get(TapRow, tap_id)
    if row is None:
        raise HTTPException(404, "no such tap")
    return row


@router.get("/trips", response_model=list[TripPublic])
async def list_trips(
    _: ViewerDep,
    session: SessionDep,
    page: PageDep,
    card_id: CardQuery = None,
    state: str | None = None,
    since: Since = None,
    until: Until = None,
) -> list[TripRow]:
    query = select(TripRow)
    if card_id is not None:
        query = query.where(TripRow.card_id == card_id)
    if state is not None:
        query = query.where(TripRow.state == state)
    if since is not None:
        query = query.where(TripRow.entry_time >= since)
    if until is not None:
        query = query.where(TripRow.entry_time < until)
    query = query.order_by(TripRow.id.desc()).limit(page.limit).offset(page.offset)
    return list((await session.execute(query)).scalars())


@router.get("/dead-letters", response_model=list[DeadLetterPublic])
async def list_dead_letters(_: ViewerDep, session: SessionDep, page: PageDep) -> list[DeadLetterPublic]:
    rows = await session.execute(
        select(DeadLetterRow).order_by(DeadLetterRow.id.desc()).limit(page.limit).offset(page.offset)
    )
    return [
        DeadLetterPublic(
            id=r.id,
            received_at=r.received_at,
            topic=r.topic,
            payload_hex=r.payload[:4096].hex(),
            reason=r.reason,
        )
        for r in rows.scalars()
    ]


__all__ = ["CSV_FIELDS", "router"]
_ = UTC
