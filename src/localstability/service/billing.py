"""Billing of generations: reserve before the job, charge on success, refund otherwise.

Each step is one database transaction (see localstability.store.ledger). With billing
switched off the generation is still recorded, at cost 0, and nothing moves.

Every server process is a runner with a boot id of its own (`Runner`), which it writes into
the generations it takes and keeps alive in the database (`heartbeat`). `recover` refunds
what dead runners left queued or running: a runner on this host whose process is gone, or
whose PID a new process now has (a restarted container's server is PID 1 again), at once;
any other runner once it has not been seen for `runner_timeout_s`.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from localstability import errors
from localstability.jobs.base import GenerationKey, JobSpec
from localstability.store import ledger
from localstability.store.db import Database
from localstability.store.models import Generation, GenerationStatus, Runner, utcnow

log = logging.getLogger(__name__)


INTERRUPTED = errors.GenerationInterrupted(
    "the generation was interrupted: its server stopped before it finished; its credits were "
    "refunded"
)


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Billing:
    def __init__(
        self, database: Database, enabled: bool = True, runner_timeout_s: float = 60.0
    ) -> None:
        self.database = database
        self.enabled = enabled
        self.runner_timeout_s = runner_timeout_s
        self.runner = uuid.uuid4().hex  # this process's boot id
        self.host = socket.gethostname()

    # -- runners ---------------------------------------------------------------------------

    def heartbeat(self) -> None:
        """Say that this process lives (registering it the first time)."""
        with self.database.session.begin() as session:
            seen = session.execute(
                update(Runner).where(Runner.id == self.runner).values(seen_at=utcnow())
            )
            if not getattr(seen, "rowcount", 0):  # the first time (or taken for dead)
                session.add(Runner(id=self.runner, host=self.host[:255], pid=os.getpid()))

    def retire(self) -> None:
        """This process stops (its generations have all ended): forget it."""
        with self.database.session.begin() as session:
            session.execute(delete(Runner).where(Runner.id == self.runner))

    def _dead(self, runner: Runner | None) -> bool:
        if runner is None:  # no such runner (an older "host:pid" record, or long gone)
            return True
        if runner.id == self.runner:
            return False
        if runner.host == self.host and (runner.pid == os.getpid() or _process_gone(runner.pid)):
            return True  # its process is gone, or this process has its PID now
        return utcnow() - runner.seen_at > timedelta(seconds=self.runner_timeout_s)

    def recover(self) -> int:
        """Refund the generations that dead runners left queued or running, and forget those
        runners. Run at start and then every heartbeat: a crash or a kill between reservation
        and charge must not keep credits held, nor leave records "running" for ever. Returns
        how many were refunded."""
        with self.database.session.begin() as session:
            runners = {r.id: r for r in session.scalars(select(Runner)).all()}
            dead = {runner_id for runner_id, r in runners.items() if self._dead(r)}
            stale = [
                (g.organization_id, g.id)
                for g in ledger.unfinished(session)
                if (g.runner in dead) or (g.runner not in runners)
            ]
            for organization_id, generation_id in stale:
                ledger.finish(
                    session,
                    organization_id,
                    generation_id,
                    GenerationStatus.FAILED,
                    error=INTERRUPTED.message,
                    error_name=INTERRUPTED.name,
                )
            if dead:
                session.execute(delete(Runner).where(Runner.id.in_(dead)))
        if stale:
            log.warning("refunded interrupted generations", extra={"count": len(stale)})
        return len(stale)

    def purge(self, charged_days: float, refunded_hours: float, batch: int = 500) -> int:
        """Remove the records kept past their retention (0: kept for ever): charged ones
        after `charged_days`, refunded ones (failed, cancelled) after `refunded_hours`.
        Returns how many went."""
        now = utcnow()
        rules = [(GenerationStatus.SUCCEEDED, timedelta(days=charged_days))] if charged_days else []
        if refunded_hours:
            kept = timedelta(hours=refunded_hours)
            rules += [(GenerationStatus.FAILED, kept), (GenerationStatus.CANCELLED, kept)]
        removed = 0
        for status, kept in rules:
            while True:  # in batches: one short transaction each
                with self.database.session.begin() as session:
                    count = ledger.purge(session, status, now - kept, batch)
                removed += count
                if count < batch:
                    break
        if removed:
            log.info("purged generation records", extra={"count": removed})
        return removed

    # -- one generation --------------------------------------------------------------------

    def reserve(self, spec: JobSpec) -> None:
        """Record a queued generation and hold its cost: InsufficientBalance when short,
        DuplicateGenerationId when the organization used its id already."""
        generation = Generation(
            id=spec.id,
            organization_id=spec.organization_id,
            user_id=spec.user_id,
            api_key_id=spec.key_id or None,
            engine_id=spec.engine_id,
            task=spec.task.value,
            parameters=spec.summary,
            cost=spec.cost if self.enabled else 0,
            runner=self.runner,
        )
        try:
            with self.database.session.begin() as session:
                ledger.reserve(session, generation)
        except IntegrityError:
            raise errors.DuplicateGenerationId(
                f"generation id {spec.id} is in use already"
            ) from None

    def record(self, generation_id: str, organization_id: str) -> Generation | None:
        """The organization's generation record `generation_id`, if there is one."""
        with self.database.session() as session:
            return session.get(Generation, (organization_id, generation_id))

    def start(self, *generations: GenerationKey) -> None:
        """The generations start, together in one pipeline call when there are several."""
        with self.database.session.begin() as session:
            for organization_id, generation_id in generations:
                ledger.start(session, organization_id, generation_id, len(generations))

    def succeed(self, generation: GenerationKey, finish_reasons: list[str]) -> None:
        with self.database.session.begin() as session:
            ledger.finish(
                session,
                *generation,
                GenerationStatus.SUCCEEDED,
                finish_reasons=finish_reasons,
            )

    def end(
        self, generation: GenerationKey, status: GenerationStatus, error: errors.ApiError
    ) -> None:
        """Refund: the generation failed or was cancelled, for `error`."""
        with self.database.session.begin() as session:
            refunded = ledger.finish(
                session, *generation, status, error=error.message, error_name=error.name
            )
        if refunded:
            log.info("generation refunded", extra={"generation": generation[1], "status": status})
