"""Billing of generations: reserve before the job, charge on success, refund otherwise.

Each step is one database transaction (see localstability.store.ledger). With billing
switched off the generation is still recorded, at cost 0, and nothing moves.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from typing import Any

from localstability.engines import EngineSpec, Task
from localstability.store import ledger
from localstability.store.accounts import Principal
from localstability.store.db import Database
from localstability.store.models import Generation, GenerationStatus

log = logging.getLogger(__name__)


INTERRUPTED = (
    "generation_interrupted: the server stopped before the generation finished; "
    "its credits were refunded"
)


def this_runner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _runner_is_dead(runner: str | None, host: str) -> bool:
    """True for a runner on this host whose process is gone (or a record with no runner)."""
    if not runner:
        return True
    runner_host, _, pid = runner.rpartition(":")
    if runner_host != host or not pid.isdigit():
        return False  # another machine's: only it knows
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Billing:
    def __init__(self, database: Database, enabled: bool = True) -> None:
        self.database = database
        self.enabled = enabled
        self.runner = this_runner()

    def recover(self) -> int:
        """Refund the generations that a dead server process on this machine left unfinished.

        Run at start: a crash or a kill between reservation and charge must not keep
        credits held, nor leave records "running" for ever. Returns how many were refunded.
        """
        host = socket.gethostname()
        with self.database.session.begin() as session:
            stale = [g.id for g in ledger.unfinished(session) if _runner_is_dead(g.runner, host)]
            for generation_id in stale:
                ledger.finish(session, generation_id, GenerationStatus.FAILED, error=INTERRUPTED)
        if stale:
            log.warning("refunded interrupted generations", extra={"count": len(stale)})
        return len(stale)

    def reserve(
        self,
        principal: Principal,
        engine: EngineSpec,
        task: Task,
        parameters: dict[str, Any],
        cost: int,
        generation_id: str | None = None,
    ) -> str:
        """Record a queued generation and hold its cost; InsufficientBalance when short."""
        generation = Generation(
            id=generation_id or uuid.uuid4().hex,
            organization_id=principal.organization_id,
            user_id=principal.user_id,
            api_key_id=principal.key_id or None,
            engine_id=engine.id,
            task=task.value,
            parameters=parameters,
            cost=cost if self.enabled else 0,
            runner=self.runner,
        )
        with self.database.session.begin() as session:
            ledger.reserve(session, generation)
        return generation.id

    def record(self, generation_id: str, organization_id: str) -> Generation | None:
        """The organization's generation record `generation_id`, if there is one."""
        with self.database.session() as session:
            generation = session.get(Generation, generation_id)
        if generation is None or generation.organization_id != organization_id:
            return None
        return generation

    def start(self, *generation_ids: str) -> None:
        """The generations start, together in one pipeline call when there are several."""
        with self.database.session.begin() as session:
            for generation_id in generation_ids:
                ledger.start(session, generation_id, batch_size=len(generation_ids))

    def succeed(self, generation_id: str, finish_reasons: list[str]) -> None:
        with self.database.session.begin() as session:
            ledger.finish(
                session,
                generation_id,
                GenerationStatus.SUCCEEDED,
                finish_reasons=finish_reasons,
            )

    def end(self, generation_id: str, status: GenerationStatus, error: str) -> None:
        """Refund: the generation failed or was cancelled."""
        with self.database.session.begin() as session:
            refunded = ledger.finish(session, generation_id, status, error=error)
        if refunded:
            log.info("generation refunded", extra={"generation": generation_id, "status": status})
