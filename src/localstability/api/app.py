"""The REST application: routes, error envelope, OpenAPI, request log (no services: the
composition root, localstability.app, hands it an AppContext and a lifespan)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from localstability import __version__, metrics
from localstability.api.errors import install_error_handlers
from localstability.api.routes import admin, engines, generation, health, jobs, page, user, v2beta
from localstability.api.routes import metrics as metrics_route
from localstability.context import AppContext
from localstability.protocol import (
    Error,
    GenerationResponse,
    ImageToImageRequestBody,
    MaskingRequestBody,
    TextToImageRequestBody,
    UpscaleRequestBody,
)
from localstability.protocol_v2beta import (
    ErrorBody,
    GenerateRequest,
    ImageBody,
    Sd3Request,
    UltraRequest,
    UpscaleFastRequest,
)

log = logging.getLogger(__name__)

V2BETA_MODELS = (
    GenerateRequest,
    UltraRequest,
    Sd3Request,
    UpscaleFastRequest,
    ImageBody,
    ErrorBody,
)

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


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


# v2beta's errors, in its own body (`ErrorBody`: {id, name, errors}).
V2BETA_ERROR_STATUSES = {
    "400": "bad_request: a field, the body's type, an image",
    "401": "unauthorized: API key missing or invalid",
    "402": "payment_required: too few credits",
    "403": "content_moderation: the prompt filter refused a prompt (not charged); "
    "permission_denied: not a member of the Organization given",
    "409": "duplicate_generation_id: a Generation-Id in use (extension)",
    "413": "payload_too_large: a body over 10 MiB",
    "429": "rate_limit_exceeded",
    "500": "internal_error",
    "503": "engine_unavailable (the endpoint's engine is not served), queue_full, "
    "shutting_down (extension)",
}


def _document_errors(schema: dict[str, Any]) -> None:
    for path, operations in schema.get("paths", {}).items():
        v2beta = path.startswith("/v2beta/")
        body = "ErrorBody" if v2beta else "Error"
        envelope = {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}}
        texts = V2BETA_ERROR_STATUSES if v2beta else ERROR_STATUSES
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            for status in tuple(texts) if v2beta else _error_statuses(path, method):
                responses.setdefault(status, {"description": texts[status], "content": envelope})


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
            *V2BETA_MODELS,
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


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def route_template(scope: Scope) -> str | None:
    """The template of the route that served the request, e.g. /v1/generation/{id}."""
    path: str | None = getattr(scope.get("route"), "path", None)
    return path


def access_fields(
    scope: Scope, status: int, generation_id: str | None, started: float
) -> dict[str, object]:
    """The access-log line of a request: never its key, nor its prompts unless the operator
    asked for them (`log_prompts`)."""
    state = scope.get("state") or {}
    fields: dict[str, object] = {
        "method": scope["method"],
        "path": scope["path"],
        "route": route_template(scope),
        "status": status,
        "generation": generation_id,
        "organization": state.get("organization_id"),
        "engine": (scope.get("path_params") or {}).get("engine_id"),
        "queue_wait_ms": _ms(state.get("queue_wait_s")),
        "inference_ms": _ms(state.get("inference_s")),
        "ms": round((time.perf_counter() - started) * 1000, 1),
    }
    if "prompts" in state:  # only when the operator turned log_prompts on
        fields["prompts"] = state["prompts"]
    return fields


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
        status, generation_id = 0, None

        async def send_logged(message: Message) -> None:
            nonlocal status, generation_id
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    if name.lower() == b"generation-id":
                        generation_id = value.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            fields = access_fields(scope, status, generation_id, started)
            log.info("request", extra=fields)
            if status:  # 0: the client went away before any answer
                metrics.request_answered(scope["method"], route_template(scope), status)


def rest_app(context: AppContext, lifespan: Lifespan) -> FastAPI:
    """The REST API (v1, generations by id, admin) over `context`, its error envelope, its
    OpenAPI document and request log; `lifespan` runs around it (the composition root's)."""
    # Swagger UI at /docs and ReDoc at /redoc from assets in the package (fastapi-offline),
    # not from a CDN: the pages work on a machine without internet.
    app = FastAPIOffline(
        title="localstability",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url="/redoc",
        static_url="/docs/assets",
    )
    app.state.context = context
    install_error_handlers(app)
    routers = (
        *(engines.router, user.router, generation.router, jobs.router, admin.router),
        v2beta.router,
    )
    # The last three (health, metrics, the playground page): not in the OpenAPI document.
    for router in (*routers, health.router, metrics_route.router, page.router):
        app.include_router(router)
    app.openapi = _openapi(app)  # type: ignore[method-assign]

    app.add_middleware(RequestLog)

    return app
