"""/mcp: the MCP tools over Streamable HTTP, behind the REST API's authentication.

Refusals carry the REST status and envelope, and a 401 the Bearer challenge of RFC 6750 (no
OAuth: the server takes API keys). The SDK answers each request as a server-sent event stream;
a `resources/read` (a full-size PNG, often over the 1 MiB that the Python SDK's clients take in
one event) is answered as one JSON body instead, which Streamable HTTP allows for any request.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mcp.server import ServerRequestContext
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send

from localstability import errors
from localstability.context import AppContext
from localstability.mcp.server import build_server
from localstability.mcp.tools import REFUSED, ImageTools, envelope_of
from localstability.store.accounts import Principal

# Room in one request for two images at the upload limit, base64-encoded, and the rest.
JSON_OVERHEAD_BYTES = 1024 * 1024
# The methods answered as one JSON body, and the largest request body read to find them.
JSON_ANSWERED = frozenset({"resources/read"})
PEEK_BYTES = 64 * 1024
REALM = "localstability"


def challenge(exc: errors.ApiError, authorization: str | None) -> dict[str, str]:
    """The WWW-Authenticate header of a 401 (RFC 6750): a bare challenge when no credentials
    came, else invalid_token with the reason. No resource_metadata: there is no OAuth here."""
    if not authorization:
        return {"WWW-Authenticate": f'Bearer realm="{REALM}"'}
    reason = exc.message.replace("\\", "").replace('"', "'").encode("ascii", "replace").decode()
    return {
        "WWW-Authenticate": f'Bearer realm="{REALM}", error="invalid_token", '
        f'error_description="{reason}"'
    }


def refusal(exc: errors.ApiError, authorization: str | None = None) -> JSONResponse:
    """A refused request: the REST API's status and headers (401 with its challenge, 429 with
    Retry-After...), and as body the JSON-RPC error that MCP clients read, carrying the REST
    envelope."""
    error = {
        "code": REFUSED,
        "message": f"{exc.name}: {exc.message}",
        "data": envelope_of(exc).model_dump(),
    }
    headers = dict(exc.headers or {})
    if exc.status == 401:
        headers.update(challenge(exc, authorization))
    return JSONResponse(
        {"jsonrpc": "2.0", "id": None, "error": error},
        status_code=exc.status,
        headers=headers or None,
    )


# Where OAuth clients look for metadata on a 401 (RFC 9728, RFC 8414, OpenID Connect).
OAUTH_DISCOVERY = (
    "/.well-known/oauth-protected-resource",
    "/.well-known/oauth-authorization-server",
    "/.well-known/openid-configuration",
)


async def no_oauth(_request: Request) -> JSONResponse:
    """The answer at each OAUTH_DISCOVERY path (and below it): a 404 with the REST envelope
    that says which credentials the server takes, so that a client which tries OAuth after
    a 401 stops there and shows why."""
    exc = errors.NotFound(
        "this server takes API keys, not OAuth: send Authorization: Bearer <your API key> "
        "(`localstability keys create` makes one)"
    )
    return JSONResponse(envelope_of(exc).model_dump(), status_code=404)


async def peek_method(scope: Scope, receive: Receive) -> tuple[str | None, Receive]:
    """The JSON-RPC method of a small POST (read whole, then replayed to the SDK through the
    receive returned); None for any other request, which is left unread."""
    length = Headers(scope=scope).get("content-length", "")
    if scope["method"] != "POST" or not length.isdigit() or int(length) > PEEK_BYTES:
        return None, receive
    messages: list[Message] = []
    body = b""
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        body += message.get("body", b"")
        if not message.get("more_body", False) or len(body) > PEEK_BYTES:
            break
    try:
        method = json.loads(body).get("method")
    except (ValueError, AttributeError):
        method = None

    async def replay() -> Message:
        return messages.pop(0) if messages else await receive()

    return method if isinstance(method, str) else None, replay


class JsonAnswer:
    """An ASGI send that turns the SDK's event-stream answer to one request into a JSON body:
    the first event that is a JSON-RPC response (it has a result or an error) is sent, with
    the stream's headers (Mcp-Session-Id...), and the rest of the stream is dropped. A
    response that is not an event stream passes unchanged."""

    SKIPPED_HEADERS = frozenset(
        {b"content-type", b"content-length", b"cache-control", b"connection", b"x-accel-buffering"}
    )

    def __init__(self, send: Send) -> None:
        self.send = send
        self.start: Message | None = None
        self.buffer = b""
        self.done = False
        self.passing = False

    async def __call__(self, message: Message) -> None:
        if self.done:
            return
        if message["type"] == "http.response.start":
            headers = dict(message.get("headers", []))
            if not headers.get(b"content-type", b"").startswith(b"text/event-stream"):
                self.passing = True
                await self.send(message)
            else:
                self.start = message
            return
        if self.passing or message["type"] != "http.response.body" or self.start is None:
            await self.send(message)
            return
        self.buffer += message.get("body", b"")
        *events, self.buffer = self.buffer.replace(b"\r\n", b"\n").split(b"\n\n")
        for event in events:
            data = b"\n".join(
                line[5:].removeprefix(b" ")
                for line in event.split(b"\n")
                if line.startswith(b"data:")
            )
            if data and self.is_response(data):
                await self.answer(data)
                return
        if not message.get("more_body", False):  # ended with no response: as it was
            await self.send(self.start)
            await self.send({"type": "http.response.body", "body": self.buffer})
            self.done = True

    @staticmethod
    def is_response(data: bytes) -> bool:
        try:
            payload = json.loads(data)
        except ValueError:
            return False
        return isinstance(payload, dict) and ("result" in payload or "error" in payload)

    async def answer(self, data: bytes) -> None:
        assert self.start is not None
        headers = [
            (name, value)
            for name, value in self.start.get("headers", [])
            if name.lower() not in self.SKIPPED_HEADERS
        ]
        headers += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(data)).encode()),
        ]
        await self.send({**self.start, "headers": headers})
        await self.send({"type": "http.response.body", "body": data})
        self.done = True


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
        authorization = headers.get("authorization")
        try:
            principal = await asyncio.to_thread(
                self.context.accounts.authenticate, authorization, headers.get("organization")
            )
            if self.sessions is None:
                raise errors.ShuttingDown("the server is not serving MCP sessions now")
        except errors.ApiError as exc:
            await refusal(exc, authorization)(scope, receive, send)
            return
        scope["user"] = KeyHolder(principal)
        method, receive = await peek_method(scope, receive)
        if method in JSON_ANSWERED:
            send = JsonAnswer(send)
        await self.sessions.handle_request(scope, receive, send)
