"""The artifact store: a job's uploaded images and its results, as bytes under a key, kept
for a time to live.

Its interface is three calls (`put`, `get`, `expire`), so that a store shared by several
machines (Redis, an object store) can take its place. Two implementations: in this process's
memory (the default) and files on local disk. Either keeps a TTL exactly: `get` answers None
from the moment a key expires, whatever else happens.

Results are a manifest (each image's seed and finish reason) and one PNG per image, under a
prefix of the generation (`result_prefix`); uploads are PNGs under `input_prefix`.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import io
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from localstability.protocol import FinishReason

# How long uploads wait for their job at most (a job that never runs: its inputs go then).
INPUT_TTL_S = 24 * 3600.0


@dataclass(frozen=True)
class Artifact:
    """One generated image, PNG-encoded, with the seed that made it."""

    png: bytes
    seed: int
    finish_reason: FinishReason
    filtered_by: str | None = None  # what the output filter found, when it blurred the image


def encode_png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def to_artifacts(images: list[Any], check: Callable[[], None] = lambda: None) -> list[Artifact]:
    """PNG artifacts of generated images (`inference.diffusion.GeneratedImage`); `check` runs
    before each one (a cancelled job raises there)."""
    artifacts = []
    for generated in images:
        check()
        reason = FinishReason.CONTENT_FILTERED if generated.nsfw else FinishReason.SUCCESS
        png = encode_png(generated.image)
        artifacts.append(Artifact(png, generated.seed, reason, generated.filtered_by))
    return artifacts


class ArtifactStore(Protocol):
    def put(self, key: str, data: bytes, ttl_s: float) -> None:
        """Keep `data` under `key` for `ttl_s` seconds (replacing what was there)."""

    def get(self, key: str) -> bytes | None:
        """The bytes under `key`, or None when there are none or they expired."""

    def expire(self, key: str, ttl_s: float) -> None:
        """`key` expires `ttl_s` seconds from now (0: now); nothing if there is no such key."""


class MemoryArtifactStore:
    """In this process's memory; expired entries are dropped as they are found and by a sweep
    at each `put`, so memory holds only what is live."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._items: dict[str, tuple[bytes, float]] = {}
        self._deadlines: list[tuple[float, str]] = []  # a heap; stale entries are skipped
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes, ttl_s: float) -> None:
        now = self._clock()
        with self._lock:
            self._sweep(now)
            self._set(key, data, now + ttl_s)

    def get(self, key: str) -> bytes | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if item[1] <= self._clock():
                del self._items[key]
                return None
            return item[0]

    def expire(self, key: str, ttl_s: float) -> None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._set(key, item[0], self._clock() + ttl_s)

    def keys(self) -> list[str]:
        """The live keys (tests, diagnostics)."""
        now = self._clock()
        with self._lock:
            return [key for key, (_, deadline) in self._items.items() if deadline > now]

    def _set(self, key: str, data: bytes, deadline: float) -> None:
        self._items[key] = (data, deadline)
        heapq.heappush(self._deadlines, (deadline, key))

    def _sweep(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, key = heapq.heappop(self._deadlines)
            item = self._items.get(key)
            if item is not None and item[1] == deadline:
                del self._items[key]


class DiskArtifactStore:
    """Files in a folder: one per key (named by the key's SHA-256), its modification time set
    to its deadline. Survives a restart of the process; a sweep at each `put` (at most once a
    minute) removes what expired."""

    SWEEP_EVERY_S = 60.0

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._last_sweep = 0.0

    def _path(self, key: str) -> Path:
        name = hashlib.sha256(key.encode()).hexdigest()
        return self.root / name[:2] / name

    def put(self, key: str, data: bytes, ttl_s: float) -> None:
        path = self._path(key)
        path.parent.mkdir(exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        temporary.write_bytes(data)
        deadline = time.time() + ttl_s
        os.utime(temporary, (deadline, deadline))
        temporary.replace(path)
        if time.monotonic() - self._last_sweep > self.SWEEP_EVERY_S:
            self._last_sweep = time.monotonic()
            self._sweep()

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            if path.stat().st_mtime <= time.time():
                path.unlink(missing_ok=True)
                return None
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def expire(self, key: str, ttl_s: float) -> None:
        path = self._path(key)
        if ttl_s <= 0:
            path.unlink(missing_ok=True)
            return
        deadline = time.time() + ttl_s
        with contextlib.suppress(FileNotFoundError):
            os.utime(path, (deadline, deadline))

    def _sweep(self) -> None:
        now = time.time()
        for path in self.root.glob("*/*"):
            try:
                if path.suffix != ".tmp" and path.stat().st_mtime <= now:
                    path.unlink(missing_ok=True)
            except FileNotFoundError:
                continue


# -- what jobs keep in a store --------------------------------------------------------------


def input_key(organization_id: str, generation_id: str, name: str) -> str:
    return f"input/{organization_id}/{generation_id}/{name}"


def result_prefix(organization_id: str, generation_id: str) -> str:
    return f"result/{organization_id}/{generation_id}"


def put_result(store: ArtifactStore, prefix: str, artifacts: list[Artifact], ttl_s: float) -> None:
    """The images first, then the manifest that names them: a reader that finds the manifest
    finds the images."""
    for index, artifact in enumerate(artifacts):
        store.put(f"{prefix}/{index}.png", artifact.png, ttl_s)
    manifest = [{"seed": a.seed, "finishReason": a.finish_reason.value} for a in artifacts]
    store.put(f"{prefix}/manifest.json", json.dumps(manifest).encode(), ttl_s)


def get_result(store: ArtifactStore, prefix: str) -> list[Artifact] | None:
    """A generation's artifacts, or None once they expired (or never were here)."""
    manifest = store.get(f"{prefix}/manifest.json")
    if manifest is None:
        return None
    artifacts = []
    for index, entry in enumerate(json.loads(manifest)):
        png = store.get(f"{prefix}/{index}.png")
        if png is None:
            return None
        artifacts.append(Artifact(png, entry["seed"], FinishReason(entry["finishReason"])))
    return artifacts
