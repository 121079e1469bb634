"""Preloads: the engines (`preload` in the settings) whose pipelines a process loads in the
background at start, so that their first image costs no load time. The process answers
meanwhile; a request for an engine still loading waits for that load, not for another."""

from __future__ import annotations

import functools
import logging
from concurrent.futures import Future
from typing import Any

from localstability.config import Settings
from localstability.engines import EngineSpec, Family
from localstability.inference.cache import PipelineCache
from localstability.inference.loader import WeightSource
from localstability.service.tasks import weight_source

log = logging.getLogger(__name__)


def preload_sources(
    settings: Settings, engines: list[EngineSpec], served: list[str] | None = None
) -> list[WeightSource]:
    """The weights to preload: of the enabled `engines` that `preload` names (all of them for
    'all') and this process serves (`served`; None: all). ESRGAN upscalers (tens of MB) load
    on first use."""
    wanted = set(settings.preload) if settings.preload != "all" else None
    return [
        weight_source(settings, engine)
        for engine in engines
        if (wanted is None or engine.id in wanted)
        and (served is None or engine.id in served)
        and engine.family != Family.ESRGAN
    ]


def start_preloads(pipelines: PipelineCache, sources: list[WeightSource]) -> None:
    """Load `sources` in the background, one after another in their order (a failure is
    logged, and the next one loads: the engine then loads, or fails, on first use as without
    a preload)."""
    if not sources:
        return
    source, rest = sources[0], sources[1:]
    log.info("preloading", extra={"engine_id": source.engine_id})
    future = pipelines.prefetch(source)
    future.add_done_callback(functools.partial(_loaded, pipelines, source, rest))


def _loaded(
    pipelines: PipelineCache, source: WeightSource, rest: list[WeightSource], done: Future[Any]
) -> None:
    error = done.exception()
    if error is not None:
        log.warning("preload failed", extra={"engine_id": source.engine_id, "error": str(error)})
    else:
        log.info("preloaded", extra={"engine_id": source.engine_id})
    start_preloads(pipelines, rest)
