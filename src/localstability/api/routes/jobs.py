"""Generations by id (extension): status and result, an event stream, cancellation.

GET    /v1/generation/{id}          202 + status while queued or running; then the very
                                    response the sync call gives (JSON or PNG by Accept)
GET    /v1/generation/{id}/events   text/event-stream of status and progress until it ends
DELETE /v1/generation/{id}          cancel it (refunded); its final status
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Response
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from localstability import errors
from localstability.api.deps import Context, CurrentPrincipal, wants_png
from localstability.api.routes.generation import (
    GENERATION_ID,
    GENERATION_RESPONSES,
    artifacts_response,
)
from localstability.jobs.base import Job, JobView
from localstability.protocol import GenerationStatusBody
from localstability.store.accounts import Principal
from localstability.store.models import GenerationStatus

router = APIRouter(tags=["generations (extension)"])

# How long DELETE waits for a running generation to reach its next step and stop.
CANCEL_WAIT_S = 30.0


def _not_found(generation_id: str, principal: Principal) -> errors.NotFound:
    return errors.NotFound(
        f"no generation {generation_id} in organization {principal.organization_id}"
    )


def _job(context: Context, generation_id: str, principal: Principal) -> Job:
    job = context.jobs.get(generation_id, principal.organization_id)
    if job is None:
        raise _not_found(generation_id, principal)
    return job


async def _from_record(context: Context, generation_id: str, principal: Principal) -> Response:
    """A generation this server holds no result for (kept past result_ttl_s, made before a
    restart, or by another server): what its database record says."""
    record = await asyncio.to_thread(
        context.jobs.billing.record, generation_id, principal.organization_id
    )
    if record is None:
        raise _not_found(generation_id, principal)
    headers = {GENERATION_ID: record.id}
    if record.status == GenerationStatus.SUCCEEDED:
        raise errors.ResultExpired(
            f"generation {record.id} succeeded, but its images are no longer kept "
            f"(results stay {context.settings.result_ttl_s:g} s)",
            headers=headers,
        )
    if record.status == GenerationStatus.CANCELLED:
        raise errors.GenerationCancelled(f"generation {record.id} was cancelled", headers=headers)
    if record.status == GenerationStatus.FAILED:
        name, _, message = (record.error or "server_error: failed").partition(": ")
        cls = errors.error_class(name) or errors.ServerError
        raise cls(message if cls.name == name else record.error or "failed", headers=headers)
    view = JobView(record.id, record.status.value, 0, 0, None)
    return JSONResponse(view.as_json(), status_code=202, headers=headers)


@router.get(
    "/v1/generation/{generation_id}", responses=GENERATION_RESPONSES, response_class=Response
)
async def generation_status(
    generation_id: str,
    context: Context,
    principal: CurrentPrincipal,
    accept: Annotated[str | None, Header()] = None,
) -> Response:
    """Status and progress while it runs; then its images (or its error), as the sync call."""
    job = context.jobs.get(generation_id, principal.organization_id)
    if job is None:
        return await _from_record(context, generation_id, principal)
    headers = {GENERATION_ID: job.id}
    if not job.done.is_set():
        return JSONResponse(context.jobs.view(job).as_json(), status_code=202, headers=headers)
    try:
        artifacts = job.result()
    except errors.ApiError as exc:
        exc.headers = {**exc.headers, **headers}
        raise
    return artifacts_response(artifacts, wants_png(accept), headers)


@router.get(
    "/v1/generation/{generation_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "`status` events, data a GenerationStatusBody, until it ends",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    },
)
async def generation_events(
    generation_id: str, context: Context, principal: CurrentPrincipal
) -> EventSourceResponse:
    """Server-sent events: `status` with {id, status, progress, queue_position} at each change,
    the last one when the generation has ended."""
    job = _job(context, generation_id, principal)

    async def stream() -> AsyncIterator[dict[str, Any]]:
        async for view in context.jobs.events(job):
            yield {"event": "status", "data": json.dumps(view.as_json())}

    return EventSourceResponse(stream(), ping=15, headers={GENERATION_ID: job.id})


@router.delete("/v1/generation/{generation_id}", response_model=GenerationStatusBody)
async def cancel_generation(
    generation_id: str, context: Context, principal: CurrentPrincipal
) -> JSONResponse:
    """Cancel a queued or running generation and refund it; a finished one is left as it is."""
    job = await context.jobs.cancel(generation_id, principal.organization_id)
    if job is None:
        raise _not_found(generation_id, principal)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(job.done.wait(), CANCEL_WAIT_S)
    return JSONResponse(context.jobs.view(job).as_json(), headers={GENERATION_ID: job.id})
