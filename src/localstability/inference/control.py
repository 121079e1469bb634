"""Cooperative cancellation and progress for running jobs.

The job's thread calls `step(done, total)` between units of work (diffusion steps, through
diffusers' `callback_on_step_end`; upscale tiles); a cancelled job raises `JobCancelled`
there, so it stops within one step. Any thread may call `cancel()`. A batch of jobs that run
as one pipeline call shares a `BatchControl`: every job sees the progress, and the run stops
once all of them are cancelled (one cancelled job leaves the batch; its images are dropped).
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

    def report(self, done: int, total: int) -> None:
        if self._on_progress is not None:
            self._on_progress(done, total)

    def step(self, done: int, total: int) -> None:
        """`done` of `total` units finished: report it, then stop here if cancelled."""
        self.report(done, total)
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


class BatchControl(StepControl):
    """The control of several jobs run together: cancelled once every member is."""

    def __init__(self, members: list[StepControl]) -> None:
        super().__init__()
        self.members = members

    def cancel(self) -> None:
        for member in self.members:
            member.cancel()

    @property
    def cancelled(self) -> bool:
        return all(member.cancelled for member in self.members)

    def check(self) -> None:
        if self.cancelled:
            raise JobCancelled("every generation of the batch was cancelled")

    def report(self, done: int, total: int) -> None:
        for member in self.members:
            member.report(done, total)


NO_CONTROL = StepControl()  # for callers that neither cancel nor watch progress
