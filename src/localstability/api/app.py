"""The FastAPI application: routes, error envelope, services, OpenAPI."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from localstability import __version__
from localstability.api.deps import AppContext
from localstability.api.errors import install_error_handlers
from localstability.api.routes import admin, engines, generation, jobs, user
from localstability.config import Settings, load_settings
from localstability.inference.devices import resolve_device, resolve_dtype
from localstability.inference.loader import PipelineCache
from localstability.inference.worker import InferenceWorker
from localstability.jobs.local import LocalJobBackend
from localstability.mcp.http import McpEndpoint
from localstability.protocol import (
    Error,
    GenerationResponse,
    ImageToImageRequestBody,
    MaskingRequestBody,
    TextToImageRequestBody,
    UpscaleRequestBody,
)
from localstability.service.accounts import AccountService
from localstability.service.admin import AdminService
from localstability.service.billing import Billing
from localstability.service.generation import GenerationService
from localstability.service.housekeeping import housekeeping
from localstability.service.ratelimit import RateLimiter
from localstability.store.db import Database

log = logging.getLogger(__name__)

BOOTSTRAP_KEY_FILE = "admin-key.txt"


def build_context(settings: Settings) -> tuple[AppContext, Database, InferenceWorker]:
    database = Database(settings.sqlalchemy_url)
    device = resolve_device(settings.device)
    pipelines = PipelineCache(
        device,
        resolve_dtype(settings.dtype, device),
        settings.offline,
        settings.data_dir / "models",
    )
    worker = InferenceWorker(trim_memory=settings.trim_memory)
    context = AppContext(
        settings=settings,
        accounts=AccountService(
            database, RateLimiter(settings.rate_limit_requests, settings.rate_limit_window_s)
        ),
        generation=GenerationService(settings, pipelines),
        admin=AdminService(database, actor="admin-api"),
        jobs=LocalJobBackend(
            Billing(database, settings.billing, settings.runner_timeout_s),
            worker,
            max_queued=settings.max_queued_jobs,
            max_per_organization=settings.max_jobs_per_organization,
            result_ttl_s=settings.result_ttl_s,
            batch_window_s=settings.batch_window_ms / 1000,
        ),
    )
    return context, database, worker


async def stop_services(context: AppContext, database: Database, worker: InferenceWorker) -> None:
    """Let generations finish (within the grace period), then stop the worker and database."""
    await context.jobs.shutdown(context.settings.shutdown_grace_s)
    worker.shutdown()
    database.dispose()


def bootstrap_key(context: AppContext) -> None:
    """On an empty database, create a first key and write it (never log it) to the data dir."""
    settings = context.settings
    created = context.accounts.bootstrap(settings.bootstrap_credits)
    if created is None:
        return
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path = settings.data_dir / BOOTSTRAP_KEY_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(created.key + "\n")
    log.info(
        "created the first API key",
        extra={"key_file": str(path), "user_id": created.user_id, "org": created.organization_id},
    )


# The error answers of each operation, in the spec's envelope (`Error`). The spec lists
# 400/401/403/404/500 for generations and 401/500 for the rest; 402, 409, 429 and 503 are
# ours (docs/api.md), as are the generation-by-id and admin operations.
ERROR_STATUSES = {
    "400": "bad_request or another input error named by the spec (invalid_samples, ...)",
    "401": "unauthorized: API key missing or invalid",
    "402": "insufficient_balance: too few credits (extension)",
    "403": "permission_denied: not a member of the Organization given",
    "404": "not_found: no such engine, generation, organization or key",
    "409": "generation_cancelled or duplicate_generation_id (extension)",
    "410": "result_expired: the generation succeeded but its images are no longer kept",
    "429": "rate_limited or too_many_jobs, with Retry-After (extension)",
    "500": "server_error or generation_interrupted",
    "503": "queue_full or shutting_down (with Retry-After), engine_unavailable (extension)",
}
GENERATION_ERRORS = ("400", "401", "402", "403", "404", "409", "429", "500", "503")
READ_ERRORS = ("401", "403", "429", "500")  # 403: an Organization header not one's own
ACCOUNT_ERRORS = ("401", "429", "500")  # the account ignores the Organization header
# A generation by id answers, once it has ended, with the error its generation ended with.
RESULT_ERRORS = (*GENERATION_ERRORS, "410")
JOB_ERRORS = ("401", "403", "404", "429", "500")
# 404 also when the admin API is off (no admin_key).
ADMIN_ERRORS = ("400", "401", "404", "500")


def _error_statuses(path: str, method: str) -> tuple[str, ...]:
    if path.startswith("/admin/"):
        return ADMIN_ERRORS
    if path == "/v1/generation/{generation_id}" and method == "get":
        return RESULT_ERRORS
    if path.startswith("/v1/generation/{generation_id}"):
        return JOB_ERRORS
    if method == "post":
        return GENERATION_ERRORS
    return ACCOUNT_ERRORS if path == "/v1/user/account" else READ_ERRORS


def _document_errors(schema: dict[str, Any]) -> None:
    envelope = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            for status in _error_statuses(path, method):
                responses.setdefault(
                    status, {"description": ERROR_STATUSES[status], "content": envelope}
                )


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """FastAPI's schema plus the wire models that routes parse by hand."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title="localstability (Stability AI REST API v1)",
            version=__version__,
            routes=app.routes,
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (
            TextToImageRequestBody,
            ImageToImageRequestBody,
            MaskingRequestBody,
            UpscaleRequestBody,
            GenerationResponse,
            Error,
        ):
            model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(model_schema.pop("$defs", {}))
            components[model.__name__] = model_schema
        _document_errors(schema)
        # FastAPI documents a 422 validation error on every route; this API never sends one
        # (bad input is 400 with the spec's envelope).
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        app.openapi_schema = schema
        return schema

    return openapi


class RequestLog:
    """One structured log line per request. A plain ASGI middleware: Starlette's
    BaseHTTPMiddleware would hide a client's disconnect from the routes, which cancel the
    generation of a client that went away."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_logged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "ms": round((time.perf_counter() - started) * 1000, 1),
                },
            )


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI application for `settings` (default: from LOCALSTABILITY_CONFIG and env)."""
    settings = settings or load_settings()
    context, database, worker = build_context(settings)
    mcp = McpEndpoint(context)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with housekeeping(context.jobs.billing, settings):
            if settings.bootstrap_key:
                bootstrap_key(context)
            log.info("ready", extra={"engines": [e.id for e in context.generation.engines()]})
            async with mcp.running():  # MCP tool calls in flight get the grace period too
                yield
                await context.jobs.shutdown(settings.shutdown_grace_s)
        await stop_services(context, database, worker)

    app = FastAPI(
        title="localstability",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.context = context
    install_error_handlers(app)
    for router in (engines.router, user.router, generation.router, jobs.router, admin.router):
        app.include_router(router)
    # Every method (POST, GET, DELETE: Streamable HTTP); not in the REST API's OpenAPI.
    app.router.routes.append(Route("/mcp", mcp, include_in_schema=False))
    app.openapi = _openapi(app)  # type: ignore[method-assign]

    app.add_middleware(RequestLog)

    return app
