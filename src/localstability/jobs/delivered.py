"""One delivery of a job to a scale-out worker: run it at most once to its end, whatever the
broker does.

Celery delivers at least once (a job whose worker died is delivered again, and a slow one may
be too), so a delivery first takes the job on the board (queued, or running under a worker
that died, -> running) and then claims it in the database, which is the truth: a job that has
ended (charged, refunded, cancelled) or that a live worker runs is not run again. Then it runs
exactly as in the embedded server (`execute`), with its steps published on the board and a
cancel from any replica seen between steps; the charge or the refund is one conditional
database transaction, so money moves once however often the job is delivered.
"""

from __future__ import annotations

import logging
from typing import Protocol

from redis.exceptions import RedisError

from localstability import errors
from localstability.inference.control import JobCancelled, StepControl
from localstability.inference.loader import PipelineCache
from localstability.jobs.artifacts import ArtifactStore, put_result, result_prefix
from localstability.jobs.base import GenerationKey, JobSpec, Ledger, cancelled
from localstability.jobs.board import JobBoard
from localstability.jobs.execute import execute
from localstability.protocol import GenerationStatus

log = logging.getLogger(__name__)

QUEUED, RUNNING = GenerationStatus.QUEUED, GenerationStatus.RUNNING
# The outcome of a delivery whose job a worker holds that has not yet been seen dead: it is
# delivered again once that worker would have been (a live one will have finished it by then,
# or still holds it).
RUNNING_ELSEWHERE = "running elsewhere"


class WorkerLedger(Ledger, Protocol):
    """What a worker needs of billing besides the embedded backend's."""

    def claim(self, generation: GenerationKey) -> bool:
        """queued, or running under a worker that is dead, -> running under this worker;
        False when the generation has ended or a live worker runs it."""

    def outcome(self, generation: GenerationKey) -> tuple[GenerationStatus, str | None, str]:
        """The generation's status in the database, its error's name and message."""


def run_delivered(
    spec: JobSpec,
    ledger: WorkerLedger,
    board: JobBoard,
    store: ArtifactStore,
    pipelines: PipelineCache,
    result_ttl_s: float,
) -> str:
    """Run one delivery of `spec`; returns what became of it (for the log)."""
    key = spec.key
    if not board.move(key, (QUEUED, RUNNING), RUNNING, batch_size=1):
        return "ended before it ran"  # cancelled while queued, or a delivery of an ended job
    if not ledger.claim(key):
        status, name, message = ledger.outcome(key)
        if status in (QUEUED, RUNNING):  # its worker still looks alive (or is): ask again
            return RUNNING_ELSEWHERE
        board.move(key, (RUNNING,), status, error_name=name, error=message)
        return "ended before it ran"

    def report(step: int, total: int) -> None:
        try:
            if board.progress(key, step, total):  # a cancel from any replica
                control.cancel()
        except RedisError:  # progress is told at best: the job goes on without Redis
            log.warning("progress not told", extra={"generation": spec.id}, exc_info=True)

    control = StepControl(report)
    try:
        if board.cancel_requested(key):
            control.cancel()
        control.check()
        artifacts = execute(spec, store, pipelines, control)
        charged = ledger.succeed(key, [a.finish_reason.value for a in artifacts])
    except JobCancelled:
        return _end(spec, ledger, board, store, GenerationStatus.CANCELLED, cancelled(spec.id))
    except errors.ApiError as exc:
        return _end(spec, ledger, board, store, GenerationStatus.FAILED, exc)
    except Exception as exc:
        log.exception("generation failed", extra={"generation": spec.id})
        error = errors.ServerError(f"generation failed: {exc}")
        return _end(spec, ledger, board, store, GenerationStatus.FAILED, error)
    if not charged:  # it ended meanwhile (refunded as interrupted): its images are not given
        status, name, message = ledger.outcome(key)
        board.move(key, (RUNNING,), status, error_name=name, error=message)
        return "ended while it ran"
    put_result(store, result_prefix(*key), artifacts, result_ttl_s)
    _drop_inputs(spec, store)
    board.move(key, (RUNNING,), GenerationStatus.SUCCEEDED)
    return "succeeded"


def _end(
    spec: JobSpec,
    ledger: WorkerLedger,
    board: JobBoard,
    store: ArtifactStore,
    status: GenerationStatus,
    error: errors.ApiError,
) -> str:
    """Refund (once) and say so on the board."""
    ledger.end(spec.key, status, error)
    _drop_inputs(spec, store)
    board.move(spec.key, (RUNNING,), status, error_name=error.name, error=error.message)
    return status.value


def _drop_inputs(spec: JobSpec, store: ArtifactStore) -> None:
    for key in spec.inputs.values():
        store.expire(key, 0)
