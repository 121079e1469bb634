"""One hierarchy of errors; the api layer maps each to the spec's {id, name, message} envelope."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error a client sees: an HTTP status, the envelope's `name` and a human message."""

    status: int = 500
    name: str = "server_error"

    def __init__(
        self,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        generation_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        # The generation it is about, once there is one (REST: the Generation-Id header).
        self.generation_id = generation_id


class BadRequest(ApiError):
    status, name = 400, "bad_request"


class PayloadTooLarge(ApiError):
    """A request body over its API's limit (v2beta: 10 MiB)."""

    status, name = 413, "payload_too_large"


class InvalidSamples(BadRequest):
    name = "invalid_samples"


class InvalidHeightOrWidth(BadRequest):
    name = "invalid_height_or_width"


class InvalidPixelCount(BadRequest):
    name = "invalid_pixel_count"


class InvalidSdxlV1Dimensions(BadRequest):
    name = "invalid_sdxl_v1_dimensions"


class InvalidSdxlV222Dimensions(BadRequest):
    name = "invalid_sdxl_v222_dimensions"


class InvalidPrompts(BadRequest):
    """A prompt (negative ones too) that the prompt filter blocks: the hosted API's answer,
    word for word; which word is not said (the log says it)."""

    name = "invalid_prompts"

    def __init__(self) -> None:
        super().__init__("One or more of the prompts contains filtered words")


class InvalidLora(BadRequest):
    """A `loras` entry that can't name an adapter (a path, a URL, named twice), or an
    adapter file that does not load on the engine."""

    name = "invalid_lora"


class LoraNotFound(BadRequest):
    """A `loras` entry naming no adapter the engine offers."""

    name = "lora_not_found"


class Unauthorized(ApiError):
    status, name = 401, "unauthorized"


class PermissionDenied(ApiError):
    status, name = 403, "permission_denied"


class InsufficientBalance(ApiError):
    """Too few credits for the request (our choice: the hosted API's status, 402)."""

    status, name = 402, "insufficient_balance"


class NotFound(ApiError):
    status, name = 404, "not_found"


class EngineUnavailable(ApiError):
    """The engine exists but its weights can't be loaded (extension: not in the hosted API)."""

    status, name = 503, "engine_unavailable"


class ServerError(ApiError):
    status, name = 500, "server_error"


class InvalidFileSize(BadRequest):
    name = "invalid_file_size"


class InvalidMimeType(BadRequest):
    name = "invalid_mime_type"


class InvalidImageDimensions(BadRequest):
    name = "invalid_image_dimensions"


class InvalidMaskImage(BadRequest):
    name = "invalid_mask_image"


class RateLimited(ApiError):
    """Too many requests for one API key (the spec leaves the 429 body open: the envelope)."""

    status, name = 429, "rate_limited"


class TooManyJobs(ApiError):
    """An organization has as many generations queued or running as it may (extension)."""

    status, name = 429, "too_many_jobs"


class QueueFull(ApiError):
    """The server's generation queue is full (extension)."""

    status, name = 503, "queue_full"


class ShuttingDown(ApiError):
    """The server is stopping and admits no new generation (extension)."""

    status, name = 503, "shutting_down"


class QueueUnavailable(ApiError):
    """A scale-out deployment cannot reach its job queue (Redis) (extension)."""

    status, name = 503, "queue_unavailable"


class GenerationCancelled(ApiError):
    """The generation was cancelled (DELETE /v1/generation/{id}) before it finished."""

    status, name = 409, "generation_cancelled"


class DuplicateGenerationId(ApiError):
    """A client-chosen generation id that is in use already."""

    status, name = 409, "duplicate_generation_id"


class GenerationInterrupted(ApiError):
    """The server stopped (crashed, was killed) while the generation ran; it was refunded."""

    status, name = 500, "generation_interrupted"


class ResultExpired(ApiError):
    """The generation succeeded, but its images are no longer kept."""

    status, name = 410, "result_expired"


# Exceptions of a service the deployment depends on (e.g. Redis for the celery backend) that
# every front door answers with a named error instead of a 500; registered by the composition
# root, which is the one that knows the service.
_OUTAGES: dict[type[Exception], Callable[[Exception], ApiError]] = {}


def answer_outages(
    kinds: tuple[type[Exception], ...], make: Callable[[Exception], ApiError]
) -> None:
    """Have the front doors answer an exception of `kinds` with `make(exc)`."""
    for kind in kinds:
        _OUTAGES[kind] = make


def outage_kinds() -> tuple[type[Exception], ...]:
    """The exception types registered as outages."""
    return tuple(_OUTAGES)


def outage(exc: BaseException) -> ApiError | None:
    """The error a front door answers for `exc` if it is a registered outage, else None."""
    for kind, make in _OUTAGES.items():
        if isinstance(exc, kind):
            log.warning("service unavailable: %s", exc)
            return make(exc)
    return None


def error_class(name: str) -> type[ApiError] | None:
    """The error class whose envelope `name` is `name`."""
    pending: list[type[ApiError]] = [ApiError]
    while pending:
        cls = pending.pop()
        if cls.name == name:
            return cls
        pending.extend(cls.__subclasses__())
    return None


def describe_validation_errors(details: list[Any]) -> str:
    """'text_prompts.0.text: Field required; steps: ...' from pydantic's error list."""
    parts = []
    for detail in details:
        location = [str(p) for p in detail.get("loc", ()) if p not in ("body",)]
        where = ".".join(location) or "body"
        parts.append(f"{where}: {detail.get('msg', 'invalid value')}")
    return "; ".join(parts) or "invalid request"


UNEXPECTED_MESSAGE = "An unexpected server error occurred, please try again."


def report_unexpected(exc: Exception, **where: Any) -> str:
    """Log an unexpected exception under a new error id, the envelope's `id`; returns it."""
    error_id = uuid.uuid4().hex
    log.error("unexpected server error", exc_info=exc, extra={"error_id": error_id, **where})
    return error_id
