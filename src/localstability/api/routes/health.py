"""GET /healthz and GET /readyz (extensions): no key, not in the OpenAPI document."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from localstability.api.deps import Context
from localstability.protocol import HealthBody

router = APIRouter(include_in_schema=False)


@router.get("/healthz")
def healthz() -> HealthBody:
    """The process is alive (it answers)."""
    return HealthBody()


@router.get("/readyz")
async def readyz(context: Context) -> JSONResponse:
    """200 when the database and the job backend answer, else 503; the engines' weights."""
    body = await context.health.readiness()
    return JSONResponse(body.model_dump(), status_code=200 if body.status == "ready" else 503)
