"""GET /metrics (extension): the Prometheus text format; no key, not in the OpenAPI document."""

from __future__ import annotations

from fastapi import APIRouter, Response

from localstability import errors, metrics
from localstability.api.deps import Context

router = APIRouter(include_in_schema=False)


@router.get("/metrics")
def scrape(context: Context) -> Response:
    """This process's counters and histograms, and the deployment's queue per engine."""
    if not context.settings.metrics:
        raise errors.NotFound("metrics are switched off on this server (metrics = false)")
    body, content_type = metrics.exposition(context.health.jobs_by_engine())
    return Response(body, media_type=content_type)
