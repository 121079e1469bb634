"""`localstability worker`: a scale-out worker, the composition root of its process.

It takes jobs from the Celery queues of the engines it serves, one at a time (one worker per
GPU), and runs each delivery with `jobs.delivered.Deliveries` (with the queued jobs that batch
with it): the same inference code as the embedded server, its state on the job board, its
images in the shared artifact store, its money in the database. A thread keeps the worker's
heartbeat in the database (a delivery of a job whose worker stopped beating is run again) and
refunds what dead workers left.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from localstability import metrics
from localstability.config import Settings
from localstability.inference.cache import PipelineCache
from localstability.jobs.base import JobSpec, queue_lost
from localstability.jobs.board import JobBoard, RedisArtifactStore
from localstability.jobs.celery_app import TASK, celery_app, engine_queue
from localstability.jobs.delivered import RUNNING_ELSEWHERE, Deliveries
from localstability.service.billing import Billing, billing_for
from localstability.service.moderation import load_output_filter
from localstability.service.tasks import TaskBuilder
from localstability.store.db import Database

log = logging.getLogger(__name__)


def worker_engines(settings: Settings, wanted: list[str] | None) -> list[str]:
    """The engines a worker serves: those asked for (each checked to be enabled), else all."""
    enabled = [engine.id for engine in TaskBuilder(settings).engines()]
    if not wanted:
        return enabled
    unknown = [engine for engine in wanted if engine not in enabled]
    if unknown:
        raise ValueError(f"not an enabled engine here: {', '.join(unknown)}")
    return wanted


def settle_recovered(billing: Billing, board: JobBoard, heartbeat_s: float) -> None:
    """Refund what dead workers left, and say so on the board; refund the queued jobs that
    Redis lost (a queued generation's board entry is written before its record, and
    outlives its end: one missing means that Redis lost it, and its message with it)."""
    board.interrupted(billing.recover(), billing.interrupted)
    waiting = billing.waiting(older_than_s=2 * heartbeat_s)
    lost = board.missing(waiting) if waiting else []
    if lost:
        log.warning("refunding jobs the queue lost", extra={"count": len(lost)})
        billing.refund(lost, queue_lost())


class Presence:
    """What the worker tells the cluster view each heartbeat: who it is and what it runs."""

    def __init__(
        self, billing: Billing, deliveries: Deliveries, engines: list[str], ttl_s: float
    ) -> None:
        self.billing, self.deliveries, self.board = billing, deliveries, deliveries.board
        self.engines, self.ttl_s = engines, ttl_s

    def beat(self) -> None:
        self.board.beat(
            self.billing.runner,
            socket.gethostname(),
            os.getpid(),
            self.engines,
            self.deliveries.running,
            self.ttl_s,
        )


def keep_beating(presence: Presence, every_s: float, stop: threading.Event) -> None:
    while not stop.wait(every_s):
        try:
            presence.billing.heartbeat()
            presence.beat()
            settle_recovered(presence.billing, presence.board, every_s)
        except Exception:
            log.exception("heartbeat failed")


def run_worker(settings: Settings, engines: list[str]) -> None:
    """Serve `engines` until SIGTERM (a warm shutdown: the job in hand finishes first)."""
    if not settings.redis_url:
        raise ValueError("a worker needs redis_url (the broker and the job board)")
    database = Database(settings.sqlalchemy_url)
    billing = billing_for(settings, database)
    board = JobBoard(settings.redis_url, settings.redis_prefix, settings.result_ttl_s)
    store = RedisArtifactStore(settings.redis_url, settings.redis_prefix)
    pipelines = PipelineCache.for_settings(settings)
    load_output_filter(settings.safety, pipelines)
    if settings.preload:
        from localstability.service.preload import preload_sources, start_preloads

        builder = TaskBuilder(settings)
        start_preloads(pipelines, preload_sources(settings, builder.engines(), engines))
    app = celery_app(
        settings.redis_url, settings.visibility_timeout_s, settings.job_restore_interval_s
    )

    def again_later(spec: JobSpec, spec_json: str) -> None:
        app.send_task(
            TASK,
            args=[spec_json],
            queue=engine_queue(spec.engine_id),
            task_id=board.member(spec.key),
            countdown=settings.runner_timeout_s + settings.runner_heartbeat_s,
        )

    deliveries = Deliveries(
        billing, board, store, pipelines, settings.result_ttl_s, settings.batch_window_ms / 1000
    )
    presence = Presence(billing, deliveries, engines, settings.runner_timeout_s)

    @app.task(name=TASK)
    def run_job(spec_json: str) -> str:
        spec = JobSpec.from_json(spec_json)
        try:
            outcome = deliveries.run(spec)
        except (SQLAlchemyError, RedisError):
            # The database or Redis is away: the job keeps its place, tried again later.
            log.exception("job deferred", extra={"generation": spec.id})
            again_later(spec, spec_json)
            return "deferred"
        log.info("job", extra={"generation": spec.id, "engine": spec.engine_id, "outcome": outcome})
        if outcome == RUNNING_ELSEWHERE:
            # Its worker may have just died (the broker counts from the delivery, not from the
            # death): deliver it again once that worker is surely taken for dead.
            again_later(spec, spec_json)
        return outcome

    billing.heartbeat()  # registered before the first claim
    presence.beat()
    settle_recovered(billing, board, settings.runner_heartbeat_s)
    stop = threading.Event()
    beating = threading.Thread(
        target=keep_beating,
        args=(presence, settings.runner_heartbeat_s, stop),
        name="heartbeat",
        daemon=True,
    )
    beating.start()
    if settings.worker_metrics_port is not None:
        metrics.serve(settings.worker_metrics_port, settings.worker_metrics_host)
        log.info(
            "metrics served",
            extra={"host": settings.worker_metrics_host, "port": settings.worker_metrics_port},
        )
    log.info("worker ready", extra={"engines": engines, "runner": billing.runner})
    try:
        app.Worker(
            queues=[engine_queue(engine) for engine in engines],
            pool="solo",  # the models live in this process; one job at a time
            concurrency=1,
            hostname=f"localstability-{socket.gethostname()}-{os.getpid()}",
            without_gossip=True,
            without_mingle=True,
            without_heartbeat=True,
            loglevel=settings.log_level,
            quiet=True,
        ).start()
    finally:
        stop.set()
        beating.join(timeout=5)
        board.leave(billing.runner)
        billing.retire()
        database.dispose()
