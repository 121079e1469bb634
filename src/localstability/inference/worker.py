"""The inference worker: one thread per device, so the event loop never blocks on inference."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

_LIBC_NAME = ctypes.util.find_library("c")
_LIBC = ctypes.CDLL(_LIBC_NAME) if _LIBC_NAME else None


def release_memory() -> None:
    """Hand freed activation memory back to the OS between jobs (glibc keeps it otherwise,
    and the next job's allocations then fragment on top of it). No gc.collect(): tensors are
    freed by reference counting, and a full collection costs about 0.2 s per job."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


class InferenceWorker:
    """Runs blocking inference calls one at a time on a dedicated thread."""

    def __init__(self, name: str = "inference", trim_memory: bool = True) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.trim_memory = trim_memory

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._job, fn, args)

    def _job(self, fn: Callable[..., T], args: tuple[object, ...]) -> T:
        try:
            return fn(*args)
        finally:
            if self.trim_memory:
                release_memory()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
