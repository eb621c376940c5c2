"""The FastAPI application: routers under /api/v1, shared engine, MQTT publisher, first admin account."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from ..config import Settings
from ..dashboard import mount as mount_dashboard
from ..db import make_engine, make_sessionmaker
from ..distribution import Distributor
from ..migrate import upgrade
from ..publisher import Publisher
from ..tables import OperatorRow
from .limits import BodyLimit
from .routes import (
    actions,
    alarms,
    auth,
    commuter,
    denylist,
    fares,
    gates,
    operators,
    payments,
    phones,
    reports,
    summary,
    taps,
)
from .security import LoginLimiter, Role, TrustedProxies, hash_password

API = "/api/v1"
#: Routes anyone can call without a bearer token: they get the smallest body limit.
OPEN_PATHS = frozenset({f"{API}/login", f"{API}/payments/confirmations"})
#: The only routes that need big bodies (method, path): with a bearer header they get the large limit,
#: every other route the authenticated one (api/limits.py).
LARGE_BODY_ROUTES = frozenset({("POST", f"{API}/fare-tables")})


async def ensure_admin(sessions: async_sessionmaker, settings: Settings) -> None:  # type: ignore[type-arg]
    """Create the first admin account from the settings when there is no account at all."""
    async with sessions.begin() as session:
        if (await session.execute(select(OperatorRow.id).limit(1))).scalar() is None:
            session.add(
                OperatorRow(
                    username=settings.admin_username,
                    role=Role.ADMIN.value,
                    active=True,
                    password_hash=hash_password(settings.admin_password),
                )
            )


def create_app(
    settings: Settings | None = None,
    *,
    engine: AsyncEngine | None = None,
    publisher: Publisher | None = None,
    migrate: bool = True,
) -> FastAPI:
    settings = settings or Settings()
    owns_engine = engine is None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal engine
        engine = engine or make_engine(settings)
        if migrate:
            await upgrade(engine, settings)
        sessions = make_sessionmaker(engine)
        pub = publisher or Publisher(settings)
        app.state.settings = settings
        app.state.sessions = sessions
        app.state.distributor = Distributor(sessions, pub)
        app.state.login_limiter = LoginLimiter(settings.login_attempts_per_minute)
        await ensure_admin(sessions, settings)
        try:
            yield
        finally:
            if publisher is None:
                await pub.aclose()
            if owns_engine:
                await engine.dispose()

    # FastAPI's own /docs and /redoc load their scripts from a CDN (a blank page offline);
    # fastapi-offline serves the same pages from the Swagger UI and ReDoc files its package ships
    app: FastAPI = FastAPIOffline(
        title="faregate backend",
        version="0.1.0",
        lifespan=lifespan,
        static_url="/docs/assets",
        description="Operator and commuter API of the faregate fare-gate system. Money is integer fen.",
    )

    app.state.trusted_proxies = TrustedProxies(settings.trusted_proxies)  # a bad entry fails here
    app.add_middleware(
        BodyLimit,
        large_limit=settings.max_body_bytes,
        authenticated_limit=settings.max_authenticated_body_bytes,
        unauthenticated_limit=settings.max_unauthenticated_body_bytes,
        large_routes=LARGE_BODY_ROUTES,
        open_paths=OPEN_PATHS,
    )
    # No CORS middleware on purpose: the dashboard and the commuter page are served from this same
    # origin, so a browser on any other origin gets no Access-Control-Allow-* header (docs/security.md).

    @app.get(f"{API}/health", tags=["health"])
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    modules = (auth, operators, gates, taps, phones, denylist, fares, actions, reports, alarms, commuter)
    for module in (*modules, payments):
        app.include_router(module.router, prefix=API)
    app.include_router(summary.router, prefix="/dashboard/api")  # the board's one aggregate
    mount_dashboard(app)  # the operator board at /, the commuter page at /commuter
    return app
