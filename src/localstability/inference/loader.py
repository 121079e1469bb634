"""Load a diffusers pipeline from a weight source: a Hugging Face repo id, a local diffusers
folder, or a single .safetensors/.ckpt file. Every failure becomes EngineUnavailable, which
names the engine and says how to provide the weights."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localstability import errors
from localstability.engines import Family

log = logging.getLogger(__name__)

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")

# (family, pipeline role) -> diffusers class. "base" is what an engine loads; a dedicated
# inpainting checkpoint loads as "inpaint".
PIPELINE_CLASSES: dict[tuple[Family, str], str] = {
    (Family.SD1, "base"): "StableDiffusionPipeline",
    (Family.SD2, "base"): "StableDiffusionPipeline",
    (Family.SDXL, "base"): "StableDiffusionXLPipeline",
    (Family.SD1, "inpaint"): "StableDiffusionInpaintPipeline",
    (Family.SD2, "inpaint"): "StableDiffusionInpaintPipeline",
    (Family.SDXL, "inpaint"): "StableDiffusionXLInpaintPipeline",
    (Family.LATENT_UPSCALER, "base"): "StableDiffusionUpscalePipeline",
}


@dataclass(frozen=True)
class WeightSource:
    """Where one engine's weights come from. Engines with equal sources share one pipeline."""

    engine_id: str
    family: Family
    source: str
    config: str | None = None
    variant: str | None = None
    role: str = "base"

    @property
    def kind(self) -> str:
        """'folder', 'file' or 'hub'."""
        path = Path(self.source).expanduser()
        if path.is_dir():
            return "folder"
        if path.suffix.lower() in SINGLE_FILE_SUFFIXES or path.is_file():
            return "file"
        if self.source.startswith(("/", ".", "~")):
            return "folder"
        return "hub"

    @property
    def cache_key(self) -> tuple[str, ...]:
        return (self.family, self.source, self.config or "", self.variant or "", self.role)

    def is_ready(self) -> bool:
        """Whether the weights are on this machine (a local path, or in the Hub cache)."""
        kind = self.kind
        if kind != "hub":
            return Path(self.source).expanduser().exists()
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(self.source, "model_index.json")
        return isinstance(cached, str)


def unavailable(source: WeightSource, reason: str) -> errors.EngineUnavailable:
    return errors.EngineUnavailable(
        f"Engine {source.engine_id} is not available: its weights could not be loaded from "
        f"'{source.source}' ({reason}). Provide the weights: run `localstability models pull "
        f"{source.engine_id}` on a machine that can reach the Hugging Face Hub, or set "
        f"[engines.{source.engine_id}] source = a local diffusers folder or a .safetensors "
        "file in the configuration."
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def load_pipeline(source: WeightSource, device: str, dtype: Any, offline: bool) -> Any:
    """Load the family's text-to-image pipeline from `source` onto `device`."""
    import diffusers

    class_name = PIPELINE_CLASSES.get((source.family, source.role))
    if class_name is None:
        raise unavailable(source, f"family {source.family} has no {source.role} pipeline")
    pipeline_class = getattr(diffusers, class_name)
    kind = source.kind
    log.info("loading weights", extra={"engine_id": source.engine_id, "source": source.source})
    try:
        if kind == "file":
            path = Path(source.source).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"no such file {path}")
            pipe = pipeline_class.from_single_file(
                str(path), config=source.config, dtype=dtype, local_files_only=offline
            )
        elif kind == "folder":
            path = Path(source.source).expanduser()
            if not (path / "model_index.json").is_file():
                raise FileNotFoundError(f"{path} is not a diffusers folder (no model_index.json)")
            pipe = pipeline_class.from_pretrained(str(path), dtype=dtype)
        else:
            pipe = pipeline_class.from_pretrained(
                source.source,
                dtype=dtype,
                variant=source.variant,
                local_files_only=offline,
            )
    except errors.ApiError:
        raise
    except Exception as exc:  # any loader failure is reported to the client as unavailable
        log.warning(
            "engine weights unavailable",
            extra={"engine_id": source.engine_id, "source": source.source, "error": repr(exc)},
        )
        raise unavailable(source, _first_line(exc)) from exc
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def download(source: WeightSource, offline: bool) -> Path:
    """Fetch a hub source into the local cache (with progress bars); local sources are checked."""
    kind = source.kind
    if kind != "hub":
        path = Path(source.source).expanduser()
        if not path.exists():
            raise unavailable(source, f"no such path {path}")
        return path
    from diffusers import DiffusionPipeline

    try:
        return Path(
            DiffusionPipeline.download(
                source.source, variant=source.variant, local_files_only=offline
            )
        )
    except Exception as exc:  # reported with the same guidance as a failed load
        raise unavailable(source, _first_line(exc)) from exc


class PipelineCache:
    """Pipelines loaded once per weight source and shared by every request for them."""

    def __init__(self, device: str, dtype: Any, offline: bool) -> None:
        self.device = device
        self.dtype = dtype
        self.offline = offline
        self._pipelines: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()
        self._key_locks: dict[tuple[str, ...], threading.Lock] = {}

    def get(self, source: WeightSource) -> Any:
        """The pipeline for `source`, loading it on first use (other callers wait for it)."""
        return self.get_or_load(
            source, lambda: load_pipeline(source, self.device, self.dtype, self.offline)
        )

    def get_or_load(self, source: WeightSource, load: Callable[[], Any]) -> Any:
        """The cached model for `source`, or `load()` once under a per-source lock."""
        key = source.cache_key
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            if key not in self._pipelines:
                self._pipelines[key] = load()
            return self._pipelines[key]

    def loaded(self) -> int:
        return len(self._pipelines)
