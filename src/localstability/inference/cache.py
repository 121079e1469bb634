"""The pipelines a process holds: one per weight source, shared by every request for it, and
at most a budget of them (`max_loaded_engines`, `max_loaded_bytes`), least recently used
unloaded first.

A load runs on a thread of its own (one load at a time in the process) while whoever asked
for it waits, checking its control: a job cancelled during a long load (or download) stops
waiting at once, and the load goes on for whoever asks next. `prefetch` starts a load nobody
waits for (the local backend's dispatcher, preloads at start).

The budget: before a load, the least recently used pipelines that nothing holds are unloaded
until the new one fits (by count, and by bytes where its size is known from an earlier load);
after it, until the measured bytes fit. A pipeline is held while a job runs on it (`holding`)
or while the dispatcher keeps a loaded one for the job that asked (`hold`, `release`): a held
pipeline is never unloaded, so the budget is exceeded only by pipelines in use, until they
are released. A single pipeline larger than the byte budget still loads (logged).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localstability import metrics
from localstability.config import Settings
from localstability.inference.control import NO_CONTROL, StepControl
from localstability.inference.devices import resolve_device, resolve_dtype
from localstability.inference.loader import WeightSource, load_pipeline

log = logging.getLogger(__name__)

Key = tuple[str, ...]

# How often a job that waits for a load looks whether it was cancelled.
LOAD_POLL_S = 0.1
# One load at a time in the process: two at once would race in diffusers' lazy imports (seen:
# "module 'diffusers' has no attribute 'StableDiffusionPipeline'") and hold two models' worth
# of memory while they read.
_ONE_LOAD = threading.Lock()


def held_bytes(value: Any) -> int:
    """The bytes of the parameters and buffers of the torch modules `value` holds (a diffusers
    pipeline's components, a spandrel model's module, or a module), each tensor counted once."""
    import torch

    modules: list[torch.nn.Module] = []
    if isinstance(value, torch.nn.Module):
        modules.append(value)
    for part in (getattr(value, "components", None) or {}).values():
        if isinstance(part, torch.nn.Module):
            modules.append(part)
    inner = getattr(value, "model", None)
    if isinstance(inner, torch.nn.Module):
        modules.append(inner)
    seen: set[tuple[str, int]] = set()
    total = 0
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            where = (str(tensor.device), tensor.data_ptr())
            if where in seen:
                continue
            seen.add(where)
            total += tensor.numel() * tensor.element_size()
    return total


@dataclass
class _Loaded:
    engine_id: str
    value: Any
    bytes: int
    holds: int = 0


class PipelineCache:
    """Pipelines loaded once per weight source (`WeightSource.cache_key`), least recently used
    unloaded beyond the budget (0: no limit)."""

    def __init__(
        self,
        device: str,
        dtype: Any,
        offline: bool,
        models_dir: Path,
        max_loaded: int = 0,
        max_bytes: int = 0,
    ) -> None:
        self.device = device
        self.dtype = dtype
        self.offline = offline
        self.models_dir = models_dir
        self.max_loaded = max_loaded
        self.max_bytes = max_bytes
        self._loaded: OrderedDict[Key, _Loaded] = OrderedDict()  # least recently used first
        self._sizes: dict[Key, int] = {}  # measured at each load
        self._lock = threading.Lock()
        self._loading: dict[Key, Future[Any]] = {}
        self._pins: dict[Key, int] = {}  # holds asked of loads in progress
        self._session = threading.local()

    @classmethod
    def for_settings(cls, settings: Settings) -> PipelineCache:
        """The cache for a deployment: its device and dtype, offline or not, its models dir,
        its budget."""
        device = resolve_device(settings.device)
        return cls(
            device,
            resolve_dtype(settings.dtype, device),
            settings.offline,
            settings.data_dir / "models",
            settings.max_loaded_engines,
            settings.max_loaded_bytes,
        )

    # -- getting ---------------------------------------------------------------------------

    def _pipeline_loader(self, source: WeightSource) -> Callable[[], Any]:
        return lambda: load_pipeline(source, self.device, self.dtype, self.offline)

    def get(self, source: WeightSource, control: StepControl = NO_CONTROL) -> Any:
        """The pipeline for `source`, loading it on first use (other callers wait for it)."""
        return self.get_or_load(source, self._pipeline_loader(source), control)

    def get_or_load(
        self, source: WeightSource, load: Callable[[], Any], control: StepControl = NO_CONTROL
    ) -> Any:
        """The cached model for `source`, or `load()` once (a failed load is tried again by
        the next caller). Inside `holding()`, it stays held until the block ends."""
        key = source.cache_key
        held = getattr(self._session, "keys", None)
        with self._lock:
            loaded = self._loaded.get(key)
            if loaded is not None:
                self._loaded.move_to_end(key)
                if held is not None:
                    loaded.holds += 1
                    held.append(key)
                return loaded.value
            # In a session, held from the moment it is stored (released at the session's
            # end, even if this wait is cancelled first).
            future = self._start(source, load, pin=held is not None)
            if held is not None:
                held.append(key)
        while True:
            control.check()
            try:
                return future.result(timeout=LOAD_POLL_S)
            except TimeoutError:
                if future.done():  # the load itself raised it
                    raise

    def prefetch(self, source: WeightSource, pin: bool = False) -> Future[Any]:
        """Load `source`'s pipeline in the background (nobody waits); the future is done when
        it is loaded (or failed). `pin`: hold it once loaded (the caller then releases it)."""
        with self._lock:
            loaded = self._loaded.get(source.cache_key)
            if loaded is None:
                return self._start(source, self._pipeline_loader(source), pin)
            if pin:
                loaded.holds += 1
            done: Future[Any] = Future()
            done.set_result(loaded.value)
            return done

    def _start(self, source: WeightSource, load: Callable[[], Any], pin: bool) -> Future[Any]:
        """The load of `source` in progress, started if none is (under the lock); `pin`: it is
        held once loaded, as it is stored (a pinned request may join a load in progress)."""
        key = source.cache_key
        if pin:
            self._pins[key] = self._pins.get(key, 0) + 1
        future = self._loading.get(key)
        if future is None:
            future = self._loading[key] = Future()
            threading.Thread(
                target=self._load,
                args=(source.engine_id, key, load, future),
                name=f"load-{source.engine_id}",
                daemon=True,
            ).start()
        return future

    # -- holding ---------------------------------------------------------------------------

    def loaded(self, source: WeightSource) -> bool:
        with self._lock:
            return source.cache_key in self._loaded

    def hold(self, source: WeightSource) -> bool:
        """Hold `source`'s pipeline if it is loaded (it is then not unloaded until released,
        and counts as just used); False if it is not loaded."""
        with self._lock:
            loaded = self._loaded.get(source.cache_key)
            if loaded is None:
                return False
            loaded.holds += 1
            self._loaded.move_to_end(source.cache_key)
            return True

    def release(self, source: WeightSource) -> None:
        """Give back one hold (of `hold`, or of a pinned `prefetch`)."""
        self._release([source.cache_key])

    def _release(self, keys: list[Key]) -> None:
        with self._lock:
            for key in keys:
                loaded = self._loaded.get(key)
                if loaded is not None and loaded.holds:
                    loaded.holds -= 1
                elif loaded is None and key in self._loading and self._pins.get(key):
                    self._pins[key] -= 1  # asked of a load still in progress
            unloaded = self._evict(extra=0, extra_bytes=0)
        self._free(unloaded)

    @contextmanager
    def holding(self) -> Iterator[None]:
        """Every pipeline this thread gets inside the block is held until it ends."""
        keys: list[Key] = []
        self._session.keys = keys
        try:
            yield
        finally:
            self._session.keys = None
            self._release(keys)

    # -- loading and unloading -------------------------------------------------------------

    def _load(
        self,
        engine_id: str,
        key: Key,
        load: Callable[[], Any],
        future: Future[Any],
    ) -> None:
        try:
            with _ONE_LOAD:
                with self._lock:
                    unloaded = self._evict(extra=1, extra_bytes=self._sizes.get(key, 0))
                self._free(unloaded)
                began = time.perf_counter()
                value = load()
                metrics.model_loaded(engine_id, time.perf_counter() - began)
                size = held_bytes(value)
        except BaseException as exc:
            with self._lock:
                del self._loading[key]
                self._pins.pop(key, None)
            future.set_exception(exc)
            return
        if self.max_bytes and size > self.max_bytes:
            log.warning(
                "pipeline larger than the memory budget alone: loaded anyway",
                extra={"engine_id": engine_id, "bytes": size, "max_loaded_bytes": self.max_bytes},
            )
        with self._lock:
            self._sizes[key] = size
            self._loaded[key] = _Loaded(engine_id, value, size, holds=self._pins.pop(key, 0))
            del self._loading[key]
            unloaded = self._evict(extra=0, extra_bytes=0, keep=key)
            self._report()
        log.info("pipeline loaded", extra={"engine_id": engine_id, "bytes": size})
        self._free(unloaded)
        future.set_result(value)

    def _over(self, extra: int, extra_bytes: int) -> bool:
        count = len(self._loaded) + extra
        size = sum(loaded.bytes for loaded in self._loaded.values()) + extra_bytes
        return bool(
            (self.max_loaded and count > self.max_loaded)
            or (self.max_bytes and size > self.max_bytes)
        )

    def _evict(
        self, extra: int, extra_bytes: int, keep: Key | None = None
    ) -> list[tuple[Key, _Loaded]]:
        """Take out the least recently used pipelines nothing holds while the budget, with
        `extra` more pipelines of `extra_bytes`, is exceeded (under the lock). Without a load
        to make room for, the most recently used one stays (one larger than the byte budget
        alone is not unloaded after each job)."""
        unloaded = []
        while self._over(extra, extra_bytes) and len(self._loaded) + extra > 1:
            coldest = next(
                (k for k, v in self._loaded.items() if not v.holds and k != keep),
                None,
            )
            if coldest is None:
                break  # all in use: over budget until they are released
            unloaded.append((coldest, self._loaded.pop(coldest)))
        if unloaded:
            self._report()
        return unloaded

    def _free(self, unloaded: list[tuple[Key, _Loaded]]) -> None:
        """Drop the unloaded pipelines and give their memory back (outside the lock)."""
        if not unloaded:
            return
        for _key, gone in unloaded:
            log.info(
                "pipeline unloaded (least recently used, over the memory budget)",
                extra={"engine_id": gone.engine_id, "bytes": gone.bytes},
            )
            metrics.pipeline_unloaded(gone.engine_id)
        del unloaded[:], gone
        gc.collect()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
        from localstability.inference.worker import release_memory

        release_memory()

    def _report(self) -> None:
        metrics.pipelines_held(
            len(self._loaded), sum(loaded.bytes for loaded in self._loaded.values())
        )
