"""The job interface that every backend implements (in-process now; Celery later).

A job is one generation: a validated, priced request with the function that runs it on a
device. A backend admits it (reserving its credits), queues it fairly, runs it, reports
progress, cancels it on request and keeps its result for a while.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

from localstability import errors
from localstability.engines import EngineSpec, Task
from localstability.inference.control import StepControl
from localstability.inference.diffusion import GeneratedImage
from localstability.service.artifacts import Artifact
from localstability.store.accounts import Principal
from localstability.store.models import GenerationStatus

# Runs on the inference thread and returns the images; PNG encoding happens off that thread,
# so the next job's denoising starts at once.
RunFn = Callable[[StepControl], list[GeneratedImage]]
# Runs several jobs' parts as one batch; the images come back per part.
BatchRunFn = Callable[[list[Any], StepControl], list[list[GeneratedImage]]]


@dataclass(frozen=True)
class Batching:
    """How a job may share one pipeline call with other queued jobs."""

    key: Hashable  # jobs with equal keys can run together (same weights, task, size, steps...)
    images: int  # the images this job adds to a batch
    max_images: int  # the most images a batch of such jobs may make
    part: Any  # this job's parameters, one of the list given to `run`
    run: BatchRunFn


@dataclass
class JobSpec:
    """What a backend needs to admit and run one generation."""

    principal: Principal
    engine: EngineSpec
    task: Task
    parameters: dict[str, Any]  # kept in the generation record
    cost: int  # micro-credits
    run: RunFn  # called on the inference thread
    steps: int = 0  # the progress total known before it starts (0: known once it runs)
    id: str | None = None  # the client's choice (Generation-Id), else a new one
    batching: Batching | None = None  # None: the job always runs alone


@dataclass
class Job:
    """A generation a backend knows of, and what it has to say about it."""

    id: str
    organization_id: str
    spec: JobSpec
    status: GenerationStatus = GenerationStatus.QUEUED
    step: int = 0
    total: int = 0
    artifacts: list[Artifact] | None = None
    error: errors.ApiError | None = None
    finished: float | None = None  # time.monotonic() when it ended
    settled: bool = False  # its end (success, failure, refund) is being recorded
    batch_size: int = 0  # generations in the pipeline call it ran in (0: not started)
    control: StepControl = field(default_factory=StepControl)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def key(self) -> tuple[str, str]:
        """(organization, id): a generation id is its organization's own."""
        return self.organization_id, self.id

    def result(self) -> list[Artifact]:
        """The artifacts of a finished job, or the error it ended with."""
        if self.artifacts is not None:
            return self.artifacts
        if self.error is not None:
            raise self.error
        raise errors.ServerError(f"generation {self.id} has not finished")


@dataclass(frozen=True)
class JobView:
    """A job's state as clients see it (GET /v1/generation/{id}, the event stream)."""

    id: str
    status: str
    step: int
    total: int
    queue_position: int | None
    batch_size: int = 0

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "progress": {"step": self.step, "total": self.total},
        }
        if self.queue_position is not None:
            body["queue_position"] = self.queue_position
        if self.batch_size:
            body["batch_size"] = self.batch_size
        return body


class JobBackend(Protocol):
    async def submit(self, spec: JobSpec) -> Job:
        """Admit the job (its credits reserved) or raise: QueueFull, TooManyJobs,
        InsufficientBalance, DuplicateGenerationId, ShuttingDown."""

    async def wait(self, job: Job, disconnected: Callable[[], Awaitable[None]]) -> list[Artifact]:
        """The job's artifacts once it is done; cancels it if `disconnected()` returns first
        (it returns when the client goes away)."""

    def get(self, job_id: str, organization_id: str) -> Job | None:
        """The organization's job `job_id`, if this backend holds it."""

    def view(self, job: Job) -> JobView: ...

    async def cancel(self, job_id: str, organization_id: str) -> Job | None:
        """Cancel a queued or running job of the organization; None if there is none."""

    def events(self, job: Job) -> AsyncIterator[JobView]:
        """The job's state now, then at every change, until it has finished."""

    async def shutdown(self, grace_s: float) -> None:
        """Admit nothing more; let jobs finish within `grace_s`, then cancel the rest."""
