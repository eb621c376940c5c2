"""Deny-list versions and the current snapshot (JSON, or fare_core's binary snapshot for gates)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from sqlalchemy import select

from ...tables import DenyListVersionRow
from ..deps import DistributorDep, PageDep, SessionDep, ViewerDep
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
