"""Typed dependencies (full-stack-fastapi-template style): session, settings, current operator, roles."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from ..config import Settings
from ..distribution import Distributor
from ..tables import AuditRow, OperatorRow, PhoneRow, TokenRow
from .security import Role, token_hash

bearer = HTTPBearer(auto_error=False)


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessions() as session:
        yield session


def get_distributor(request: Request) -> Distributor:
    return request.app.state.distributor  # type: ignore[no-any-return]


def client_address(request: Request) -> str:
    """The caller's address: the direct peer, or the address a configured trusted proxy reports."""
    peer = request.client.host if request.client else "?"
    return request.app.state.trusted_proxies.client(  # type: ignore[no-any-return]
        peer, request.headers.getlist("x-forwarded-for")
    )


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
DistributorDep = Annotated[Distributor, Depends(get_distributor)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]

UNAUTHORIZED = HTTPException(
    status.HTTP_401_UNAUTHORIZED, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
)


@dataclass(frozen=True)
class Operator:
    id: int
    username: str
    role: Role


async def current_operator(session: SessionDep, credentials: Credentials) -> Operator:
    if credentials is None:
        raise UNAUTHORIZED
    token = await session.get(TokenRow, token_hash(credentials.credentials))
    if token is None or token.expires_at <= datetime.now(UTC):
        raise UNAUTHORIZED
    account = await session.get(OperatorRow, token.operator_id)
    if account is None or not account.active:
        raise UNAUTHORIZED
    return Operator(account.id, account.username, Role(account.role))


def require(role: Role) -> Callable[..., Any]:
    async def check(operator: Annotated[Operator, Depends(current_operator)]) -> Operator:
        if operator.role.rank < role.rank:
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"needs the {role.value} role")
        return operator

    return check


ViewerDep = Annotated[Operator, Depends(require(Role.VIEWER))]
OperatorDep = Annotated[Operator, Depends(require(Role.OPERATOR))]
AdminDep = Annotated[Operator, Depends(require(Role.ADMIN))]


async def current_phone(session: SessionDep, credentials: Credentials) -> PhoneRow:
    """The commuter's own phone, found by the commuter token issued for it."""
    if credentials is None:
        raise UNAUTHORIZED
    from sqlalchemy import select

    phone = (
        await session.execute(
            select(PhoneRow).where(PhoneRow.commuter_token_hash == token_hash(credentials.credentials))
        )
    ).scalar()
    if phone is None:
        raise UNAUTHORIZED
    return phone


PhoneDep = Annotated[PhoneRow, Depends(current_phone)]


class Page:
    """limit/offset pagination with a cap from the settings."""

    def __init__(
        self,
        settings: SettingsDep,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
        offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
    ) -> None:
        self.limit = min(limit, settings.max_page_size)
        self.offset = offset


PageDep = Annotated[Page, Depends(Page)]


async def audit(session: AsyncSession, actor: str, action: str, target: str = "", detail: str = "") -> None:
    """Record a state-changing call (in the caller's transaction, so it commits with the change)."""
    session.add(
        AuditRow(
            time=datetime.now(UTC),
            actor=actor[:80],
            action=action[:80],
            target=target[:200],
            detail=detail[:4000],
        )
    )
