"""/mcp: the MCP tools over Streamable HTTP, behind the REST API's authentication."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mcp.server import ServerRequestContext
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from localstability import errors
from localstability.context import AppContext
from localstability.mcp.server import build_server
from localstability.mcp.tools import ImageTools, envelope_of
from localstability.store.accounts import Principal

# Room in one request for two images at the upload limit, base64-encoded, and the rest.
JSON_OVERHEAD_BYTES = 1024 * 1024


# A JSON-RPC server error (the range -32000 to -32099 is the server's own): a request the REST
# API would refuse, with the REST envelope as its data.
REFUSED = -32000


def refusal(exc: errors.ApiError) -> JSONResponse:
    """A refused request: the REST API's status and headers (401, 429 with Retry-After...),
    and as body the JSON-RPC error that MCP clients read, carrying the REST envelope."""
    error = {
        "code": REFUSED,
        "message": f"{exc.name}: {exc.message}",
        "data": envelope_of(exc).model_dump(),
    }
    return JSONResponse(
        {"jsonrpc": "2.0", "id": None, "error": error},
        status_code=exc.status,
        headers=exc.headers or None,
    )


class KeyHolder(AuthenticatedUser):
    """The caller of one request to /mcp. The SDK ties each MCP session to the key (and
    user) that opened it; the tools bill `principal`, as the REST routes do."""

    def __init__(self, principal: Principal) -> None:
        super().__init__(
            AccessToken(
                token="",  # the key itself stays out of memory that lives on
                client_id=f"key-{principal.key_id}",
                subject=principal.user_id,
                scopes=[],
            )
        )
        self.principal = principal


async def request_principal(ctx: ServerRequestContext[Any, Any]) -> Principal:
    """The principal that authenticated the HTTP request carrying this MCP message."""
    user = ctx.request.scope.get("user") if ctx.request is not None else None
    if not isinstance(user, KeyHolder):
        raise errors.Unauthorized("missing authorization header")
    return user.principal


class McpEndpoint:
    """An ASGI app: every request (POST, GET or DELETE) is authenticated like a REST request
    (Authorization: Bearer KEY, Organization; the same rate limit) and refused with the
    REST envelope when it fails; the SDK's session manager serves the rest."""

    def __init__(self, context: AppContext) -> None:
        self.context = context
        self.server = build_server(ImageTools(context), request_principal)
        self.sessions: StreamableHTTPSessionManager | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Serve sessions, in the app's lifespan (a session manager runs only once: each
        lifespan gets its own)."""
        upload = self.context.settings.max_upload_bytes
        self.sessions = StreamableHTTPSessionManager(
            app=self.server,
            max_request_body_size=2 * 4 * (upload // 3 + 1) + JSON_OVERHEAD_BYTES,
        )
        try:
            async with self.sessions.run():
                yield
        finally:
            self.sessions = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        try:
            principal = await asyncio.to_thread(
                self.context.accounts.authenticate,
                headers.get("authorization"),
                headers.get("organization"),
            )
            if self.sessions is None:
                raise errors.ShuttingDown("the server is not serving MCP sessions now")
        except errors.ApiError as exc:
            await refusal(exc)(scope, receive, send)
            return
        scope["user"] = KeyHolder(principal)
        await self.sessions.handle_request(scope, receive, send)
