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
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from localstability import errors, metrics
from localstability.config import Settings
from localstability.jobs.artifacts import INPUT_TTL_S, Artifact
from localstability.jobs.base import GenerationKey, JobSpec, worker_lost
from localstability.store import ledger
from localstability.store.db import Database
from localstability.store.models import Generation, GenerationStatus, Runner, utcnow

log = logging.getLogger(__name__)


INTERRUPTED = errors.GenerationInterrupted(
    "the generation was interrupted: its server stopped before it finished; its credits were "
    "refunded"
)
WORKER_LOST = worker_lost()


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Billing:
    """The money of generations, for one process (a runner).

    With `broker_queue` (the celery backend) a queued generation belongs to no process: the
    broker holds it until a worker claims it. A generation whose worker died is then left
    `redelivery_grace_s` more for the broker to deliver it again (a claim takes it over)
    before it is refunded; a queued one is refunded once its inputs are gone (a day), or
    sooner by a worker that finds the job queue lost it (`waiting`, `refund`)."""

    def __init__(
        self,
        database: Database,
        enabled: bool = True,
        runner_timeout_s: float = 60.0,
        *,
        broker_queue: bool = False,
        redelivery_grace_s: float = 0.0,
    ) -> None:
        self.database = database
        self.enabled = enabled
        self.runner_timeout_s = runner_timeout_s
        self.broker_queue = broker_queue
        self.redelivery_grace_s = redelivery_grace_s
        self.interrupted = WORKER_LOST if broker_queue else INTERRUPTED
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

    def _abandoned(
        self, generation: Generation, runners: dict[str, Runner], dead: set[str]
    ) -> bool:
        """Whether nobody will finish `generation` (queued or running)."""
        now = utcnow()
        if self.broker_queue:
            if generation.runner is None:  # in the broker's queue
                return now - generation.created_at > timedelta(seconds=INPUT_TTL_S)
            runner = runners.get(generation.runner)
            if runner is not None and generation.runner not in dead:
                return False
            # Its worker died: the broker delivers the job again after its visibility
            # timeout, and the next worker takes it over; refunded if none does.
            since = runner.seen_at if runner is not None else generation.started_at or now
            grace = timedelta(seconds=self.runner_timeout_s + self.redelivery_grace_s)
            return now - since > grace
        return generation.runner in dead or generation.runner not in runners

    def recover(self) -> list[GenerationKey]:
        """Refund the generations that dead runners left queued or running, and forget those
        runners. Run at start and then every heartbeat: a crash or a kill between reservation
        and charge must not keep credits held, nor leave records "running" for ever. Returns
        the generations refunded."""
        with self.database.session.begin() as session:
            runners = {r.id: r for r in session.scalars(select(Runner)).all()}
            dead = {runner_id for runner_id, r in runners.items() if self._dead(r)}
            stale = [
                (g.organization_id, g.id)
                for g in ledger.unfinished(session)
                if self._abandoned(g, runners, dead)
            ]
            refunded = 0
            for organization_id, generation_id in stale:
                refunded += (
                    ledger.finish(
                        session,
                        organization_id,
                        generation_id,
                        GenerationStatus.FAILED,
                        error=self.interrupted.message,
                        error_name=self.interrupted.name,
                    )
                    or 0
                )
            if dead and not self.broker_queue:
                session.execute(delete(Runner).where(Runner.id.in_(dead)))
            elif dead:  # forgotten once nothing of theirs waits for another delivery
                stale_keys = set(stale)
                holding = {
                    g.runner
                    for g in ledger.unfinished(session)
                    if (g.organization_id, g.id) not in stale_keys
                }
                if dead - holding:
                    session.execute(delete(Runner).where(Runner.id.in_(dead - holding)))
        metrics.credits_moved(0, refunded)  # once committed
        if stale:
            log.warning("refunded interrupted generations", extra={"count": len(stale)})
        return stale

    def waiting(self, older_than_s: float) -> list[GenerationKey]:
        """The generations queued (in the broker's queue, no worker has claimed them) for
        longer than `older_than_s`."""
        with self.database.session() as session:
            return ledger.unclaimed(session, utcnow() - timedelta(seconds=older_than_s))

    def refund(self, generations: list[GenerationKey], error: errors.ApiError) -> None:
        """They failed with `error` before they ran: refunded (those that ended meanwhile
        are left as they are)."""
        for generation in generations:
            self.end(generation, GenerationStatus.FAILED, error)

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
            runner=None if self.broker_queue else self.runner,
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

    def claim(self, generation: GenerationKey) -> bool:
        """Take a generation to run (a worker's delivery of it): see `ledger.claim`."""
        alive_since = utcnow() - timedelta(seconds=self.runner_timeout_s)
        with self.database.session.begin() as session:
            return ledger.claim(session, *generation, self.runner, alive_since)

    def batched(self, *generations: GenerationKey) -> None:
        """Generations this worker claimed run together in one pipeline call."""
        with self.database.session.begin() as session:
            for org, generation_id in generations:
                ledger.batched(session, org, generation_id, self.runner, len(generations))

    def outcome(self, generation: GenerationKey) -> tuple[GenerationStatus, str | None, str]:
        """The generation's status, and its error's name and message (if it ended so)."""
        record = self.record(generation[1], generation[0])
        if record is None:
            return GenerationStatus.FAILED, INTERRUPTED.name, INTERRUPTED.message
        return record.status, record.error_name, record.error or ""

    def succeed(self, generation: GenerationKey, artifacts: Sequence[Artifact]) -> bool:
        """Charge it, filtered images included (as the hosted API does: the work was done);
        its record keeps each image's finish reason and what the output filter found. False
        when it had ended already (and nothing moved)."""
        filtered = [a.filtered_by for a in artifacts]
        with self.database.session.begin() as session:
            charged = ledger.finish(
                session,
                *generation,
                GenerationStatus.SUCCEEDED,
                finish_reasons=[a.finish_reason.value for a in artifacts],
                content_filter=filtered if any(filtered) else None,
            )
        if charged is None:
            return False
        metrics.credits_moved(charged, 0)
        return True

    def end(
        self, generation: GenerationKey, status: GenerationStatus, error: errors.ApiError
    ) -> None:
        """Refund: the generation failed or was cancelled, for `error`."""
        with self.database.session.begin() as session:
            refunded = ledger.finish(
                session, *generation, status, error=error.message, error_name=error.name
            )
        if refunded is not None:
            metrics.credits_moved(0, refunded)
            log.info("generation refunded", extra={"generation": generation[1], "status": status})


def redelivery_grace_s(settings: Settings) -> float:
    """How long after its worker's death a job may wait for its next delivery: the broker's
    visibility timeout, its restore sweeps, and a worker's start (models loaded)."""
    return settings.visibility_timeout_s + 3 * settings.job_restore_interval_s + 60.0


def billing_for(settings: Settings, database: Database) -> Billing:
    """The billing of a process of the deployment that `settings` describe."""
    celery = settings.backend == "celery"
    return Billing(
        database,
        settings.billing,
        settings.runner_timeout_s,
        broker_queue=celery,
        redelivery_grace_s=redelivery_grace_s(settings) if celery else 0.0,
    )
