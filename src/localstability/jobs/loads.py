"""The local backend's loads: a job goes to the inference thread only once its pipeline is
loaded, so that a load in progress never holds up the jobs of engines already loaded.

The dispatcher asks `ready(job)` of each queued job in its fair order. A job whose pipeline is
loaded is held for it (not unloaded under the memory budget until `release`). A job whose
pipeline is not starts its load in the background, one such load at a time (two would chase
each other out of a small budget before their jobs ran), and waits in the queue; the loaded
pipeline is held for the jobs that wanted it until one of them runs, or none is left. A
failed load is given to the job that asked, which fails with it (refunded); the next job for
that engine tries again. ESRGAN models (small, and loaded with their fallback) load on the
inference thread when their job runs, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from localstability.inference.cache import Key, PipelineCache
from localstability.inference.loader import WeightSource
from localstability.inference.tasks import pipeline_of
from localstability.jobs.base import GenerationKey, Job

# What `ready` answers for a job whose pipeline is still loading.
LOADING = None


@dataclass
class _Prefetch:
    source: WeightSource
    future: Future[Any]


class Loads:
    """Which queued jobs can run now; the background load of one that can't yet."""

    def __init__(self, pipelines: PipelineCache, wake: Callable[[], None]) -> None:
        self.pipelines = pipelines
        self._wake = wake  # on the event loop: the dispatcher looks again
        self._prefetch: _Prefetch | None = None
        self._held: dict[GenerationKey, WeightSource] = {}

    def ready(self, job: Job) -> bool | BaseException | None:
        """True: `job` may run now (its pipeline held for it); LOADING: not yet; an exception:
        its pipeline failed to load (the job fails with it)."""
        source = pipeline_of(job.spec.run)
        if source is None:
            return True
        prefetch = self._prefetch
        if prefetch is not None and prefetch.source.cache_key == source.cache_key:
            if not prefetch.future.done():
                return LOADING
            self._prefetch = None
            error = prefetch.future.exception()
            if error is not None:
                return error
            self._held[job.key] = source  # the load's hold passes to the job
            return True
        if self.pipelines.hold(source):
            self._held[job.key] = source
            return True
        if prefetch is None:
            self._start(source)
        return LOADING

    def _start(self, source: WeightSource) -> None:
        loop = asyncio.get_running_loop()
        future = self.pipelines.prefetch(source, pin=True)
        self._prefetch = _Prefetch(source, future)
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._wake))

    def release(self, job: Job) -> None:
        """The job ran (or left): its pipeline's hold is given back."""
        source = self._held.pop(job.key, None)
        if source is not None:
            self.pipelines.release(source)

    def tidy(self, queued: Iterable[Job]) -> None:
        """A finished background load that no queued job wants any more (they were cancelled)
        is let go: its pipeline stays loaded, unheld."""
        prefetch = self._prefetch
        if prefetch is None or not prefetch.future.done():
            return
        wanted: set[Key] = set()
        for job in queued:
            source = pipeline_of(job.spec.run)
            if source is not None:
                wanted.add(source.cache_key)
        if prefetch.source.cache_key in wanted:
            return
        self._prefetch = None
        if prefetch.future.exception() is None:
            self.pipelines.release(prefetch.source)
