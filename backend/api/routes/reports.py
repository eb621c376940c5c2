"""Reports: ridership by station and hour, revenue by day / network / category (landed money only, from
the ledger's revenue accounts), where the rest of the money is, the ledger's invariants, denials, gate
latency."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from sqlalchemy import func, select

import fare_core

from ... import audit
from ...ledger import SUSPENSE, UNDELIVERED, account_kind
from ...tables import FareTableRow, LedgerEntryRow, PostingRow, TapRow
from ..deps import SessionDep, SettingsDep, ViewerDep
from ..schemas import AuditReport, CountRow, LatencyRow, LedgerReport

router = APIRouter(prefix="/reports", tags=["reports"])
Since = Annotated[datetime | None, Query()]
Until = Annotated[datetime | None, Query()]
REPORT_MAX_TAPS = 2_000_000


def _window(query, since: datetime | None, until: datetime | None):  # type: ignore[no-untyped-def]
    if since is not None:
        query = query.where(TapRow.time >= since)
    if until is not None:
        query = query.where(TapRow.time < until)
    return query


@router.get("/ridership", response_model=list[CountRow])
async def ridership(
    _: ViewerDep, session: SessionDep, settings: SettingsDep, since: Since = None, until: Until = None
) -> list[CountRow]:
    """Allowed entries per station and local hour."""
    query = _window(
        select(TapRow.station_id, TapRow.time).where(TapRow.allowed, TapRow.direction == 0), since, until
    ).limit(REPORT_MAX_TAPS)
    offset = timedelta(minutes=settings.service_utc_offset_min)
    counts: dict[tuple[int, str], int] = defaultdict(int)
    for station, time in (await session.execute(query)).all():
        counts[(station, (time + offset).strftime("%Y-%m-%d %H:00"))] += 1
    return [CountRow(keys={"station_id": s, "hour": h}, taps=n) for (s, h), n in sorted(counts.items())]


@router.get("/revenue", response_model=list[CountRow])
async def revenue(
    _: ViewerDep,
    session: SessionDep,
    settings: SettingsDep,
    by: Literal["day", "network", "category"] = "day",
    since: Since = None,
    until: Until = None,
) -> list[CountRow]:
    """Fen earned, grouped by service day, network or rider category: the ledger's revenue postings,
    so only landed money (a write whose landing is unknown sits in suspense, GET /reports/ledger).
    `taps` counts the entries. since/until bound the entries' (taps') time."""
    query = (
        select(PostingRow.account, PostingRow.amount, LedgerEntryRow.tap_id)
        .join(LedgerEntryRow, LedgerEntryRow.id == PostingRow.entry_id)
        .where(PostingRow.account.like("revenue:%"))
    )
    if since is not None:
        query = query.where(LedgerEntryRow.time >= since)
    if until is not None:
        query = query.where(LedgerEntryRow.time < until)
    rows = (await session.execute(query.limit(REPORT_MAX_TAPS))).all()
    categories: dict[str, str] = {}
    if by == "category":
        categories = await _categories(session, settings, [tap for _, _, tap in rows if tap is not None])
    sums: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for account, amount, tap_id in rows:
        _revenue, network, day = account.split(":", 2)
        key = {"day": day, "network": network}.get(by) or categories.get(tap_id or "", "unknown")
        sums[key][0] += 1
        sums[key][1] += int(amount)
    return [CountRow(keys={by: k}, taps=v[0], fen=v[1]) for k, v in sorted(sums.items())]


async def _categories(session: SessionDep, settings: SettingsDep, tap_ids: list[str]) -> dict[str, str]:
    """Each tap's rider category, read from the wallet it carried (named by the newest fare table)."""
    newest = select(FareTableRow).order_by(FareTableRow.version.desc()).limit(1)
    row = (await session.execute(newest)).scalar()
    names = fare_core.FareTable.from_bytes(bytes(row.artefact)).data.category_names if row is not None else ()
    sam = fare_core.Sam(bytes.fromhex(settings.sam_master_key))
    found: dict[str, str] = {}
    for start in range(0, len(tap_ids), 1000):
        chunk = tap_ids[start:start + 1000]
        for tap_id, card_id, wallet in (await session.execute(
            select(TapRow.tap_id, TapRow.card_id, TapRow.wallet_before).where(TapRow.tap_id.in_(chunk))
        )).all():
            try:
                record, _slot = fare_core.read_wallet(bytes(wallet), int(card_id, 16), sam)
            except fare_core.FareCoreError:
                continue
            found[tap_id] = names[record.category] if record.category < len(names) else str(record.category)
    return found


@router.get("/ledger", response_model=LedgerReport)
async def ledger_totals(_: ViewerDep, session: SessionDep) -> LedgerReport:
    """Revenue beside suspense (writes not yet known to have landed) and undelivered (paid or granted,
    not yet in a wallet), and every non-wallet account's balance."""
    rows = (await session.execute(
        select(PostingRow.account, func.sum(PostingRow.amount)).group_by(PostingRow.account)
    )).all()
    totals: dict[str, int] = defaultdict(int)
    accounts: dict[str, int] = {}
    overdrawn = 0
    for account, total in rows:
        totals[account_kind(account)] += int(total)
        if account_kind(account) != "wallet":
            accounts[account] = int(total)
        elif total < 0:
            overdrawn -= int(total)
    return LedgerReport(
        revenue=totals["revenue"], suspense=totals[SUSPENSE], undelivered=totals[UNDELIVERED],
        overdrawn=overdrawn, totals=dict(totals), accounts=dict(sorted(accounts.items())),
    )


@router.get("/audit", response_model=AuditReport)
async def ledger_audit(_: ViewerDep, session: SessionDep) -> AuditReport:
    """The ledger's invariants (backend/audit.py, the soak's own check): each count is 0 when all is
    well, and suspense is 0 once every gate has reported."""
    totals = await audit.account_totals(session)
    return AuditReport(
        unbalanced_entries=len(await audit.unbalanced_entries(session)),
        invalid_trips=len(await audit.invalid_trips(session)),
        head_mismatches=len(await audit.head_mismatches(session)),
        entries_without_postings=len(await audit.entries_without_postings(session)),
        suspense=totals.get("suspense", 0),
        totals=totals,
    )


@router.get("/denials", response_model=list[CountRow])
async def denials(
    _: ViewerDep, session: SessionDep, since: Since = None, until: Until = None
) -> list[CountRow]:
    """Denied taps per reason code."""
    query = _window(select(TapRow.reason, func.count()).where(TapRow.allowed.is_(False)), since, until)
    rows = (await session.execute(query.group_by(TapRow.reason).order_by(TapRow.reason))).all()
    return [
        CountRow(
            keys={
                "reason": int(r),
                "name": fare_core.Reason(r).name if r in fare_core.Reason._value2member_map_ else str(r),
            },
            taps=int(n),
        )
        for r, n in rows
    ]


@router.get("/latency", response_model=list[LatencyRow])
async def latency(
    _: ViewerDep, session: SessionDep, since: Since = None, until: Until = None
) -> list[LatencyRow]:
    """Decision latency per gate as the gates reported it."""
    query = _window(
        select(TapRow.gate_id, func.count(), func.avg(TapRow.latency_us), func.max(TapRow.latency_us)),
        since,
        until,
    )
    rows = (await session.execute(query.group_by(TapRow.gate_id).order_by(TapRow.gate_id))).all()
    return [
        LatencyRow(gate_id=g, taps=int(n), mean_us=int(a or 0), max_us=int(m or 0)) for g, n, a, m in rows
    ]
