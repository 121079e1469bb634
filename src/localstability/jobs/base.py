"""The job interface that every backend implements (in-process now; Celery later).

A job is one generation as plain data (`JobSpec`): who asked and who pays, the engine, what
it costs, and the work itself (`inference.tasks.TaskRun`), whose input images live in an
artifact store under the keys it names. It serialises to JSON and back, so another process,
on another machine, can run it with the same store. A backend admits it (reserving its credits
through a `Ledger`), queues it fairly, runs it, reports progress, cancels it on request, and
puts its results in the artifact store for `result_ttl_s`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, Field

from localstability import errors
from localstability.engines import Task
from localstability.inference.control import StepControl
from localstability.inference.tasks import TaskRun
from localstability.jobs.artifacts import Artifact
from localstability.protocol import GenerationStatus, GenerationStatusBody

GenerationKey = tuple[str, str]  # (organization, generation id): ids are an organization's own


@dataclass(frozen=True)
class JobSpec:
    """What a backend needs to admit and run one generation, as plain data."""

    id: str
    organization_id: str
    user_id: str
    key_id: int  # the API key that asked (0: none)
    engine_id: str
    run: TaskRun
    inputs: dict[str, str]  # input image name -> its key in the artifact store
    cost: int  # micro-credits
    steps: int = 0  # the progress total known before it starts (0: known once it runs)
    summary: dict[str, Any] = field(default_factory=dict)  # what its record keeps
    submitted_at: float = field(default_factory=time.time)  # wall-clock: admitted

    @property
    def key(self) -> GenerationKey:
        return self.organization_id, self.id

    @property
    def task(self) -> Task:
        return self.run.task

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "organization_id": self.organization_id,
            "user_id": self.user_id,
            "key_id": self.key_id,
            "engine_id": self.engine_id,
            "run": self.run.to_dict(),
            "inputs": self.inputs,
            "cost": self.cost,
            "steps": self.steps,
            "summary": self.summary,
            "submitted_at": self.submitted_at,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        return cls(**{**data, "run": TaskRun.from_dict(data["run"])})

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        return cls.from_dict(json.loads(text))


@dataclass
class Job:
    """A generation a backend holds while it is queued or running, and what it says of it."""

    spec: JobSpec
    status: GenerationStatus = GenerationStatus.QUEUED
    step: int = 0
    total: int = 0
    error: errors.ApiError | None = None
    settled: bool = False  # its end (success, failure, refund) is being recorded
    batch_size: int = 0  # generations in the pipeline call it ran in (0: not started)
    # Wall-clock times (time.time()): its pipeline call began, its images were made.
    started_at: float | None = None
    made_at: float | None = None
    control: StepControl = field(default_factory=StepControl)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def organization_id(self) -> str:
        return self.spec.organization_id

    @property
    def key(self) -> GenerationKey:
        return self.spec.key

    @property
    def queued_at(self) -> float:
        """When it was admitted (its spec's own stamp, which a worker sees too)."""
        return self.spec.submitted_at

    def timings(self) -> tuple[float | None, float | None]:
        """Seconds it waited in the queue and its pipeline call took (None where unknown)."""
        wait = None if self.started_at is None else max(0.0, self.started_at - self.queued_at)
        took = None
        if self.started_at is not None and self.made_at is not None:
            took = max(0.0, self.made_at - self.started_at)
        return wait, took


# -- the refusals and endings that every backend answers the same way ----------------------


def shutting_down() -> errors.ApiError:
    return errors.ShuttingDown(
        "the server is shutting down; retry on another server or later",
        headers={"Retry-After": "10"},
    )


def queue_full(max_queued: int) -> errors.ApiError:
    return errors.QueueFull(
        f"the generation queue is full ({max_queued} waiting); retry shortly",
        headers={"Retry-After": "5"},
    )


def too_many_jobs(organization_id: str, cap: int) -> errors.ApiError:
    return errors.TooManyJobs(
        f"organization {organization_id} has {cap} generations queued or running, the most it "
        "may; wait for one to finish",
        headers={"Retry-After": "1"},
    )


def duplicate_id(generation_id: str) -> errors.ApiError:
    return errors.DuplicateGenerationId(f"generation id {generation_id} is in use already")


def cancelled(generation_id: str) -> errors.ApiError:
    return errors.GenerationCancelled(
        f"generation {generation_id} was cancelled before it finished; its credits were refunded"
    )


def result_expired(generation_id: str, result_ttl_s: float) -> errors.ApiError:
    return errors.ResultExpired(
        f"generation {generation_id} succeeded, but its images are no longer kept (results "
        f"stay {result_ttl_s:g} s)"
    )


def worker_lost() -> errors.ApiError:
    """A scale-out job whose worker died and that no other worker took over."""
    return errors.GenerationInterrupted(
        "the generation was interrupted: the worker that ran it stopped and no other took it "
        "over; its credits were refunded"
    )


def queue_lost() -> errors.ApiError:
    """A scale-out job that was queued when Redis lost its data (the message with it)."""
    return errors.GenerationInterrupted(
        "the generation was interrupted: the job queue lost it (Redis restarted without its "
        "data) before a worker took it; its credits were refunded"
    )


class WorkerInfo(BaseModel):
    """A process that runs generations."""

    id: str = Field(description="The worker's runner id (its boot id).")
    host: str
    pid: int
    engines: list[str] = Field(description="The engines it serves (empty: every engine).")
    running: list[str] = Field(description="The generations it runs now.")
    seen_s_ago: float = Field(description="Seconds since it last said it lives.")


class QueueInfo(BaseModel):
    engine_id: str
    queued: int = Field(description="Generations waiting for a worker of this engine.")


class ClusterInfo(BaseModel):
    """What runs the deployment's generations: `GET /admin/v1/cluster`, `localstability
    cluster`."""

    backend: str = Field(description="local (in the server process) or celery.")
    workers: list[WorkerInfo]
    queues: list[QueueInfo] = Field(description="Every engine with a queue, waiting or not.")
    queued: int = Field(description="Generations waiting, in all.")
    running: int = Field(description="Generations running, in all.")


class Ledger(Protocol):
    """What a backend needs of billing: each call one transaction of the store's."""

    def reserve(self, spec: JobSpec) -> None:
        """Record the generation as queued and hold its cost: InsufficientBalance when short,
        DuplicateGenerationId when the organization has used its id already."""

    def start(self, *generations: GenerationKey) -> None:
        """They start, together in one pipeline call when there are several."""

    def succeed(self, generation: GenerationKey, artifacts: Sequence[Artifact]) -> bool:
        """Charge it for its `artifacts` (their finish reasons and what the output filter
        found go in its record); False when it had ended already (nothing moves)."""

    def end(
        self, generation: GenerationKey, status: GenerationStatus, error: errors.ApiError
    ) -> None:
        """Refund it: it failed or was cancelled, for `error`."""


class JobBackend(Protocol):
    async def submit(self, spec: JobSpec) -> Job:
        """Admit the job (its credits reserved) or raise: QueueFull, TooManyJobs,
        InsufficientBalance, DuplicateGenerationId, ShuttingDown."""

    async def wait(self, job: Job, disconnected: Callable[[], Awaitable[None]]) -> list[Artifact]:
        """The job's artifacts once it is done (or the error it ended with); cancels it if
        `disconnected()` returns first (it returns when the client goes away)."""

    async def get(self, job_id: str, organization_id: str) -> Job | None:
        """The organization's job `job_id` while it is queued or running."""

    async def result(self, job_id: str, organization_id: str) -> list[Artifact] | None:
        """A finished generation's artifacts while they are kept (None after result_ttl_s)."""

    def view(self, job: Job) -> GenerationStatusBody: ...

    async def cancel(
        self, job_id: str, organization_id: str, wait_s: float
    ) -> GenerationStatusBody | None:
        """Cancel a queued or running job of the organization (it is refunded) and give its
        status once it has ended, or after `wait_s`; None if no such job is in flight."""

    def recovered(self, generations: list[GenerationKey]) -> None:
        """These were refunded as interrupted (the process that ran them died): tell their
        watchers."""

    def events(self, job: Job) -> AsyncIterator[GenerationStatusBody]:
        """The job's state now, then at every change, until it has finished."""

    async def cluster(self, engines: list[str]) -> ClusterInfo:
        """The workers, and the queue of each of `engines`."""

    async def shutdown(self, grace_s: float) -> None:
        """Admit nothing more; let jobs finish within `grace_s`, then cancel the rest."""
