"""Login (rate-limited) and logout for operator accounts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, HTTPException, Request, status
from sqlalchemy import delete, select

from ...tables import OperatorRow, TokenRow
from ..deps import Credentials, SessionDep, SettingsDep, ViewerDep, audit, client_address
from ..schemas import LoginRequest, TokenPublic
from ..security import Role, new_token, token_hash, verify_password

router = APIRouter(tags=["auth"])


@router.post("/login", response_model=TokenPublic, responses={401: {}, 429: {}})
async def login(
    body: LoginRequest, request: Request, session: SessionDep, settings: SettingsDep
) -> TokenPublic:
    client = client_address(request)  # X-Forwarded-For counts only from a trusted proxy
    limiter = request.app.state.login_limiter
    if not await limiter.allow(request.app.state.sessions, f"{client}|{body.username}"):
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, "too many login attempts; wait a minute")
    account = (
        await session.execute(select(OperatorRow).where(OperatorRow.username == body.username))
    ).scalar()
    if account is None or not account.active or not verify_password(body.password, account.password_hash):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong username or password")
    token, hashed = new_token()
    expires = datetime.now(UTC) + timedelta(seconds=settings.token_ttl_s)
    session.add(TokenRow(token_hash=hashed, operator_id=account.id, expires_at=expires))
    await audit(session, account.username, "login")
    await session.commit()
    return TokenPublic(access_token=token, expires_at=expires, role=Role(account.role))


@router.post("/logout", status_code=204)
async def logout(operator: ViewerDep, session: SessionDep, credentials: Credentials) -> None:
    assert credentials is not None
    await session.execute(delete(TokenRow).where(TokenRow.token_hash == token_hash(credentials.credentials)))
    await audit(session, operator.username, "logout")
    await session.commit()
