"""Running the API under uvicorn: the protocol's limits, the process's file limit, and a
shutdown that drains before it closes.

uvicorn's own shutdown closes the listening sockets first, waits for open connections, and
only then runs the app's lifespan shutdown, where the job backend lets generations finish: a
client arriving meanwhile got "connection refused" instead of `503 shutting_down`, and sync
waiters were cut off (after uvicorn's graceful timeout) before the backend's grace began.
`DrainingServer` first drains: the backend stops admitting (new generations get
`503 shutting_down` from it) and lets its jobs finish within `shutdown_grace_s`, while the
server goes on listening and serving (GET, DELETE and the event stream of running jobs, the
sync waiters' answers); then uvicorn's shutdown runs as before, with only a short wait for the
responses still open. A second SIGTERM or SIGINT exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from types import FrameType

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from localstability.api.http11 import EnvelopeH11Protocol
from localstability.config import Settings
from localstability.logs import flush_rate_limits

log = logging.getLogger(__name__)

# File descriptors kept free of client connections: the database's connections, model and
# tokenizer files while they load, log files, the inference libraries' own.
RESERVED_DESCRIPTORS = 256
# A connection may hold two descriptors: its socket and an upload spooled to disk.
DESCRIPTORS_PER_CONNECTION = 2


def raise_file_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; the soft limit now."""
    try:
        import resource
    except ImportError:  # not on POSIX: nothing to raise, and no limit we can read
        return 1 << 20
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft if soft != resource.RLIM_INFINITY else 1 << 20
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:  # e.g. above the kernel's nr_open
        log.warning("could not raise the open file limit", extra={"soft": soft, "error": str(exc)})
        return soft
    return target


def open_descriptors() -> int:
    """How many file descriptors this process has open (0 where that can't be read)."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        with contextlib.suppress(OSError):
            return len(os.listdir(folder))
    return 0


def connection_cap(max_connections: int, file_limit: int, open_now: int) -> int:
    """The most client connections to hold: `max_connections`, or fewer where the file limit
    would not leave each its descriptors and the rest of the process its reserve."""
    room = (file_limit - open_now - RESERVED_DESCRIPTORS) // DESCRIPTORS_PER_CONNECTION
    return max(1, min(max_connections, room))


class DrainingServer(uvicorn.Server):
    """uvicorn's server whose shutdown first awaits `drain` (the job backend's shutdown)
    while it still listens and serves."""

    def __init__(self, config: uvicorn.Config, drain: Callable[[], Awaitable[None]]) -> None:
        super().__init__(config)
        self.drain = drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:  # a second signal, SIGTERM too (uvicorn forces on SIGINT only)
            self.force_exit = True
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if not self.force_exit:
            await self._drain()
        if self.force_exit:
            log.warning(
                "forced exit: what is still queued or running stays reserved until a server "
                "process of the deployment sees this one is gone and refunds it"
            )
        await super().shutdown(sockets)
        flush_rate_limits()  # what the log's rate limits held back, before the process ends

    async def _drain(self) -> None:
        log.info("draining: admitting no new generations, letting running ones finish")
        task = asyncio.ensure_future(self.drain())
        counter = 0
        while not task.done():
            if self.force_exit:
                task.cancel()
                break
            await asyncio.wait({task}, timeout=0.1)
            counter += 1
            await self.on_tick(counter)  # keeps the Date header current
        try:
            await task
        except asyncio.CancelledError:
            if not self.force_exit:
                raise
        except Exception:
            log.exception("draining failed; shutting down anyway")
        else:
            log.info("drained")


def run(settings: Settings, host: str, port: int) -> None:
    """Serve the API for `settings` on host:port until SIGTERM or SIGINT."""
    from localstability.app import create_app

    file_limit = raise_file_limit()
    app = create_app(settings)
    cap = connection_cap(settings.max_connections, file_limit, open_descriptors())
    if cap < settings.max_connections:
        log.warning(
            "max_connections lowered to fit the open file limit",
            extra={"max_connections": settings.max_connections, "cap": cap, "limit": file_limit},
        )
    protocol = EnvelopeH11Protocol.with_limits(
        header_timeout_s=settings.header_timeout_s, max_connections=cap
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        http=protocol,
        # After the drain, what is still open is answers being written and event streams of
        # finished jobs: as long as a client has to send a request's head, then cut off.
        timeout_graceful_shutdown=max(1, math.ceil(settings.header_timeout_s)),
    )
    jobs = app.state.context.jobs

    async def drain() -> None:
        await jobs.shutdown(settings.shutdown_grace_s)

    server = DrainingServer(config, drain)
    try:
        server.run()
    except KeyboardInterrupt:  # SIGINT, raised again by uvicorn once it has shut down
        if server.force_exit:
            # Don't wait at exit for the inference thread to end a generation.
            logging.shutdown()
            os._exit(130)
    if not server.started:
        sys.exit(STARTUP_FAILURE)
