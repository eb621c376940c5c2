"""The operator dashboard and the commuter page, served by the backend itself.

Static HTML/CSS/JS shipped inside the package (no CDN, no build step): the pages talk to the REST
API under /api/v1 with the bearer token they got at login. The only server code here is what the board
needs and the API lacks: one read-only summary (taps per minute, today's revenue and denials per gate),
so the board polls a single cheap endpoint instead of downloading every tap. The gates' own health
figures (tap-to-open p50/p99, processing p99, alarm counts) come with the gates route, /api/v1/gates.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from .summary import router as summary_router

STATIC = Path(__file__).resolve().parent / "static"
ASSETS = "/dashboard/static"


def mount(app: FastAPI) -> None:
    """Serve the board at /, the commuter page at /commuter, assets and the summary under /dashboard.

    Safe to call twice on the same app: the second call does nothing (routes must not be doubled).
    """
    if getattr(app.state, "dashboard_mounted", False):
        return
    app.state.dashboard_mounted = True

    @app.get("/", include_in_schema=False)
    async def board() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/commuter", include_in_schema=False)
    async def commuter() -> FileResponse:
        return FileResponse(STATIC / "commuter.html", headers={"Cache-Control": "no-cache"})

    app.include_router(summary_router, prefix="/dashboard/api")
    app.mount(ASSETS, StaticFiles(directory=STATIC), name="dashboard-static")


__all__ = ["mount"]
