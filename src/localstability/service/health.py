"""Liveness and readiness: what a load balancer or an orchestrator asks of a process, without
an API key, and nothing it should not see (no paths, hosts, keys or error texts)."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import text

from localstability.config import Settings
from localstability.jobs.base import JobBackend
from localstability.protocol import GenerationStatus, ReadinessBody
from localstability.service.tasks import TaskBuilder, weights_state
from localstability.store import ledger
from localstability.store.db import Database

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 5.0  # a check that takes longer counts as failed


class HealthService:
    def __init__(
        self, settings: Settings, database: Database, jobs: JobBackend, tasks: TaskBuilder
    ) -> None:
        self.settings = settings
        self.database = database
        self.jobs = jobs
        self.tasks = tasks  # the generation service's: the engines this deployment serves

    def _database_answers(self) -> bool:
        try:
            with self.database.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return True
        except Exception:
            log.warning("readiness: the database does not answer", exc_info=True)
            return False

    async def readiness(self) -> ReadinessBody:
        """The database answers, the job backend answers (and its live workers), and which
        engines have their weights on this machine."""
        engines = self.tasks.engines()
        try:
            database = await asyncio.wait_for(
                asyncio.to_thread(self._database_answers), CHECK_TIMEOUT_S
            )
        except TimeoutError:
            database = False
        try:
            cluster = await asyncio.wait_for(
                self.jobs.cluster([e.id for e in engines]), CHECK_TIMEOUT_S
            )
            jobs, workers = True, len(cluster.workers)
        except Exception:
            log.warning("readiness: the job backend does not answer", exc_info=True)
            jobs, workers = False, 0
        states = await asyncio.to_thread(
            lambda: {e.id: weights_state(self.settings, e)[0] for e in engines}
        )
        return ReadinessBody(
            status="ready" if database and jobs else "not_ready",
            database="ok" if database else "unavailable",
            jobs="ok" if jobs else "unavailable",
            workers=workers,
            engines=states,
        )

    def jobs_by_engine(self) -> dict[str, tuple[int, int]]:
        """The deployment's generations queued and running, by engine (every enabled
        engine, and any other that still has some), from the database: every replica and
        topology counts alike."""
        with self.database.session() as session:
            counts = ledger.unfinished_by_engine(session)
        engines = {e.id for e in self.tasks.engines()} | {engine for engine, _ in counts}
        return {
            engine: (
                counts.get((engine, GenerationStatus.QUEUED), 0),
                counts.get((engine, GenerationStatus.RUNNING), 0),
            )
            for engine in engines
        }
