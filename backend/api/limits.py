"""Request bodies limited while they stream in, chunked or not.

A check of Content-Length alone (what create_app did before) lets a chunked body through whole, and
FastAPI reads a JSON body completely before any dependency (the bearer-token check included) runs. This
ASGI middleware wraps `receive` and counts the bytes actually delivered; past the limit it raises a 413
HTTPException from inside `receive`, so nothing beyond the chunk that crossed the limit is ever asked of
the server. Why not an existing mechanism: uvicorn has no body limit, and Starlette's
RequestBodyLimitMiddleware / FastAPI's `max_body_size` exist only in recent releases (pyproject.toml's
lower bounds predate them) and set one limit per route, while here the limit also depends on whether
the caller presents a token.

Three limits, chosen from the method, the path and the headers alone (the token itself is checked only
after the body is read, so a made-up `Bearer x` must buy nothing much):

- `max_body_bytes` (8 MiB): only the routes that need big bodies (`large_routes`: the fare-table upload)
  and only with a bearer header;
- `max_authenticated_body_bytes` (64 KiB): every other route with a bearer header;
- `max_unauthenticated_body_bytes` (16 KiB): without a bearer header, and always on the routes anyone can
  call (login, the payment webhook), since those are open to the whole network without a token.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    """Raised from `receive` once the body passes the limit (an HTTPException, so FastAPI's body parsing
    passes it on unchanged and the exception middleware answers 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"body larger than {limit} bytes")


class BodyLimit:
    def __init__(
        self,
        app: ASGIApp,
        *,
        large_limit: int,
        authenticated_limit: int,
        unauthenticated_limit: int,
        large_routes: frozenset[tuple[str, str]],
        open_paths: frozenset[str],
    ) -> None:
        """`large_routes` are (method, path) pairs, matched exactly; `open_paths` are paths."""
        self.app = app
        self.large_limit = large_limit
        self.authenticated_limit = min(large_limit, authenticated_limit)
        self.unauthenticated_limit = min(self.authenticated_limit, unauthenticated_limit)
        self.large_routes = large_routes
        self.open_paths = open_paths

    def limit_for(self, scope: Scope) -> int:
        path = scope.get("path")
        if path in self.open_paths:
            return self.unauthenticated_limit
        if not any(
            name == b"authorization" and value[:7].lower() == b"bearer "
            for name, value in scope.get("headers", ())
        ):
            return self.unauthenticated_limit
        if (scope.get("method"), path) in self.large_routes:
            return self.large_limit
        return self.authenticated_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and (not value.isdigit() or int(value) > limit):
                await self._refuse(scope, receive, send, limit)
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:  # read outside FastAPI's exception handling (e.g. by another middleware)
            if started:
                raise
            await self._refuse(scope, receive, send, limit)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """413 with the connection closed after it, so the unread rest of the body is never read."""
        response = JSONResponse(
            {"detail": f"body larger than {limit} bytes"}, status_code=413, headers={"Connection": "close"}
        )
        await response(scope, receive, send)
