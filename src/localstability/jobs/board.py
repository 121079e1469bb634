"""The job board of a scale-out deployment, on Redis: what every API replica and worker
knows of the generations in flight, and the artifact store they share.

- `job:{org}:{id}`: a hash with the generation's state (status, step, total, batch size, the
  error it ended with, the worker that runs it). Moves between statuses are compare-and-set
  (a Lua script), so of two processes that race (a cancel and a worker's start, two
  deliveries of one job) exactly one wins. An ended job's hash stays `result_ttl_s`.
- `events:{org}:{id}`: a pub/sub channel; every change publishes the status JSON.
- `cancel:{org}:{id}`: set by a cancel from any replica; the worker checks it between steps.
- Admission: `queued` (a sorted set of the jobs waiting, deployment-wide) and
  `inflight:{org}` (a set of an organization's jobs queued or running), checked and added to
  in one script: the queue bound and the per-organization cap hold across replicas.
- `RedisArtifactStore`: uploads and results under `artifact:{key}`, with Redis's own expiry.

Every key starts with the deployment's prefix (`redis_prefix`), so deployments can share a
Redis.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from localstability import errors
from localstability.jobs.base import (
    ClusterInfo,
    GenerationKey,
    JobSpec,
    QueueInfo,
    WorkerInfo,
    duplicate_id,
    queue_full,
    too_many_jobs,
)
from localstability.jobs.celery_app import PRIORITY_STEPS, queue_list
from localstability.protocol import (
    FINISHED,
    GenerationProgress,
    GenerationStatus,
    GenerationStatusBody,
)

# What a front door answers while Redis can't be reached (503 with Retry-After, not a 500).
REDIS_OUTAGES: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)
RETRY_AFTER_S = 5


def queue_unavailable(exc: Exception) -> errors.ApiError:
    return errors.QueueUnavailable(
        f"the job queue is unreachable; retry shortly ({exc})",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


# KEYS: job hash, events channel. ARGV: allowed current statuses (comma-separated), the new
# status, then field/value pairs to set. Returns 1 when it moved, 0 when the job was in no
# allowed status (or has no hash).
_TRANSITION = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
local allowed = false
for word in string.gmatch(ARGV[1], '[^,]+') do
  if word == status then allowed = true end
end
if not allowed then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2])
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""

# KEYS: job hash, its steps channel, its cancel key. ARGV: step, total. The step is written
# and told only while the job is on the board. Returns 1 when a cancel was asked for.
_PROGRESS = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'step', ARGV[1], 'total', ARGV[2])
  redis.call('PUBLISH', KEYS[2], ARGV[1] .. '/' .. ARGV[2])
end
return redis.call('EXISTS', KEYS[3])
"""

# KEYS: queued set, the organization's in-flight set, job hash. ARGV: member, max queued,
# max per organization, now, then the hash's field/value pairs. Returns 1 (the queue is
# full), 2 (the organization has its most in flight), 3 (the id is in flight), or, admitted,
# 100 + how many of the organization's jobs were in flight before it.
_ADMIT = """
if redis.call('EXISTS', KEYS[3]) == 1 then
  local status = redis.call('HGET', KEYS[3], 'status')
  if status == 'queued' or status == 'running' then return 3 end
end
if tonumber(ARGV[2]) > 0 and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 1 end
if tonumber(ARGV[3]) > 0 and redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[3]) then return 2 end
local before = redis.call('SCARD', KEYS[2])
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]) end
return 100 + before
"""


@dataclass(frozen=True)
class BoardEntry:
    """A generation as the board says it is."""

    key: GenerationKey
    status: GenerationStatus
    step: int = 0
    total: int = 0
    batch_size: int = 0
    error_name: str | None = None
    error: str | None = None
    spec: str = ""  # the JobSpec's JSON
    started: float | None = None  # wall-clock: its pipeline call began, its images were made
    made: float | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def view(self) -> GenerationStatusBody:
        return GenerationStatusBody(
            id=self.key[1],
            status=self.status.value,
            progress=GenerationProgress(step=self.step, total=self.total),
            batch_size=self.batch_size or None,
        )

    def exception(self) -> errors.ApiError:
        """The error the generation ended with (failed or cancelled)."""
        if self.status == GenerationStatus.CANCELLED:
            return errors.GenerationCancelled(
                self.error or f"generation {self.key[1]} was cancelled"
            )
        cls = errors.error_class(self.error_name or "") or errors.ServerError
        return cls(self.error or f"generation {self.key[1]} failed")

    @classmethod
    def from_hash(cls, key: GenerationKey, fields: dict[str, str]) -> BoardEntry | None:
        """The entry of a job hash; None for none, or for a partial one (a step written
        after Redis lost the job)."""
        if "status" not in fields:
            return None
        return cls(
            key=key,
            status=GenerationStatus(fields["status"]),
            step=int(fields.get("step") or 0),
            total=int(fields.get("total") or 0),
            batch_size=int(fields.get("batch_size") or 0),
            error_name=fields.get("error_name") or None,
            error=fields.get("error") or None,
            spec=fields.get("spec", ""),
            started=float(fields["started"]) if fields.get("started") else None,
            made=float(fields["made"]) if fields.get("made") else None,
        )


class JobBoard:
    """The board's keys and moves, for API replicas (async readers) and workers (sync)."""

    def __init__(self, url: str, prefix: str = "localstability:", result_ttl_s: float = 600):
        self.url = url
        self.prefix = prefix
        self.result_ttl_s = result_ttl_s
        self.sync = redis.Redis.from_url(url, decode_responses=True)
        self._async: aioredis.Redis | None = None
        self._transition = self.sync.register_script(_TRANSITION)
        self._admit = self.sync.register_script(_ADMIT)
        self._progress = self.sync.register_script(_PROGRESS)

    @property
    def aio(self) -> aioredis.Redis:
        """The async client (made on first use, in the event loop that uses it)."""
        if self._async is None:
            self._async = aioredis.Redis.from_url(self.url, decode_responses=True)
        return self._async

    async def close(self) -> None:
        if self._async is not None:
            await self._async.aclose()
            self._async = None
        self.sync.close()

    # -- keys ------------------------------------------------------------------------------

    @staticmethod
    def member(key: GenerationKey) -> str:
        return f"{key[0]}:{key[1]}"

    def job_key(self, key: GenerationKey) -> str:
        return self._job_key(self.member(key))

    def _job_key(self, member: str) -> str:
        return f"{self.prefix}job:{member}"

    def channel(self, key: GenerationKey, steps: bool = True) -> str:
        """Where a job's changes are told: every change (`steps`), or its status moves only
        (what a waiter for the result needs: no wake-up at every step)."""
        kind = "events" if steps else "state"
        return f"{self.prefix}{kind}:{self.member(key)}"

    def cancel_key(self, key: GenerationKey) -> str:
        return f"{self.prefix}cancel:{self.member(key)}"

    def queued_key(self) -> str:
        return f"{self.prefix}queued"

    def inflight_key(self, organization_id: str) -> str:
        return f"{self.prefix}inflight:{organization_id}"

    # -- admission (API replicas) ----------------------------------------------------------

    def admit(self, spec: JobSpec, max_queued: int, max_per_org: int) -> int:
        """Put the job on the board as queued, or raise QueueFull, TooManyJobs or
        DuplicateGenerationId, deployment-wide. Returns how many of the organization's jobs
        were queued or running before it (its rank, for fair order)."""
        key = spec.key
        fields = ["status", "queued", "step", "0", "total", str(spec.steps), "spec", spec.to_json()]
        answer = self._admit(
            keys=[self.queued_key(), self.inflight_key(key[0]), self.job_key(key)],
            args=[self.member(key), max_queued, max_per_org, time.time(), *fields],
        )
        if answer == 1:
            raise queue_full(max_queued)
        if answer == 2:
            raise too_many_jobs(key[0], max_per_org)
        if answer == 3:
            raise duplicate_id(key[1])
        return int(answer) - 100

    def withdraw(self, key: GenerationKey) -> None:
        """Take a job that was never queued (its reservation failed) off the board."""
        pipe = self.sync.pipeline()
        pipe.zrem(self.queued_key(), self.member(key))
        pipe.srem(self.inflight_key(key[0]), self.member(key))
        pipe.delete(self.job_key(key))
        pipe.execute()

    # -- moves (any process) ---------------------------------------------------------------

    def move(
        self,
        key: GenerationKey,
        allowed: tuple[GenerationStatus, ...],
        to: GenerationStatus,
        **fields: Any,
    ) -> bool:
        """`allowed` -> `to` (and the fields set) if the job is in one of `allowed`; then
        its admission entries follow and its new state is published. True if it moved."""
        pairs: list[Any] = []
        for name, value in fields.items():
            pairs += [name, "" if value is None else str(value)]
        moved = self._transition(
            keys=[self.job_key(key)],
            args=[",".join(s.value for s in allowed), to.value, *pairs],
        )
        if not moved:
            return False
        pipe = self.sync.pipeline()
        if to != GenerationStatus.QUEUED:
            pipe.zrem(self.queued_key(), self.member(key))
        if to in FINISHED:
            pipe.srem(self.inflight_key(key[0]), self.member(key))
            pipe.expire(self.job_key(key), max(1, int(self.result_ttl_s)))
            pipe.delete(self.cancel_key(key))
        pipe.execute()
        self.publish(key)
        return True

    def interrupted(self, keys: list[GenerationKey], error: errors.ApiError) -> None:
        """These were refunded because their worker died: they failed with `error`."""
        for key in keys:
            self.move(
                key,
                (GenerationStatus.QUEUED, GenerationStatus.RUNNING),
                GenerationStatus.FAILED,
                error_name=error.name,
                error=error.message,
            )

    def progress(self, key: GenerationKey, step: int, total: int) -> bool:
        """A running job's progress, told to the watchers of its steps; whether a cancel was
        asked for (one round trip in all)."""
        keys = [self.job_key(key), self.channel(key), self.cancel_key(key)]
        return bool(self._progress(keys=keys, args=[step, total]))

    def publish(self, key: GenerationKey) -> None:
        """A status move, told on both channels (the message says that something changed;
        the hash says what)."""
        pipe = self.sync.pipeline()
        pipe.publish(self.channel(key), "moved")
        pipe.publish(self.channel(key, steps=False), "moved")
        pipe.execute()

    def missing(self, keys: list[GenerationKey]) -> list[GenerationKey]:
        """Those of `keys` that are not on the board (Redis lost them)."""
        pipe = self.sync.pipeline()
        for key in keys:
            pipe.exists(self.job_key(key))
        return [key for key, found in zip(keys, pipe.execute(), strict=True) if not found]

    def request_cancel(self, key: GenerationKey) -> None:
        self.sync.set(self.cancel_key(key), "1", ex=24 * 3600)

    def cancel_requested(self, key: GenerationKey) -> bool:
        return bool(self.sync.exists(self.cancel_key(key)))

    # -- workers and queues ----------------------------------------------------------------

    def worker_key(self, runner: str) -> str:
        return f"{self.prefix}workers:{runner}"

    def beat(
        self, runner: str, host: str, pid: int, engines: list[str], running: list[str], ttl_s: float
    ) -> None:
        """A worker says it lives (its entry goes after `ttl_s` without a beat)."""
        key = self.worker_key(runner)
        pipe = self.sync.pipeline()
        pipe.delete(key)
        pipe.hset(
            key,
            mapping={
                "host": host,
                "pid": pid,
                "engines": ",".join(engines),
                "running": ",".join(running),
                "seen": time.time(),
            },
        )
        pipe.expire(key, max(1, int(ttl_s)))
        pipe.execute()

    def waiting(self, limit: int = 256) -> list[JobSpec]:
        """The jobs queued on the board, oldest first (what a worker may batch with its own;
        each still to be taken by `move`, which one other process may win)."""
        members: list[str] = self.sync.zrange(self.queued_key(), 0, limit - 1)  # type: ignore[assignment]
        pipe = self.sync.pipeline()
        for member in members:
            pipe.hget(self._job_key(member), "spec")
        return [JobSpec.from_json(spec) for spec in pipe.execute() if spec]

    def leave(self, runner: str) -> None:
        self.sync.delete(self.worker_key(runner))

    async def cluster(self, queues: dict[str, str]) -> ClusterInfo:
        """The live workers, and the length of each engine's queue (`queues`: engine ->
        queue name)."""
        workers = []
        async for key in self.aio.scan_iter(match=f"{self.prefix}workers:*"):
            fields: dict[str, str] = await self.aio.hgetall(key)  # type: ignore[assignment]
            if not fields:
                continue
            workers.append(
                WorkerInfo(
                    id=key.removeprefix(f"{self.prefix}workers:"),
                    host=fields.get("host", ""),
                    pid=int(fields.get("pid") or 0),
                    engines=[e for e in fields.get("engines", "").split(",") if e],
                    running=[g for g in fields.get("running", "").split(",") if g],
                    seen_s_ago=round(max(0.0, time.time() - float(fields.get("seen") or 0)), 3),
                )
            )
        lengths = {}
        for engine, name in queues.items():
            lists = [queue_list(name, priority) for priority in PRIORITY_STEPS]
            lengths[engine] = sum([int(await self.aio.llen(key)) for key in lists])
        return ClusterInfo(
            backend="celery",
            workers=sorted(workers, key=lambda w: (w.host, w.pid)),
            queues=[QueueInfo(engine_id=e, queued=n) for e, n in lengths.items()],
            queued=int(await self.aio.zcard(self.queued_key())),
            running=sum(len(w.running) for w in workers),
        )

    # -- reading (API replicas, async) -----------------------------------------------------

    async def aentry(self, key: GenerationKey) -> BoardEntry | None:
        fields: dict[str, str] = await self.aio.hgetall(self.job_key(key))  # type: ignore[assignment]
        return BoardEntry.from_hash(key, fields)

    async def watch(self, key: GenerationKey, steps: bool = True) -> AsyncIterator[BoardEntry]:
        """The job's entry now, then at every change (every status move only, without
        `steps`), until it has ended (or left the board)."""
        pubsub = self.aio.pubsub()
        await pubsub.subscribe(self.channel(key, steps))
        try:
            entry = await self.aentry(key)
            while entry is not None:
                yield entry
                if entry.finished:
                    return
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                # Each message says a change happened; the hash says what it is now (a
                # message lost while subscribing is made good by the periodic read).
                if message is None or message.get("type") == "message":
                    entry = await self.aentry(key)
        finally:
            await pubsub.unsubscribe()
            await pubsub.aclose()


class RedisArtifactStore:
    """The artifact store of a scale-out deployment: every replica and worker reads and
    writes the same images; Redis expires them."""

    def __init__(self, url: str, prefix: str = "localstability:") -> None:
        self.client = redis.Redis.from_url(url)
        self.prefix = f"{prefix}artifact:"

    def put(self, key: str, data: bytes, ttl_s: float) -> None:
        self.client.set(self.prefix + key, data, px=max(1, int(ttl_s * 1000)))

    def get(self, key: str) -> bytes | None:
        data = self.client.get(self.prefix + key)
        return data if isinstance(data, bytes) else None

    def expire(self, key: str, ttl_s: float) -> None:
        if ttl_s <= 0:
            self.client.delete(self.prefix + key)
        else:
            self.client.pexpire(self.prefix + key, int(ttl_s * 1000))
