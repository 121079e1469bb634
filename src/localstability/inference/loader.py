"""Load a diffusers pipeline from a weight source: a Hugging Face repo id, a local diffusers
folder, or a single .safetensors/.ckpt file. Every failure becomes EngineUnavailable, which
names the engine and says how to provide the weights."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localstability import errors
from localstability.engines import Family
from localstability.inference.families import NoPipeline, UnknownFamily, adapter_for

log = logging.getLogger(__name__)

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class WeightSource:
    """Where one engine's weights come from. Engines with equal sources share one pipeline.

    `role` is the pipeline role it loads as (families.Role: "base" is what an engine loads,
    a dedicated inpainting checkpoint loads as "inpaint"); the family's adapter says which
    diffusers class that is."""

    engine_id: str
    family: Family
    source: str
    config: str | None = None
    variant: str | None = None
    role: str = "base"

    @property
    def kind(self) -> str:
        """'packaged', 'folder', 'file', 'hub-file' (org/repo/path in a Hub repo) or 'hub'."""
        if self.source.startswith(PACKAGED_PREFIX):
            return "packaged"
        path = Path(self.source).expanduser()
        if path.is_dir():
            return "folder"
        if path.suffix.lower() in SINGLE_FILE_SUFFIXES or path.is_file():
            return "file"
        if self.source.startswith(("/", ".", "~")):
            return "folder"
        return "hub-file" if self.source.count("/") >= 2 else "hub"

    @property
    def cache_key(self) -> tuple[str, ...]:
        return (self.family, self.source, self.config or "", self.variant or "", self.role)

    def is_ready(self, models_dir: Path) -> bool:
        """Whether the weights are on this machine (a local path, converted, or Hub-cached)."""
        kind = self.kind
        if kind == "packaged":
            return packaged_path(self, models_dir).is_file()
        if kind in ("hub", "hub-file"):
            from huggingface_hub import try_to_load_from_cache

            repo_id, filename = (
                hub_file_parts(self.source)
                if kind == "hub-file"
                else (
                    self.source,
                    "model_index.json",
                )
            )
            return isinstance(try_to_load_from_cache(repo_id, filename), str)
        return Path(self.source).expanduser().exists()


PACKAGED_PREFIX = "packaged:"


def packaged_path(source: WeightSource, models_dir: Path) -> Path:
    """Where a packaged (converted-on-first-use) model's safetensors file lives."""
    return models_dir / f"{source.source.removeprefix(PACKAGED_PREFIX)}.safetensors"


def hub_file_parts(source: str) -> tuple[str, str]:
    """'org/repo/path/file.pth' -> ('org/repo', 'path/file.pth')."""
    org, repo, filename = source.split("/", 2)
    return f"{org}/{repo}", filename


def unavailable(source: WeightSource, reason: str) -> errors.EngineUnavailable:
    return errors.EngineUnavailable(
        f"Engine {source.engine_id} is not available: its weights could not be loaded from "
        f"'{source.source}' ({reason}). Provide the weights: run `localstability models pull "
        f"{source.engine_id}` on a machine that can reach the Hugging Face Hub, or set "
        f"[engines.{source.engine_id}] source = a local diffusers folder or a .safetensors "
        "file in the configuration."
    )


# What a library's error says of a traceback that a client of ours never sees (diffusers,
# when the Hub can't be asked): dropped, and the error's cause given instead.
_SEE_TRACEBACK = re.compile(r"\s*Please check out the root cause in the stacktrace above\.?", re.I)


def reason_of(exc: BaseException) -> str:
    """The exception's first line (and its cause's, where it points at a traceback)."""
    message = str(exc)
    text = _SEE_TRACEBACK.sub("", message).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
    if _SEE_TRACEBACK.search(message) and exc.__cause__ is not None:
        line += f"; its cause: {reason_of(exc.__cause__)}"
    return line


def load_pipeline(source: WeightSource, device: str, dtype: Any, offline: bool) -> Any:
    """Load the pipeline of `source`'s family for its role (the family's adapter names the
    class) from `source` onto `device`."""
    try:
        adapter = adapter_for(source.family)
        pipeline_class = adapter.pipeline_class(source.role)
        dtype = adapter.load_dtype(dtype)
    except UnknownFamily as exc:
        raise unavailable(source, str(exc)) from exc
    except NoPipeline as exc:
        reason = f"family {source.family} has no {source.role} pipeline"
        raise unavailable(source, reason) from exc
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
        raise unavailable(source, reason_of(exc)) from exc
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def download(source: WeightSource, offline: bool, models_dir: Path) -> Path:
    """Make `source` available on this machine and return its local path.

    Hub repos and Hub files are fetched into the Hub cache (with progress bars), packaged
    models are converted into `models_dir`, local paths are checked.
    """
    kind = source.kind
    try:
        if kind == "packaged":
            from localstability.upscalers.ncnn import convert_packaged_model

            return convert_packaged_model(
                source.source.removeprefix(PACKAGED_PREFIX),
                packaged_path(source, models_dir),
                progress=lambda message: log.info(message, extra={"engine_id": source.engine_id}),
            )
        if kind == "hub-file":
            from huggingface_hub import hf_hub_download

            repo_id, filename = hub_file_parts(source.source)
            return Path(hf_hub_download(repo_id, filename, local_files_only=offline))
        if kind == "hub":
            from diffusers import DiffusionPipeline

            return Path(
                DiffusionPipeline.download(
                    source.source, variant=source.variant, local_files_only=offline
                )
            )
    except Exception as exc:  # reported with the same guidance as a failed load
        raise unavailable(source, reason_of(exc)) from exc
    path = Path(source.source).expanduser()
    if not path.exists():
        raise unavailable(source, f"no such path {path}")
    return path
