"""What a server process does beside its requests, every `runner_heartbeat_s`: say that it
lives, refund what dead processes left unfinished, and purge records past their retention."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from localstability.config import Settings
from localstability.jobs.base import JobBackend
from localstability.service.billing import Billing

log = logging.getLogger(__name__)


def sweep(billing: Billing, settings: Settings, jobs: JobBackend | None = None) -> None:
    """One round: heartbeat, recovery (told to the job backend), retention."""
    billing.heartbeat()
    recovered = billing.recover()
    if recovered and jobs is not None:
        jobs.recovered(recovered)
    billing.purge(settings.generation_retention_days, settings.refunded_retention_hours)


async def _every_heartbeat(billing: Billing, settings: Settings, jobs: JobBackend | None) -> None:
    while True:
        await asyncio.sleep(settings.runner_heartbeat_s)
        try:
            await asyncio.to_thread(sweep, billing, settings, jobs)
        except Exception:  # the database is away for a while: try again next time
            log.exception("housekeeping failed")


@contextlib.asynccontextmanager
async def housekeeping(
    billing: Billing, settings: Settings, jobs: JobBackend | None = None
) -> AsyncIterator[None]:
    """A first round before anything is admitted, then one every heartbeat until exit."""
    await asyncio.to_thread(sweep, billing, settings, jobs)
    task = asyncio.get_running_loop().create_task(_every_heartbeat(billing, settings, jobs))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        try:
            await asyncio.to_thread(billing.retire)
        except Exception:
            log.exception("could not remove this process's runner record")
