"""`localstability mcp`: the MCP tools over stdio, for desktop assistants.

The process runs the same services as `localstability serve` (its own inference worker and
job backend, the configured database) and acts as one API key's user: every tool call
authenticates that key, so a revoked key stops working at once and credits are billed to
its organization.
"""

from __future__ import annotations

import asyncio
from typing import Any

from mcp.server import ServerRequestContext
from mcp.server.stdio import stdio_server

from localstability.config import Settings
from localstability.context import build_context, stop_services
from localstability.mcp.server import build_server
from localstability.mcp.tools import ImageTools
from localstability.service.accounts import AccountService
from localstability.service.housekeeping import housekeeping
from localstability.store.accounts import Principal


class KeyPrincipal:
    """The caller of every tool call: the process's API key, authenticated per call."""

    def __init__(self, accounts: AccountService, api_key: str, organization: str | None) -> None:
        self.accounts = accounts
        self.authorization = f"Bearer {api_key}"
        self.organization = organization

    def authenticate(self) -> Principal:
        """The key's principal, or the REST API's error (unauthorized, permission_denied)."""
        return self.accounts.authenticate(self.authorization, self.organization)

    async def __call__(self, _ctx: ServerRequestContext[Any, Any]) -> Principal:
        return await asyncio.to_thread(self.authenticate)


async def serve_stdio(settings: Settings, api_key: str, organization: str | None = None) -> None:
    """Serve the tools on stdin/stdout until the client closes them. The key is checked
    first: a key that is refused stops the process with the REST API's error."""
    context, database, worker = build_context(settings)
    try:
        caller = KeyPrincipal(context.accounts, api_key, organization)
        caller.authenticate()
        server = build_server(ImageTools(context), caller)
        async with (
            housekeeping(context.billing, settings, context.jobs),
            stdio_server() as (read_stream, write_stream),
        ):
            await server.run(read_stream, write_stream, server.create_initialization_options())
    finally:
        await stop_services(context, database, worker)
