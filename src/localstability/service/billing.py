"""Billing of generations: reserve before the job, charge on success, refund otherwise.

Each step is one database transaction (see localstability.store.ledger). With billing
switched off the generation is still recorded, at cost 0, and nothing moves.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from localstability.engines import EngineSpec, Task
from localstability.store import ledger
from localstability.store.accounts import Principal
from localstability.store.db import Database
from localstability.store.models import Generation, GenerationStatus

log = logging.getLogger(__name__)


class Billing:
    def __init__(self, database: Database, enabled: bool = True) -> None:
        self.database = database
        self.enabled = enabled

    def reserve(
        self,
        principal: Principal,
        engine: EngineSpec,
        task: Task,
        parameters: dict[str, Any],
        cost: int,
    ) -> str:
        """Record a queued generation and hold its cost; InsufficientBalance when short."""
        generation = Generation(
            id=uuid.uuid4().hex,
            organization_id=principal.organization_id,
            user_id=principal.user_id,
            api_key_id=principal.key_id or None,
            engine_id=engine.id,
            task=task.value,
            parameters=parameters,
            cost=cost if self.enabled else 0,
        )
        with self.database.session.begin() as session:
            ledger.reserve(session, generation)
        return generation.id

    def start(self, generation_id: str) -> None:
        with self.database.session.begin() as session:
            ledger.start(session, generation_id)

    def succeed(self, generation_id: str, finish_reasons: list[str]) -> None:
        with self.database.session.begin() as session:
            ledger.finish(
                session,
                generation_id,
                GenerationStatus.SUCCEEDED,
                finish_reasons=finish_reasons,
            )

    def fail(self, generation_id: str, error: BaseException) -> None:
        """Refund: the job raised, or the request waiting on it went away (cancelled)."""
        cancelled = not isinstance(error, Exception)  # asyncio.CancelledError and the like
        status = GenerationStatus.CANCELLED if cancelled else GenerationStatus.FAILED
        message = f"{type(error).__name__}: {error}"
        with self.database.session.begin() as session:
            refunded = ledger.finish(session, generation_id, status, error=message)
        if refunded:
            log.info("generation refunded", extra={"generation": generation_id, "status": status})
