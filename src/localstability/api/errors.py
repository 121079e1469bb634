"""Every failure becomes the spec's {id, name, message} envelope; FastAPI's 422 never escapes."""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from localstability import errors, metrics
from localstability.errors import (
    UNEXPECTED_MESSAGE,
    describe_validation_errors,
    report_unexpected,
)

log = logging.getLogger(__name__)

GENERATION_ID = "Generation-Id"

_STATUS_NAMES = {
    400: "bad_request",
    401: "unauthorized",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    429: "rate_limited",
}


def envelope(
    status: int,
    name: str,
    message: str,
    headers: dict[str, str] | None = None,
    error_id: str | None = None,
) -> JSONResponse:
    """The spec's error body; `id` is unique per occurrence."""
    error_id = error_id or uuid.uuid4().hex
    metrics.error_answered(name)
    return JSONResponse(
        status_code=status,
        content={"id": error_id, "name": name, "message": message},
        headers=headers,
    )


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route serves at this request's path."""
    return [
        method
        for method in HTTP_METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in app.router.routes
        )
    ]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.ApiError)
    async def api_error(_request: Request, exc: errors.ApiError) -> JSONResponse:
        headers = dict(exc.headers)
        if exc.generation_id:
            headers[GENERATION_ID] = exc.generation_id
        return envelope(exc.status, exc.name, exc.message, headers or None)

    @app.exception_handler(RequestValidationError)
    async def request_validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return envelope(400, "bad_request", describe_validation_errors(list(exc.errors())))

    @app.exception_handler(ValidationError)
    async def model_validation(_request: Request, exc: ValidationError) -> JSONResponse:
        return envelope(400, "bad_request", describe_validation_errors(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        name = _STATUS_NAMES.get(exc.status_code, "server_error")
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            # Starlette names the methods of the first route on the path; list them all.
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(app, request))}
        return envelope(exc.status_code, name, str(exc.detail), headers)

    @app.exception_handler(ClientDisconnect)
    async def client_disconnect(_request: Request, _exc: ClientDisconnect) -> JSONResponse:
        # The client went away before its body was complete: its fault, not a server error
        # (no traceback logged); nobody is left to read this answer.
        return envelope(400, "bad_request", "the client disconnected before sending the whole body")

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        known = errors.outage(exc)
        if known is None:  # not registered after all
            return await unexpected(request, exc)
        return await api_error(request, known)

    # A service the deployment depends on is away (registered by the composition root before
    # the app is built): a named error, answered like any other (the connection stays open).
    for kind in errors.outage_kinds():
        app.add_exception_handler(kind, unavailable)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        error_id = report_unexpected(exc, path=request.url.path)
        return envelope(500, "server_error", UNEXPECTED_MESSAGE, error_id=error_id)
