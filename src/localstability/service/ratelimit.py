"""Per-key rate limits: at most N requests in any sliding window of W seconds.

`RateLimiter` counts in this process (one server); `RedisRateLimiter` counts in Redis, for
every API replica of a scale-out deployment together.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from localstability import errors


class Limiter(Protocol):
    def check(self, key_id: int) -> None:
        """Count one request for `key_id`, or raise 429 rate_limited with Retry-After."""


def limited(requests: int, window_s: float, retry_after: int) -> errors.RateLimited:
    return errors.RateLimited(
        f"rate limit exceeded: {requests} requests every {window_s:g} seconds; retry in "
        f"{retry_after} s",
        headers={"Retry-After": str(retry_after)},
    )


# KEYS: the key's log (a sorted set of request times, ms). ARGV: now (ms), window (ms), the
# most requests, a unique member. Returns 0 when counted, else the ms until the oldest leaves.
_SLIDING_WINDOW = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[2]))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + tonumber(ARGV[2]) - tonumber(ARGV[1]))
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 0
"""


class RedisRateLimiter:
    """The same sliding window, kept in Redis: one count for all API replicas."""

    def __init__(self, url: str, prefix: str, requests: int, window_s: float) -> None:
        import redis

        self.requests = requests
        self.window_s = window_s
        self.prefix = f"{prefix}ratelimit:"
        self.client = redis.Redis.from_url(url)
        self._script = self.client.register_script(_SLIDING_WINDOW)
        self._counter = 0
        self._lock = threading.Lock()

    def check(self, key_id: int) -> None:
        if self.requests <= 0:
            return
        with self._lock:
            self._counter += 1
            member = f"{time.time_ns()}-{id(self)}-{self._counter}"
        now_ms = int(time.time() * 1000)
        wait_ms = int(
            self._script(
                keys=[f"{self.prefix}{key_id}"],
                args=[now_ms, int(self.window_s * 1000), self.requests, member],
            )
        )
        if wait_ms:
            raise limited(self.requests, self.window_s, max(1, math.ceil(wait_ms / 1000)))


class RateLimiter:
    """A sliding-window log per key; `check` raises 429 rate_limited with Retry-After."""

    def __init__(
        self, requests: int, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.requests = requests
        self.window_s = window_s
        self.clock = clock
        self._hits: dict[int, deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, key_id: int) -> None:
        """Count one request for `key_id`, or refuse it when the window is full."""
        if self.requests <= 0:
            return
        now = self.clock()
        with self._lock:
            hits = self._hits.setdefault(key_id, deque())
            while hits and hits[0] <= now - self.window_s:
                hits.popleft()
            if len(hits) >= self.requests:
                retry_after = max(1, math.ceil(hits[0] + self.window_s - now))
                raise limited(self.requests, self.window_s, retry_after)
            hits.append(now)
