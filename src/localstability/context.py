"""The deployment's services, built once per process: the composition root.

`build_context` wires the settings, the database, the inference worker, the services and the
job backend; every front door (REST in api/, MCP in mcp/, the CLI) takes what it needs from the
`AppContext`, so that none of them builds services or imports another front door.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from localstability import errors
from localstability.config import Settings
from localstability.inference.worker import InferenceWorker
from localstability.jobs.artifacts import ArtifactStore, DiskArtifactStore, MemoryArtifactStore
from localstability.jobs.base import JobBackend
from localstability.service.accounts import AccountService
from localstability.service.admin import AdminService
from localstability.service.billing import Billing, billing_for
from localstability.service.generation import GenerationService
from localstability.service.health import HealthService
from localstability.service.moderation import load_output_filter
from localstability.service.ratelimit import Limiter, RateLimiter, RedisRateLimiter
from localstability.service.stable_image import StableImageService
from localstability.store.db import Database

log = logging.getLogger(__name__)

BOOTSTRAP_KEY_FILE = "admin-key.txt"


@dataclass
class AppContext:
    """The services behind the front doors, built once per process."""

    settings: Settings
    accounts: AccountService
    generation: GenerationService
    admin: AdminService
    billing: Billing
    jobs: JobBackend
    health: HealthService
    stable_image: StableImageService


def artifact_store(settings: Settings) -> ArtifactStore:
    """Where uploads and results are kept: this process's memory, or files in the data dir."""
    if settings.artifact_store == "disk":
        return DiskArtifactStore(settings.data_dir / "artifacts")
    return MemoryArtifactStore()


def build_context(settings: Settings) -> tuple[AppContext, Database, InferenceWorker | None]:
    """The services of an API process: with the local backend, its own inference worker
    (returned, to be stopped); with the celery backend, none (workers run the jobs)."""
    database = Database(settings.sqlalchemy_url)
    billing = billing_for(settings, database)
    limiter: Limiter
    worker: InferenceWorker | None = None
    if settings.backend == "celery":
        from localstability.jobs.board import (
            REDIS_OUTAGES,
            JobBoard,
            RedisArtifactStore,
            queue_unavailable,
        )
        from localstability.jobs.celery_app import celery_app
        from localstability.jobs.celery_backend import CeleryJobBackend

        if not settings.redis_url:
            raise ValueError("backend = 'celery' needs redis_url")
        errors.answer_outages(REDIS_OUTAGES, queue_unavailable)
        store: ArtifactStore = RedisArtifactStore(settings.redis_url, settings.redis_prefix)
        jobs: JobBackend = CeleryJobBackend(
            billing,
            JobBoard(settings.redis_url, settings.redis_prefix, settings.result_ttl_s),
            store,
            celery_app(
                settings.redis_url, settings.visibility_timeout_s, settings.job_restore_interval_s
            ),
            max_queued=settings.max_queued_jobs,
            max_per_organization=settings.max_jobs_per_organization,
            result_ttl_s=settings.result_ttl_s,
        )
        limiter = RedisRateLimiter(
            settings.redis_url,
            settings.redis_prefix,
            settings.rate_limit_requests,
            settings.rate_limit_window_s,
        )
    else:
        from localstability.inference.cache import PipelineCache
        from localstability.jobs.local import LocalJobBackend

        worker = InferenceWorker(trim_memory=settings.trim_memory)
        store = artifact_store(settings)
        pipelines = PipelineCache.for_settings(settings)
        load_output_filter(settings.safety, pipelines)
        jobs = LocalJobBackend(
            billing,
            worker,
            pipelines,
            store,
            max_queued=settings.max_queued_jobs,
            max_per_organization=settings.max_jobs_per_organization,
            result_ttl_s=settings.result_ttl_s,
            batch_window_s=settings.batch_window_ms / 1000,
        )
        limiter = RateLimiter(settings.rate_limit_requests, settings.rate_limit_window_s)
    generation = GenerationService(settings, jobs, store, billing)
    if settings.backend != "celery" and settings.preload:
        from localstability.service.preload import preload_sources, start_preloads

        start_preloads(pipelines, preload_sources(settings, generation.tasks.engines()))
    context = AppContext(
        settings=settings,
        accounts=AccountService(database, limiter),
        generation=generation,
        admin=AdminService(database, actor="admin-api"),
        billing=billing,
        jobs=jobs,
        health=HealthService(settings, database, jobs, generation.tasks),
        stable_image=StableImageService(generation, settings.v2beta_engines),
    )
    return context, database, worker


async def stop_services(
    context: AppContext, database: Database, worker: InferenceWorker | None
) -> None:
    """Let generations finish (within the grace period), then stop the worker and database."""
    await context.jobs.shutdown(context.settings.shutdown_grace_s)
    if worker is not None:
        worker.shutdown()
    database.dispose()


def bootstrap_key(context: AppContext) -> None:
    """On an empty database, create a first key and write it (never log it) to the data dir."""
    settings = context.settings
    created = context.accounts.bootstrap(settings.bootstrap_credits)
    if created is None:
        return
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path = settings.data_dir / BOOTSTRAP_KEY_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(created.key + "\n")
    log.info(
        "created the first API key",
        extra={"key_file": str(path), "user_id": created.user_id, "org": created.organization_id},
    )
