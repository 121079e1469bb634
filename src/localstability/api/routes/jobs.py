"""Generations by id (extension): status and result, an event stream, cancellation.

GET    /v1/generation/{id}          202 + status while queued or running; then the very
                                    response the sync call gives (JSON or PNG by Accept)
GET    /v1/generation/{id}/events   text/event-stream of status and progress until it ends
DELETE /v1/generation/{id}          cancel it (refunded); its final status
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Response
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from localstability.api.deps import Context, CurrentPrincipal, wants_png
from localstability.api.errors import GENERATION_ID
from localstability.api.routes.generation import GENERATION_RESPONSES, outcome_response
from localstability.protocol import GenerationStatusBody

router = APIRouter(tags=["generations (extension)"])


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
    png = wants_png(accept)
    return outcome_response(await context.generation.result(principal, generation_id, png), png)


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
    views = await context.generation.events(principal, generation_id)

    async def stream() -> AsyncIterator[dict[str, Any]]:
        async for view in views:
            yield {"event": "status", "data": json.dumps(view.model_dump(exclude_none=True))}

    return EventSourceResponse(stream(), ping=15, headers={GENERATION_ID: generation_id})


@router.delete("/v1/generation/{generation_id}", response_model=GenerationStatusBody)
async def cancel_generation(
    generation_id: str, context: Context, principal: CurrentPrincipal
) -> JSONResponse:
    """Cancel a queued or running generation and refund it; a finished one is left as it is."""
    view = await context.generation.cancel(principal, generation_id)
    return JSONResponse(view.model_dump(exclude_none=True), headers={GENERATION_ID: view.id})
