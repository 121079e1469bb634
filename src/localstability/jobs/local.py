"""The in-process job backend: an asyncio admission queue, fair across organizations, in
front of one inference worker thread per device.

- Admission: a bounded queue (`QueueFull`, 503) and a cap per organization on jobs queued or
  running (`TooManyJobs`, 429), checked before any credit is reserved.
- Order: round robin over organizations (each gets one job per turn, first come first served
  within an organization), so one heavy user can't starve the rest (`jobs.fair`). A job goes
  to the inference thread only once its pipeline is loaded (`jobs.loads`): a load runs in the
  background while the jobs of loaded engines go on.
- Batching: the job that comes next takes along queued jobs that can share its pipeline call
  (equal `TaskRun.batch_key()`, up to its `batch_max_images`), taking turns across
  organizations the same way; `batch_window_s` lets a batch with room wait for more. Each job
  keeps its own seeds.
- Running: the worker thread reads the jobs' input images from the artifact store and runs
  their `TaskRun`s (`jobs.execute.run_batch`); PNG encoding, the charge and storing the
  results go on in a task of their own, so the device starts the next batch at once.
- Cancellation: a queued job leaves the queue at once; a running one stops at its next step
  (StepControl), or, in a batch with others still wanted, leaves the batch at once and its
  images are dropped. Either way its credits are refunded.
- A finished job leaves this backend: its results stay in the artifact store for
  `result_ttl_s`, and its record (status, cost, error) in the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from localstability import errors, metrics
from localstability.inference.cache import PipelineCache
from localstability.inference.control import BatchControl, JobCancelled, StepControl
from localstability.inference.diffusion import GeneratedImage
from localstability.inference.worker import InferenceWorker
from localstability.jobs import fair
from localstability.jobs.artifacts import (
    Artifact,
    ArtifactStore,
    get_result,
    put_result,
    result_prefix,
    to_artifacts,
)
from localstability.jobs.base import (
    ClusterInfo,
    GenerationKey,
    Job,
    JobSpec,
    Ledger,
    QueueInfo,
    WorkerInfo,
    cancelled,
    duplicate_id,
    queue_full,
    result_expired,
    shutting_down,
    too_many_jobs,
)
from localstability.jobs.execute import run_batch
from localstability.jobs.loads import Loads
from localstability.protocol import FINISHED, GenerationProgress, GenerationStatus
from localstability.protocol import GenerationStatusBody as View

log = logging.getLogger(__name__)


class LocalJobBackend:
    def __init__(
        self,
        ledger: Ledger,
        worker: InferenceWorker,
        pipelines: PipelineCache,
        store: ArtifactStore,
        *,
        max_queued: int = 256,
        max_per_organization: int = 64,
        result_ttl_s: float = 600.0,
        batch_window_s: float = 0.0,
    ) -> None:
        self.ledger = ledger
        self.worker = worker
        self.pipelines = pipelines
        self.store = store
        self.max_queued = max_queued
        self.max_per_organization = max_per_organization
        self.result_ttl_s = result_ttl_s
        self.batch_window_s = batch_window_s
        self._jobs: dict[GenerationKey, Job] = {}  # queued or running
        self._queues: OrderedDict[str, deque[Job]] = OrderedDict()
        self._admitting: dict[str, int] = {}
        self._running: list[Job] = []  # the batch on the device (or being gathered)
        self._completing: set[asyncio.Task[Any]] = set()  # encoding and charging; cancelling
        self._wakeup = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._closing = False
        self._subscribers: dict[GenerationKey, set[asyncio.Queue[View]]] = {}
        self.loads = Loads(pipelines, self._wakeup.set)

    # -- admission -------------------------------------------------------------------------

    def _queued_count(self) -> int:
        return sum(len(q) for q in self._queues.values()) + sum(self._admitting.values())

    def _in_flight(self, organization_id: str) -> int:
        running = sum(job.organization_id == organization_id for job in self._running)
        queued = len(self._queues.get(organization_id, ()))
        return queued + running + self._admitting.get(organization_id, 0)

    async def submit(self, spec: JobSpec) -> Job:
        if self._closing:
            raise shutting_down()
        org = spec.organization_id
        if self.max_queued and self._queued_count() >= self.max_queued:
            raise queue_full(self.max_queued)
        if self.max_per_organization and self._in_flight(org) >= self.max_per_organization:
            raise too_many_jobs(org, self.max_per_organization)
        if spec.key in self._jobs:
            raise duplicate_id(spec.id)
        self._admitting[org] = self._admitting.get(org, 0) + 1
        try:
            await asyncio.to_thread(self.ledger.reserve, spec)
        finally:
            self._admitting[org] -= 1
            if not self._admitting[org]:
                del self._admitting[org]
        job = Job(spec=spec)
        job.control = StepControl(self._progress_reporter(job))  # it reports on `job` itself
        self._jobs[spec.key] = job
        self._queues.setdefault(org, deque()).append(job)
        self._ensure_dispatcher()
        self._wakeup.set()
        self._publish_all_queued()
        return job

    # -- running ---------------------------------------------------------------------------

    def _ensure_dispatcher(self) -> None:
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())

    def _next_job(self) -> tuple[Job, bool | BaseException] | None:
        """The next job in the fair order (`jobs.fair`) whose pipeline is loaded (`jobs.loads`:
        a job whose pipeline is not waits in the queue while it loads in the background, and
        the inference thread serves the others); or one whose load failed, with its error."""
        self.loads.tidy(job for queue in self._queues.values() for job in queue)
        return fair.next_ready(self._queues, self.loads.ready)

    def _fill(self, batch: list[Job]) -> None:
        fair.fill(self._queues, batch, lambda job: self._take(batch, job))

    def _take(self, batch: list[Job], job: Job) -> None:
        batch.append(job)
        job.status = GenerationStatus.RUNNING
        self._publish(job)

    async def _gather(self, first: Job) -> list[Job]:
        """The batch that runs next: `first` and the queued jobs that fit with it, waiting up
        to batch_window_s for more while there is room."""
        batch = self._running = []
        self._take(batch, first)
        self._fill(batch)
        deadline = time.monotonic() + self.batch_window_s
        while fair.room(batch) > 0 and (remaining := deadline - time.monotonic()) > 0:
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            self._fill(batch)
        self._publish_all_queued()
        return batch

    async def _dispatch(self) -> None:
        while True:
            picked = self._next_job()
            if picked is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            job, ready = picked
            if isinstance(ready, BaseException):  # its pipeline failed to load
                await self._failed(job, ready)
                self._publish_all_queued()
                continue
            try:
                await self._execute(await self._gather(job))
            finally:
                self._running = []
                self.loads.release(job)

    def _progress_reporter(self, job: Job) -> Callable[[int, int], None]:
        loop = asyncio.get_running_loop()

        def report(step: int, total: int) -> None:  # on the inference thread
            if job.status == GenerationStatus.RUNNING:
                job.step, job.total = step, total
                # Wake the event loop only for a watcher: each wake-up takes the GIL from
                # the inference thread.
                if self._subscribers.get(job.key):
                    loop.call_soon_threadsafe(self._publish, job)

        return report

    async def _execute(self, batch: list[Job]) -> None:
        """Run the batch's inference; each job's completion (PNG encoding, charge, results)
        goes on in a task of its own, so the device starts the next batch at once."""
        for job in batch:
            if job.control.cancelled:  # cancelled while the batch was gathered
                await self._failed(job, JobCancelled())
        live = [job for job in batch if not job.control.cancelled]
        if not live:
            return
        control = live[0].control if len(live) == 1 else BatchControl([j.control for j in live])
        for job in live:
            job.batch_size = len(live)
        if len(live) > 1:
            log.info("batch", extra={"generations": [job.id for job in live]})

        def work() -> list[list[GeneratedImage]]:
            control.check()  # cancelled between dispatch and start
            self.ledger.start(*(job.key for job in live))
            started = time.time()
            for job in live:
                job.started_at = started
            images = run_batch([job.spec for job in live], self.store, self.pipelines, control)
            made = time.time()
            for job in live:
                job.made_at = made
            return images

        try:
            results = await self.worker.run(work)
        except BaseException as exc:
            for job in live:
                await self._failed(job, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for job, images in zip(live, results, strict=True):
            if job.settled:  # it left the batch when it was cancelled
                continue
            job.settled = True
            self._in_background(self._complete(job, images))

    def _in_background(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run `work` in a task of its own, which shutdown waits for."""
        task = asyncio.get_running_loop().create_task(work)
        self._completing.add(task)
        task.add_done_callback(self._completing.discard)

    async def _complete(self, job: Job, images: list[GeneratedImage]) -> None:
        try:
            artifacts = await asyncio.to_thread(to_artifacts, images, job.control.check)
            charged = await asyncio.to_thread(self.ledger.succeed, job.key, artifacts)
        except Exception as exc:
            job.settled = False
            await self._failed(job, exc)
            return
        wait, took = job.timings()
        if charged and wait is not None and took is not None:
            metrics.generation_made(
                job.spec.engine_id, job.spec.task.value, wait, took, len(artifacts)
            )
        prefix = result_prefix(*job.key)
        try:
            await asyncio.to_thread(put_result, self.store, prefix, artifacts, self.result_ttl_s)
        except Exception:  # charged and recorded: its answer is then 410 result_expired
            log.exception("results not stored", extra={"generation": job.id})
        self._finish(job, GenerationStatus.SUCCEEDED)

    async def _failed(self, job: Job, exc: BaseException) -> None:
        if job.settled:
            return
        if isinstance(exc, JobCancelled):
            await self._end(job, GenerationStatus.CANCELLED, cancelled(job.id))
        elif isinstance(exc, errors.ApiError):
            await self._end(job, GenerationStatus.FAILED, exc)
        elif isinstance(exc, Exception):
            log.exception("generation failed", extra={"generation": job.id}, exc_info=exc)
            error = errors.ServerError(f"generation failed: {exc}")
            await self._end(job, GenerationStatus.FAILED, error)
        else:  # the backend itself is being torn down
            await self._end(job, GenerationStatus.CANCELLED, cancelled(job.id))

    async def _end(self, job: Job, status: GenerationStatus, error: errors.ApiError) -> None:
        """A job that made no images: refund, record why, wake its waiters."""
        job.settled = True
        await asyncio.to_thread(self.ledger.end, job.key, status, error)
        job.error = error
        self._finish(job, status)

    def _finish(self, job: Job, status: GenerationStatus) -> None:
        job.status = status
        for key in job.spec.inputs.values():
            self.store.expire(key, 0)
        self._jobs.pop(job.key, None)
        job.done.set()
        self._publish(job)

    # -- waiting, reading, cancelling ------------------------------------------------------

    async def wait(self, job: Job, disconnected: Callable[[], Awaitable[None]]) -> list[Artifact]:
        gone = asyncio.ensure_future(disconnected())
        done = asyncio.ensure_future(job.done.wait())
        try:
            await asyncio.wait({gone, done}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # The waiter itself was cancelled (an MCP tool call cancelled, or its client
            # gone): nobody takes the images, so the job goes too, in a task of its own (a
            # cancelled task can't await the refund).
            if not job.done.is_set():
                log.info("waiter cancelled: cancelling", extra={"generation": job.id})
                self._in_background(self._cancel(job.id, job.organization_id))
            raise
        finally:
            gone.cancel()
            done.cancel()
        if not job.done.is_set():
            log.info("client went away: cancelling", extra={"generation": job.id})
            await self._cancel(job.id, job.organization_id)
            await job.done.wait()
        if job.error is not None:
            raise job.error
        artifacts = await self.result(job.id, job.organization_id)
        if artifacts is None:
            raise result_expired(job.id, self.result_ttl_s)
        return artifacts

    async def get(self, job_id: str, organization_id: str) -> Job | None:
        return self._held(job_id, organization_id)

    def _held(self, job_id: str, organization_id: str) -> Job | None:
        return self._jobs.get((organization_id, job_id))

    async def result(self, job_id: str, organization_id: str) -> list[Artifact] | None:
        return await asyncio.to_thread(
            get_result, self.store, result_prefix(organization_id, job_id)
        )

    def recovered(self, generations: list[GenerationKey]) -> None:
        """Nothing to tell: this process holds only its own jobs, which are alive."""

    def queue_position(self, job: Job) -> int | None:
        """How many jobs will start before this queued one (0: it is next)."""
        if job.status != GenerationStatus.QUEUED:
            return None
        return fair.position(self._queues, job)

    def view(self, job: Job) -> View:
        return View(
            id=job.id,
            status=job.status.value,
            progress=GenerationProgress(step=job.step, total=job.total or job.spec.steps),
            queue_position=self.queue_position(job),
            batch_size=job.batch_size or None,
        )

    async def cancel(self, job_id: str, organization_id: str, wait_s: float) -> View | None:
        job = await self._cancel(job_id, organization_id)
        if job is None:
            return None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(job.done.wait(), wait_s)
        return self.view(job)

    async def _cancel(self, job_id: str, organization_id: str) -> Job | None:
        job = self._held(job_id, organization_id)
        if job is None:
            return None
        if job.status == GenerationStatus.QUEUED:
            queue = self._queues.get(job.organization_id)
            if queue is not None and job in queue:
                queue.remove(job)
                if not queue:
                    del self._queues[job.organization_id]
                await self._end(job, GenerationStatus.CANCELLED, cancelled(job.id))
                self._publish_all_queued()
                return job
        if job.status == GenerationStatus.RUNNING and not job.done.is_set():
            # The worker stops at its next step (or prompt, or tile); one whose images are
            # being encoded stops before the next image. Either way it is refunded.
            job.control.cancel()
            if (
                not job.settled
                and job in self._running
                and any(not other.control.cancelled for other in self._running)
            ):  # the rest of its batch runs on: it leaves now, its images will be dropped
                await self._end(job, GenerationStatus.CANCELLED, cancelled(job.id))
        return job

    # -- events ----------------------------------------------------------------------------

    def _publish(self, job: Job) -> None:
        subscribers = self._subscribers.get(job.key)
        if not subscribers:
            return
        view = self.view(job)
        for queue in subscribers:
            queue.put_nowait(view)

    def _publish_all_queued(self) -> None:
        for queue in self._queues.values():
            for job in queue:
                self._publish(job)

    async def events(self, job: Job) -> AsyncIterator[View]:
        updates: asyncio.Queue[View] = asyncio.Queue()
        self._subscribers.setdefault(job.key, set()).add(updates)
        try:
            last = self.view(job)
            yield last
            while last.status not in FINISHED:
                last = await updates.get()
                yield last
        finally:
            subscribers = self._subscribers.get(job.key, set())
            subscribers.discard(updates)
            if not subscribers:
                self._subscribers.pop(job.key, None)

    # -- housekeeping ----------------------------------------------------------------------

    async def cluster(self, engines: list[str]) -> ClusterInfo:
        """This process is the one worker."""
        queued = [job for queue in self._queues.values() for job in queue]
        return ClusterInfo(
            backend="local",
            workers=[
                WorkerInfo(
                    id="local",
                    host=socket.gethostname(),
                    pid=os.getpid(),
                    engines=[],
                    running=[job.id for job in self._running],
                    seen_s_ago=0.0,
                )
            ],
            queues=[
                QueueInfo(
                    engine_id=engine, queued=sum(job.spec.engine_id == engine for job in queued)
                )
                for engine in engines
            ],
            queued=len(queued),
            running=len(self._running),
        )

    def pending(self) -> int:
        return self._queued_count() + len(self._running) + len(self._completing)

    async def shutdown(self, grace_s: float) -> None:
        self._closing = True
        if self.pending():
            log.info(
                "stopping: waiting for generations",
                extra={"pending": self.pending(), "grace_s": grace_s},
            )
        deadline = time.monotonic() + grace_s
        while self.pending() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for job in [j for q in self._queues.values() for j in q]:
            await self._cancel(job.id, job.organization_id)
        running = list(self._running)
        for job in running:
            job.control.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(job.done.wait() for job in running)), 60)
        if self._completing:
            await asyncio.gather(*self._completing, return_exceptions=True)
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
