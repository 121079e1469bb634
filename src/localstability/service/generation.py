"""The generation use cases, one call each, for every front door (REST, MCP).

A call checks its request once (through `TaskBuilder`), prices it, puts its input images in
the artifact store, submits the job (a `JobSpec`: plain data) to the job backend, and then
either hands back the generation's id and status (`respond_async`) or waits for its images.
Generations by id (status, result, cancel, events) are answered from the backend while it
holds the job, else from the generation's record and the artifact store.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace

from pydantic import BaseModel

from localstability import errors
from localstability.config import Settings
from localstability.engines import EngineSpec, Task
from localstability.jobs.artifacts import INPUT_TTL_S, Artifact, ArtifactStore, input_key
from localstability.jobs.base import ClusterInfo, Job, JobBackend, JobSpec, result_expired
from localstability.protocol import (
    Engine,
    GenerationProgress,
    GenerationStatus,
    GenerationStatusBody,
    ImageToImageRequestBody,
    MaskingRequestBody,
    TextToImageRequestBody,
    UpscaleRequestBody,
)
from localstability.service.billing import Billing
from localstability.service.moderation import PromptScreen, output_filter
from localstability.service.records import request_summary
from localstability.service.tasks import TaskBuilder, Work
from localstability.store.accounts import Principal
from localstability.store.models import Generation

log = logging.getLogger(__name__)

# How long a cancel waits for a running generation to reach its next step and stop.
CANCEL_WAIT_S = 30.0

Progress = Callable[[GenerationStatusBody], Awaitable[None]]


async def forever() -> None:
    """A client that never goes away (one whose going away cancels its call instead)."""
    await asyncio.Event().wait()


@dataclass(frozen=True)
class Delivery:
    """How the caller takes a generation: the image or JSON, at once or by waiting."""

    png: bool = False  # the answer is one PNG: more than one sample is refused up front
    respond_async: bool = False  # answer with the id and status at once
    generation_id: str | None = None  # the client's choice (Generation-Id), else a new one
    disconnected: Callable[[], Awaitable[None]] = forever  # returns when the client is gone
    progress: Progress | None = None  # hears each step while the caller waits


@dataclass(frozen=True)
class Outcome:
    """A generation as the front door answers it: its status while it runs (at once, for an
    async request), or its images."""

    generation_id: str
    status: GenerationStatusBody | None = None
    artifacts: list[Artifact] | None = None
    # A sync generation's seconds in the queue and in its pipeline call (for the access log).
    queue_wait_s: float | None = None
    inference_s: float | None = None


def _with_id(exc: errors.ApiError, generation_id: str) -> errors.ApiError:
    exc.generation_id = generation_id
    return exc


class GenerationService:
    """Text-to-image, image-to-image, masking and upscale, and generations by id."""

    def __init__(
        self, settings: Settings, jobs: JobBackend, store: ArtifactStore, billing: Billing
    ) -> None:
        self.settings = settings
        self.jobs = jobs
        self.store = store
        self.billing = billing
        self.tasks = TaskBuilder(settings)
        self.prompts = PromptScreen(settings.safety)
        self.content_filter = output_filter(settings.safety)

    def engines(self) -> list[EngineSpec]:
        """The engines this deployment serves, in catalogue order."""
        return self.tasks.engines()

    def engine_list(self) -> list[Engine]:
        """The engines this deployment serves as the wire lists them, each with the LoRA
        adapters it offers."""
        return [e.as_wire(list(self.tasks.loras.offered(e))) for e in self.engines()]

    def engine(self, engine_id: str, task: Task | None = None) -> EngineSpec:
        """The enabled engine `engine_id` (404 otherwise), checked to support `task`: the
        front doors ask first, before they read a body, and pass the engine on."""
        return self.tasks.engine(engine_id, task)

    # -- the use cases ---------------------------------------------------------------------

    async def text_to_image(
        self,
        principal: Principal,
        engine: EngineSpec,
        body: TextToImageRequestBody,
        delivery: Delivery,
        server_sized: bool = False,
    ) -> Outcome:
        self.prompts.check(principal, body.text_prompts)
        work = await self.tasks.text_to_image(engine, body, delivery.png, server_sized)
        return await self._generate(principal, engine, body, work, delivery)

    async def image_to_image(
        self,
        principal: Principal,
        engine: EngineSpec,
        body: ImageToImageRequestBody,
        files: dict[str, bytes],
        delivery: Delivery,
        server_sized: bool = False,
    ) -> Outcome:
        self.prompts.check(principal, body.text_prompts)
        work = await self.tasks.image_to_image(engine, body, files, delivery.png, server_sized)
        return await self._generate(principal, engine, body, work, delivery)

    async def masking(
        self,
        principal: Principal,
        engine: EngineSpec,
        body: MaskingRequestBody,
        files: dict[str, bytes],
        delivery: Delivery,
    ) -> Outcome:
        self.prompts.check(principal, body.text_prompts)
        work = await self.tasks.masking(engine, body, files, delivery.png)
        return await self._generate(principal, engine, body, work, delivery)

    async def upscale(
        self,
        principal: Principal,
        engine: EngineSpec,
        body: UpscaleRequestBody,
        files: dict[str, bytes],
        delivery: Delivery,
        factor: int | None = None,
    ) -> Outcome:
        self.prompts.check(principal, body.text_prompts)
        work = await self.tasks.upscale(engine, body, files, delivery.png, factor)
        return await self._generate(principal, engine, body, work, delivery)

    async def _generate(
        self,
        principal: Principal,
        engine: EngineSpec,
        body: BaseModel,
        work: Work,
        delivery: Delivery,
    ) -> Outcome:
        generation_id = delivery.generation_id or uuid.uuid4().hex
        org = principal.organization_id
        inputs = {name: input_key(org, generation_id, name) for name in work.inputs}
        for name, data in work.inputs.items():
            await asyncio.to_thread(self.store.put, inputs[name], data, INPUT_TTL_S)
        spec = JobSpec(
            id=generation_id,
            organization_id=org,
            user_id=principal.user_id,
            key_id=principal.key_id,
            engine_id=engine.id,
            run=replace(work.run, content_filter=self.content_filter),
            inputs=inputs,
            cost=work.cost,
            steps=work.steps,
            summary=request_summary(body),
        )
        try:
            job = await self.jobs.submit(spec)
        except BaseException:
            for key in inputs.values():
                self.store.expire(key, 0)
            raise
        if delivery.respond_async:
            return Outcome(generation_id, status=self.jobs.view(job))
        watcher = (
            asyncio.ensure_future(self._report(job, delivery.progress))
            if delivery.progress
            else None
        )
        try:
            artifacts = await self.jobs.wait(job, delivery.disconnected)
        except errors.ApiError as exc:
            raise _with_id(exc, generation_id) from None
        finally:
            if watcher is not None and not watcher.done():
                if job.done.is_set():
                    await watcher  # every step is told before the result
                else:
                    watcher.cancel()
        wait, took = job.timings()
        return Outcome(generation_id, artifacts=artifacts, queue_wait_s=wait, inference_s=took)

    async def _report(self, job: Job, progress: Progress) -> None:
        try:
            async for view in self.jobs.events(job):
                await progress(view)
        except Exception:  # e.g. the caller's stream closed: the call itself will see that
            log.info("progress not sent", extra={"generation": job.id}, exc_info=True)

    async def cluster(self) -> ClusterInfo:
        """What runs the generations: the workers and each engine's queue."""
        return await self.jobs.cluster([engine.id for engine in self.engines()])

    # -- generations by id -----------------------------------------------------------------

    def _record(self, principal: Principal, generation_id: str) -> Generation:
        record = self.billing.record(generation_id, principal.organization_id)
        if record is None:
            raise errors.NotFound(
                f"no generation {generation_id} in organization {principal.organization_id}"
            )
        return record

    async def result(self, principal: Principal, generation_id: str, png: bool) -> Outcome:
        """A generation's status while it is queued or running; then its images (or the
        error it ended with) while they are kept, as the call that made it answered."""
        job = await self.jobs.get(generation_id, principal.organization_id)
        if job is not None:
            return Outcome(generation_id, status=self.jobs.view(job))
        record = await asyncio.to_thread(self._record, principal, generation_id)
        if record.status == GenerationStatus.SUCCEEDED:
            artifacts = await self.jobs.result(generation_id, principal.organization_id)
            if artifacts is None:
                raise _with_id(
                    result_expired(generation_id, self.settings.result_ttl_s),
                    generation_id,
                )
            if png and len(artifacts) > 1:
                raise _with_id(
                    errors.InvalidSamples(
                        f"this generation made {len(artifacts)} images; "
                        "use Accept: application/json"
                    ),
                    generation_id,
                )
            return Outcome(generation_id, artifacts=artifacts)
        if record.status in (GenerationStatus.FAILED, GenerationStatus.CANCELLED):
            raise _with_id(_recorded_error(record), generation_id)
        # Queued or running in another process (or a dead one not yet refunded).
        return Outcome(generation_id, status=_status_of(record))

    async def cancel(self, principal: Principal, generation_id: str) -> GenerationStatusBody:
        """Cancel a queued or running generation (it is refunded) and say how it ended; a
        finished one is left as it is."""
        view = await self.jobs.cancel(generation_id, principal.organization_id, CANCEL_WAIT_S)
        if view is None:
            record = await asyncio.to_thread(self._record, principal, generation_id)
            return _status_of(record)
        return view

    async def events(
        self, principal: Principal, generation_id: str
    ) -> AsyncIterator[GenerationStatusBody]:
        """The generation's status now, then at every change until it has ended (raises
        NotFound before the first, for an id the organization never used)."""
        job = await self.jobs.get(generation_id, principal.organization_id)
        if job is not None:
            return self.jobs.events(job)
        record = await asyncio.to_thread(self._record, principal, generation_id)
        return _once(_status_of(record))


async def _once(view: GenerationStatusBody) -> AsyncIterator[GenerationStatusBody]:
    yield view


def _status_of(record: Generation) -> GenerationStatusBody:
    return GenerationStatusBody(
        id=record.id,
        status=record.status.value,
        progress=GenerationProgress(step=0, total=0),
        batch_size=record.batch_size if record.started_at else None,
    )


def _recorded_error(record: Generation) -> errors.ApiError:
    """The error a failed or cancelled generation ended with, from its record."""
    if record.status == GenerationStatus.CANCELLED:
        return errors.GenerationCancelled(record.error or f"generation {record.id} was cancelled")
    cls: type[errors.ApiError] = errors.error_class(record.error_name or "") or errors.ServerError
    return cls(record.error or f"generation {record.id} failed")
