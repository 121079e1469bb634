"""Per-key rate limits: at most N requests in any sliding window of W seconds.

In-process (one server); a multi-server deployment will need a shared store.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

from localstability import errors


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
                raise errors.RateLimited(
                    f"rate limit exceeded: {self.requests} requests every "
                    f"{self.window_s:g} seconds; retry in {retry_after} s",
                    headers={"Retry-After": str(retry_after)},
                )
            hits.append(now)
