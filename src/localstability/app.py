"""The ASGI application of `localstability serve`: the REST API and, at /mcp, the MCP front
door, over one AppContext, with the process's lifespan (housekeeping, the first key, the MCP
session manager, the job backend's drain, then the services' stop)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.routing import Route

from localstability.api.app import rest_app
from localstability.config import Settings, load_settings
from localstability.context import bootstrap_key, build_context, stop_services
from localstability.mcp.http import OAUTH_DISCOVERY, McpEndpoint, no_oauth
from localstability.service.housekeeping import housekeeping

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI application for `settings` (default: from LOCALSTABILITY_CONFIG and env)."""
    settings = settings or load_settings()
    context, database, worker = build_context(settings)
    mcp = McpEndpoint(context)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with housekeeping(context.billing, settings, context.jobs):
            if settings.bootstrap_key:
                bootstrap_key(context)
            log.info("ready", extra={"engines": [e.id for e in context.generation.engines()]})
            async with mcp.running():  # MCP tool calls in flight get the grace period too
                yield
                await context.jobs.shutdown(settings.shutdown_grace_s)
        await stop_services(context, database, worker)

    app = rest_app(context, lifespan)
    # Every method (POST, GET, DELETE: Streamable HTTP); not in the REST API's OpenAPI.
    app.router.routes.append(Route("/mcp", mcp, include_in_schema=False))
    for path in OAUTH_DISCOVERY:  # MCP clients look there after a 401
        app.router.routes.append(Route(path + "{rest:path}", no_oauth, include_in_schema=False))
    return app
