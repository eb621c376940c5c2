"""The operator dashboard and the commuter page, served by the backend itself.

Static HTML/CSS/JS shipped inside the package (no CDN, no build step): the pages talk to the REST
API under /api/v1 with the bearer token they got at login. What the pages need and the REST API lacks
is under /dashboard/api (api/routes/summary.py, included by create_app): a read-only summary (taps per
minute, today's revenue and denials per gate, so the board polls one cheap endpoint instead of
downloading every tap), and, open without a token, station names from the fare tables
(api/routes/stations.py) and every reason code in words as the gate's display says it. The gates' own
health figures (tap-to-open p50/p99, processing p99, alarm counts) come with /api/v1/gates.

Both pages fit a 390 px phone and a 1440 px desk, answer each action beside its control, and say
"backend unreachable since HH:MM:SS" (showing what they last had as stale) while the API does not answer.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"
ASSETS = "/dashboard/static"


def mount(app: FastAPI) -> None:
    """Serve the board at /, the commuter page at /commuter and the assets under /dashboard/static.

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

    app.mount(ASSETS, StaticFiles(directory=STATIC), name="dashboard-static")


__all__ = ["mount"]
