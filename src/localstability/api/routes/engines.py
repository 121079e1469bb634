"""GET /v1/engines/list."""

from __future__ import annotations

from fastapi import APIRouter

from localstability.api.deps import Context, CurrentPrincipal
from localstability.protocol import Engine

router = APIRouter(tags=["v1/engines"])


@router.get("/v1/engines/list", response_model=list[Engine])
def list_engines(context: Context, _principal: CurrentPrincipal) -> list[Engine]:
    """The engines this deployment serves."""
    return context.generation.engine_list()
