"""One delivery of a job to a scale-out worker: run it at most once to its end, whatever the
broker does.

Celery delivers at least once (a job whose worker died is delivered again, and a slow one may
be too), so a delivery first takes the job on the board (queued, or running under a worker
that died, -> running) and then claims it in the database, which is the truth: a job that has
ended (charged, refunded, cancelled) or that a live worker runs is not run again. Then it runs
exactly as in the embedded server (`execute`), with its steps published on the board and a
cancel from any replica seen between steps; the charge or the refund is one conditional
database transaction, so money moves once however often the job is delivered.

Batching: a delivered job whose run can share a pipeline call takes along the jobs queued on
the board that fit with it (equal batch key, up to its `batch_max_images`; one per
organization per turn, oldest first, as the embedded backend does), each taken on the board
and claimed in the database the same way. Their own messages, delivered later, find them
running or ended and do nothing.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Protocol

from redis.exceptions import RedisError

from localstability import errors, metrics
from localstability.inference.cache import PipelineCache
from localstability.inference.control import JobCancelled, StepControl
from localstability.inference.diffusion import GeneratedImage
from localstability.jobs.artifacts import ArtifactStore, put_result, result_prefix, to_artifacts
from localstability.jobs.base import GenerationKey, JobSpec, Ledger, cancelled
from localstability.jobs.board import JobBoard
from localstability.jobs.execute import run_batch
from localstability.protocol import GenerationStatus

log = logging.getLogger(__name__)

QUEUED, RUNNING = GenerationStatus.QUEUED, GenerationStatus.RUNNING
# The outcome of a delivery whose job a worker holds that has not yet been seen dead: it is
# delivered again once that worker would have been (a live one will have finished it by then,
# or still holds it).
RUNNING_ELSEWHERE = "running elsewhere"
ENDED_BEFORE = "ended before it ran"
GATHER_EVERY_S = 0.05  # how often a batch with room looks for more during its window


class WorkerLedger(Ledger, Protocol):
    """What a worker needs of billing besides the embedded backend's."""

    def claim(self, generation: GenerationKey) -> bool:
        """queued, or running under a worker that is dead, -> running under this worker;
        False when the generation has ended or a live worker runs it."""

    def batched(self, *generations: GenerationKey) -> None:
        """Generations this worker claimed run together in one pipeline call."""

    def outcome(self, generation: GenerationKey) -> tuple[GenerationStatus, str | None, str]:
        """The generation's status in the database, its error's name and message."""


@dataclass
class Deliveries:
    """What a worker runs its deliveries with; `running` is the generations in hand."""

    ledger: WorkerLedger
    board: JobBoard
    store: ArtifactStore
    pipelines: PipelineCache
    result_ttl_s: float
    batch_window_s: float = 0.0
    running: list[str] = field(default_factory=list)

    def run(self, spec: JobSpec) -> str:
        """Run one delivery of `spec` (and the queued jobs it batches with); returns what
        became of it (for the log)."""
        refused = self._take(spec, (QUEUED, RUNNING))
        if refused is not None:
            return refused
        batch = self._gather(spec)
        self.running = [member.id for member in batch]
        try:
            outcomes = Batched(self, batch).run()
        finally:
            self.running = []
        return outcomes[spec.id]

    # -- batching --------------------------------------------------------------------------

    def _gather(self, first: JobSpec) -> list[JobSpec]:
        """`first` and the queued jobs taken to run with it, waiting up to the batch window
        for more while there is room."""
        batch = [first]
        if not first.run.batches:
            return batch
        deadline = time.monotonic() + self.batch_window_s
        while True:
            self._fill(batch)
            if _room(batch) <= 0 or time.monotonic() >= deadline:
                break
            time.sleep(GATHER_EVERY_S)
        if len(batch) > 1:
            keys = [member.key for member in batch]
            self.ledger.batched(*keys)
            log.info("batch", extra={"generations": [member.id for member in batch]})
        for member in batch:
            self.board.move(member.key, (RUNNING,), RUNNING, batch_size=len(batch))
        return batch

    def _fill(self, batch: list[JobSpec]) -> None:
        """Take queued jobs that fit the batch, one per organization per turn."""
        key = batch[0].run.batch_key()
        queues: dict[str, list[JobSpec]] = defaultdict(list)
        for spec in self.board.waiting():
            if spec.run.batches and spec.run.batch_key() == key:
                queues[spec.organization_id].append(spec)
        while queues and _room(batch) > 0:
            for org in list(queues):
                fitting = [s for s in queues[org] if s.run.images <= _room(batch)]
                if not fitting:
                    del queues[org]
                    continue
                queues[org].remove(fitting[0])
                if self._take(fitting[0], (QUEUED,)) is None:
                    batch.append(fitting[0])

    def _take(self, spec: JobSpec, allowed: tuple[GenerationStatus, ...]) -> str | None:
        """Take a job to run here: on the board, from one of the `allowed` statuses (a
        cancel or another worker may win), then in the database. None when taken, else why
        not: it ended (cancelled while queued, a delivery of an ended job), or a worker that
        still looks alive runs it (its own delivery, or the batch of another)."""
        if not self.board.move(spec.key, allowed, RUNNING):
            return ENDED_BEFORE
        if self.ledger.claim(spec.key):
            return None
        status, name, message = self.ledger.outcome(spec.key)
        if status in (QUEUED, RUNNING):
            return RUNNING_ELSEWHERE
        self.board.move(spec.key, (RUNNING,), status, error_name=name, error=message)
        return ENDED_BEFORE


def _room(batch: list[JobSpec]) -> int:
    """How many more images the batch may take."""
    return batch[0].run.batch_max_images - sum(spec.run.images for spec in batch)


class Batched:
    """One pipeline call for jobs claimed by this worker: steps told on the board, a cancel
    from any replica seen between steps (a cancelled job leaves the batch at once, refunded,
    while the others run on), each job charged or refunded once."""

    def __init__(self, deliveries: Deliveries, batch: list[JobSpec]) -> None:
        self.d = deliveries
        self.live = list(batch)
        self.outcomes: dict[str, str] = {}
        self.control = StepControl(self._report)
        self.started = self.made = 0.0

    def run(self) -> dict[str, str]:
        for spec in list(self.live):
            if self.d.board.cancel_requested(spec.key):
                self._leave(spec)
        specs = list(self.live)
        try:
            self.control.check()
            self.started = time.time()
            results = run_batch(specs, self.d.store, self.d.pipelines, self.control)
            self.made = time.time()
        except JobCancelled:
            self._end_all(GenerationStatus.CANCELLED, None)
            return self.outcomes
        except errors.ApiError as exc:
            self._end_all(GenerationStatus.FAILED, exc)
            return self.outcomes
        except Exception as exc:
            log.exception("generation failed", extra={"generations": [s.id for s in specs]})
            self._end_all(GenerationStatus.FAILED, errors.ServerError(f"generation failed: {exc}"))
            return self.outcomes
        for spec, images in zip(specs, results, strict=True):
            if spec in self.live:
                self.outcomes[spec.id] = self._succeed(spec, images)
        return self.outcomes

    def _report(self, step: int, total: int) -> None:
        for spec in list(self.live):
            try:
                asked = self.d.board.progress(spec.key, step, total)
            except RedisError:  # progress is told at best: the job goes on without Redis
                log.warning("progress not told", extra={"generation": spec.id}, exc_info=True)
                continue
            if asked:
                self._leave(spec)

    def _leave(self, spec: JobSpec) -> None:
        """A cancel of `spec`: it leaves the batch now if others run on, else the run stops."""
        if len(self.live) > 1:
            self.live.remove(spec)
            self.outcomes[spec.id] = self._end(spec, GenerationStatus.CANCELLED, cancelled(spec.id))
        else:
            self.control.cancel()

    def _succeed(self, spec: JobSpec, images: list[GeneratedImage]) -> str:
        key = spec.key
        try:
            artifacts = to_artifacts(images, self.control.check)
            charged = self.d.ledger.succeed(key, artifacts)
        except JobCancelled:
            return self._end(spec, GenerationStatus.CANCELLED, cancelled(spec.id))
        if not charged:  # it ended meanwhile (refunded as interrupted): its images are not given
            status, name, message = self.d.ledger.outcome(key)
            self.d.board.move(key, (RUNNING,), status, error_name=name, error=message)
            return "ended while it ran"
        metrics.generation_made(
            spec.engine_id,
            spec.task.value,
            self.started - spec.submitted_at,
            self.made - self.started,
            len(artifacts),
        )
        put_result(self.d.store, result_prefix(*key), artifacts, self.d.result_ttl_s)
        self._drop_inputs(spec)
        times = {"started": self.started, "made": self.made}
        self.d.board.move(key, (RUNNING,), GenerationStatus.SUCCEEDED, **times)
        return GenerationStatus.SUCCEEDED.value

    def _end_all(self, status: GenerationStatus, error: errors.ApiError | None) -> None:
        for spec in self.live:
            self.outcomes[spec.id] = self._end(spec, status, error or cancelled(spec.id))

    def _end(self, spec: JobSpec, status: GenerationStatus, error: errors.ApiError) -> str:
        """Refund (once) and say so on the board."""
        self.d.ledger.end(spec.key, status, error)
        self._drop_inputs(spec)
        self.d.board.move(spec.key, (RUNNING,), status, error_name=error.name, error=error.message)
        return status.value

    def _drop_inputs(self, spec: JobSpec) -> None:
        for key in spec.inputs.values():
            self.d.store.expire(key, 0)
