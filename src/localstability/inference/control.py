"""Cooperative cancellation and progress for one running job.

The job's thread calls `step(done, total)` between units of work (diffusion steps, through
diffusers' `callback_on_step_end`; upscale tiles); a cancelled job raises `JobCancelled`
there, so it stops within one step. Any thread may call `cancel()`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

ProgressFn = Callable[[int, int], None]


class JobCancelled(Exception):
    """Raised inside a job whose cancellation was asked for."""


class StepControl:
    def __init__(self, on_progress: ProgressFn | None = None) -> None:
        self._cancelled = threading.Event()
        self._on_progress = on_progress

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def check(self) -> None:
        if self._cancelled.is_set():
            raise JobCancelled("the generation was cancelled")

    def step(self, done: int, total: int) -> None:
        """`done` of `total` units finished: report it, then stop here if cancelled."""
        if self._on_progress is not None:
            self._on_progress(done, total)
        self.check()

    def diffusers_callback(
        self, total: int, then: Callable[..., dict[str, Any]] | None = None
    ) -> Callable[..., dict[str, Any]]:
        """A `callback_on_step_end` that reports step i+1 of `total` (and calls `then`)."""

        def callback(pipeline: Any, index: int, timestep: Any, kwargs: dict[str, Any]) -> Any:
            if then is not None:
                kwargs = then(pipeline, index, timestep, kwargs)
            self.step(min(index + 1, total), total)
            return kwargs

        return callback


NO_CONTROL = StepControl()  # for callers that neither cancel nor watch progress
