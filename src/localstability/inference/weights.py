"""Which model family a set of weights belongs to, read from the weights themselves: a
diffusers folder's model_index.json and text encoder config, a single .safetensors file's
tensor names (its header only; nothing is loaded), or a Hub repo's files already in the local
cache. None when they don't say (or aren't there): the operator then names the family."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from safetensors import safe_open

from localstability.engines import Family

log = logging.getLogger(__name__)

# The first tensor-name prefix found decides, in this order (the original checkpoints' layout:
# SD 3.5's MMDiT joint blocks, FLUX.1's double blocks (the Black Forest Labs file, with or
# without the ComfyUI prefix), SDXL's second text encoder, SD 2's OpenCLIP, SD 1's CLIP).
SINGLE_FILE_MARKERS = (
    ("model.diffusion_model.joint_blocks.", Family.SD3),
    ("model.diffusion_model.double_blocks.", Family.FLUX),
    ("double_blocks.", Family.FLUX),
    ("conditioner.embedders.1.", Family.SDXL),
    ("cond_stage_model.model.", Family.SD2),
    ("cond_stage_model.transformer.", Family.SD1),
)
# The text encoder's activation: SD 1.x's OpenAI CLIP uses quick_gelu, SD 2.x's OpenCLIP gelu
# (their widths differ too, 768 and 1024, but a reduced model keeps the activation only).
TEXT_ENCODER_ACTIVATIONS = {"quick_gelu": Family.SD1, "gelu": Family.SD2}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def family_of_pipeline(index: dict[str, Any], text_encoder: dict[str, Any] | None) -> Family | None:
    """The family of a diffusers pipeline, from its model_index.json and its text encoder's
    config.json."""
    name = str(index.get("_class_name", ""))
    if name.startswith("StableDiffusion3"):
        return Family.SD3
    if name.startswith("Flux"):
        return Family.FLUX
    if "XL" in name:
        return Family.SDXL
    if name in ("StableDiffusionUpscalePipeline", "StableDiffusionLatentUpscalePipeline"):
        return Family.LATENT_UPSCALER
    if name.startswith("StableDiffusion") and text_encoder is not None:
        return TEXT_ENCODER_ACTIVATIONS.get(str(text_encoder.get("hidden_act")))
    return None


def family_of_file(path: Path) -> Family | None:
    """The family of a single-file checkpoint (.safetensors), from its tensor names."""
    if path.suffix != ".safetensors":
        return None  # a pickle (.ckpt) is not opened just to look
    try:
        with safe_open(str(path), framework="pt") as weights:
            names = list(weights.keys())
    except Exception:
        log.warning("weights unreadable", extra={"path": str(path)}, exc_info=True)
        return None
    for prefix, family in SINGLE_FILE_MARKERS:
        if any(name.startswith(prefix) for name in names):
            return family
    return None


def _cached_hub_file(repo: str, filename: str) -> Path | None:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename, local_files_only=True))
    except Exception:
        return None


def detect_family(source: str) -> Family | None:
    """The family of the weights at `source` (a folder, a file, or a cached Hub repo)."""
    path = Path(source).expanduser()
    if path.is_file():
        return family_of_file(path)
    if path.is_dir():
        index = _read_json(path / "model_index.json")
        encoder = _read_json(path / "text_encoder" / "config.json")
    elif path.is_absolute() or source.count("/") != 1:
        return None  # neither on disk nor a repo id
    else:
        index_file = _cached_hub_file(source, "model_index.json")
        encoder_file = _cached_hub_file(source, "text_encoder/config.json")
        index = _read_json(index_file) if index_file else None
        encoder = _read_json(encoder_file) if encoder_file else None
    return None if index is None else family_of_pipeline(index, encoder)
