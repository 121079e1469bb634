"""The scale-out job backend of an API replica: jobs go to Celery workers on other processes
or machines, and any replica answers for any generation from the job board (Redis).

- Admission: the board's queue bound and per-organization cap (deployment-wide, one Redis
  script), then the credits reserved in the database, then the message to the engine's queue.
- Waiting, status, events: the board's entry and its channel; results from the shared
  artifact store.
- Cancellation: a queued job is taken off the board (compare-and-set: a worker that takes it
  at the same moment loses) and refunded at once; a running one gets the board's cancel key,
  which its worker checks between steps, and is refunded by that worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from celery import Celery
from redis.exceptions import RedisError

from localstability import errors
from localstability.jobs.artifacts import Artifact, ArtifactStore, get_result, result_prefix
from localstability.jobs.base import (
    ClusterInfo,
    GenerationKey,
    Job,
    JobSpec,
    cancelled,
    result_expired,
    shutting_down,
    worker_lost,
)
from localstability.jobs.board import BoardEntry, JobBoard, queue_unavailable
from localstability.jobs.celery_app import TASK, engine_queue, fair_priority
from localstability.jobs.delivered import WorkerLedger
from localstability.protocol import GenerationProgress, GenerationStatus
from localstability.protocol import GenerationStatusBody as View

log = logging.getLogger(__name__)

RETRY_S = 1.0  # between tries while Redis is away, and between reads of a record
GONE_WAIT_S = 30.0  # how long a waiter whose client went away waits for the job to stop


class CeleryJobBackend:
    def __init__(
        self,
        ledger: WorkerLedger,
        board: JobBoard,
        store: ArtifactStore,
        app: Celery,
        *,
        max_queued: int = 256,
        max_per_organization: int = 64,
        result_ttl_s: float = 600.0,
    ) -> None:
        self.ledger = ledger
        self.board = board
        self.store = store
        self.app = app
        self.max_queued = max_queued
        self.max_per_organization = max_per_organization
        self.result_ttl_s = result_ttl_s
        self._closing = False
        self._background: set[asyncio.Task[object]] = set()

    # -- admission -------------------------------------------------------------------------

    async def submit(self, spec: JobSpec) -> Job:
        if self._closing:
            raise shutting_down()
        rank = await asyncio.to_thread(
            self.board.admit, spec, self.max_queued, self.max_per_organization
        )
        try:
            await asyncio.to_thread(self.ledger.reserve, spec)
        except BaseException:
            await asyncio.to_thread(self.board.withdraw, spec.key)
            raise
        try:
            await asyncio.to_thread(
                self.app.send_task,
                TASK,
                args=[spec.to_json()],
                queue=engine_queue(spec.engine_id),
                task_id=self.board.member(spec.key),
                priority=fair_priority(rank),
            )
        except Exception as exc:  # the broker is unreachable: nothing will run it
            log.exception("job not queued", extra={"generation": spec.id})
            error = queue_unavailable(exc)
            await self._refund(spec.key, GenerationStatus.FAILED, error, (GenerationStatus.QUEUED,))
            raise error from None
        return Job(spec=spec, total=spec.steps)

    async def _refund(
        self,
        key: tuple[str, str],
        status: GenerationStatus,
        error: errors.ApiError,
        allowed: tuple[GenerationStatus, ...],
    ) -> bool:
        """End a job that no worker runs: on the board (if it is in `allowed`), then in the
        ledger (refunded once)."""
        moved = await asyncio.to_thread(
            self.board.move, key, allowed, status, error_name=error.name, error=error.message
        )
        if moved:
            await asyncio.to_thread(self.ledger.end, key, status, error)
        return moved

    # -- reading ---------------------------------------------------------------------------

    def _job(self, entry: BoardEntry) -> Job:
        job = Job(spec=JobSpec.from_json(entry.spec))
        self._update(job, entry)
        return job

    @staticmethod
    def _update(job: Job, entry: BoardEntry) -> None:
        job.status, job.step, job.total = entry.status, entry.step, entry.total
        job.batch_size = entry.batch_size
        job.started_at, job.made_at = entry.started, entry.made
        if entry.finished:
            job.error = None if entry.status == GenerationStatus.SUCCEEDED else entry.exception()
            job.done.set()

    async def get(self, job_id: str, organization_id: str) -> Job | None:
        entry = await self.board.aentry((organization_id, job_id))
        if entry is None or entry.finished or not entry.spec:
            return None
        return self._job(entry)

    async def result(self, job_id: str, organization_id: str) -> list[Artifact] | None:
        prefix = result_prefix(organization_id, job_id)
        return await asyncio.to_thread(get_result, self.store, prefix)

    def view(self, job: Job) -> View:
        return View(
            id=job.id,
            status=job.status.value,
            progress=GenerationProgress(step=job.step, total=job.total or job.spec.steps),
            queue_position=None,
            batch_size=job.batch_size or None,
        )

    async def events(self, job: Job) -> AsyncIterator[View]:
        async for entry in self.board.watch(job.key):
            self._update(job, entry)
            yield self.view(job)

    # -- waiting and cancelling ------------------------------------------------------------

    async def _until_done(self, job: Job) -> None:
        """Follow the job on the board until it ends. While Redis is away, try again each
        second; if the board lost the job (Redis restarted without its data), follow its
        record in the database instead."""
        while not job.done.is_set():
            try:
                async for entry in self.board.watch(job.key, steps=False):
                    self._update(job, entry)
                if not job.done.is_set():
                    await self._from_record(job)
            except RedisError:
                log.warning("job board unreachable; retrying", extra={"generation": job.id})
                await asyncio.sleep(RETRY_S)

    async def _from_record(self, job: Job) -> None:
        """Wait for the generation's record to end (checked each second)."""
        while True:
            status, name, message = await asyncio.to_thread(self.ledger.outcome, job.key)
            if status not in (GenerationStatus.QUEUED, GenerationStatus.RUNNING):
                entry = BoardEntry(job.key, status, error_name=name, error=message)
                self._update(job, entry)
                return
            await asyncio.sleep(RETRY_S)

    async def wait(self, job: Job, disconnected: Callable[[], Awaitable[None]]) -> list[Artifact]:
        gone = asyncio.ensure_future(disconnected())
        done = asyncio.ensure_future(self._until_done(job))
        try:
            await asyncio.wait({gone, done}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            done.cancel()
            if not job.done.is_set():
                log.info("waiter cancelled: cancelling", extra={"generation": job.id})
                self._in_background(self.cancel(job.id, job.organization_id, 0))
            raise
        finally:
            gone.cancel()
        if not done.done():
            log.info("client went away: cancelling", extra={"generation": job.id})
            await self.cancel(job.id, job.organization_id, 0)
            try:  # nobody reads the answer: wait only as long as a cancel may take
                await asyncio.wait_for(done, GONE_WAIT_S)
            except TimeoutError:
                raise cancelled(job.id) from None
        if job.error is not None:
            raise job.error
        artifacts = await self.result(job.id, job.organization_id)
        if artifacts is None:
            raise result_expired(job.id, self.result_ttl_s)
        return artifacts

    async def cancel(self, job_id: str, organization_id: str, wait_s: float) -> View | None:
        key = (organization_id, job_id)
        entry = await self.board.aentry(key)
        if entry is None or entry.finished or not entry.spec:
            return None
        job = self._job(entry)
        error = cancelled(job_id)
        if entry.status == GenerationStatus.QUEUED and await self._refund(
            key, GenerationStatus.CANCELLED, error, (GenerationStatus.QUEUED,)
        ):
            for input_key in job.spec.inputs.values():
                await asyncio.to_thread(self.store.expire, input_key, 0)
        else:  # running (or just taken by a worker): its worker stops at the next step
            await asyncio.to_thread(self.board.request_cancel, key)
        if wait_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._until_done(job), wait_s)
        else:
            latest = await self.board.aentry(key)
            if latest is not None:
                self._update(job, latest)
        return self.view(job)

    def _in_background(self, work: Awaitable[object]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- housekeeping ----------------------------------------------------------------------

    async def cluster(self, engines: list[str]) -> ClusterInfo:
        return await self.board.cluster({engine: engine_queue(engine) for engine in engines})

    def recovered(self, generations: list[GenerationKey]) -> None:
        self.board.interrupted(generations, worker_lost())

    async def shutdown(self, grace_s: float) -> None:
        """Admit nothing more. The jobs run on the workers and outlive this replica; its
        sync waiters are cut off by the server's own drain."""
        self._closing = True
        if self._background:
            await asyncio.wait(self._background, timeout=grace_s)
        await self.board.close()
