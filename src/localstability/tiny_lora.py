"""Tiny LoRA adapters for the tiny test pipelines, made offline with PEFT.

Each is a real adapter file: PEFT's LoRA layers on the pipeline's attention projections (the
UNet's, and the text encoders' when asked), their low-rank matrices drawn at random (PEFT's
`init_lora_weights=False`: a fresh adapter that is not the identity) and scaled so that its
effect shows in a few-step 64 px image, saved with the pipeline class's `save_lora_weights`
in the diffusers format that `load_lora_weights` reads, as a trainer's adapter is. Building the
same adapter twice gives the same file. TEST FIXTURES: they change the pixels, nothing more.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def _add_adapter(model: Any, targets: list[str], rank: int, scale: float) -> dict[str, Any]:
    """Random LoRA layers on `model`'s `targets`: their state dict in diffusers' key format."""
    import torch
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    # PEFT's own injection (transformers' add_adapter asks for a newer PEFT than PyPI has).
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=False)
    inject_adapter_in_model(config, model)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.mul_(scale)
    state: dict[str, Any] = convert_state_dict_to_diffusers(get_peft_model_state_dict(model))
    return state


def build_tiny_lora(
    pipeline_folder: Path,
    dest: Path,
    seed: int,
    text_encoders: bool = False,
    rank: int = 4,
    scale: float = 4.0,
) -> Path:
    """A LoRA adapter for the diffusers pipeline in `pipeline_folder`, written to the
    `.safetensors` file `dest`: on the UNet, and on its text encoders if `text_encoders`."""
    import torch
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(pipeline_folder)
    layers: dict[str, Any] = {}
    torch.manual_seed(seed)
    layers["unet_lora_layers"] = _add_adapter(pipe.unet, UNET_TARGETS, rank, scale)
    if text_encoders:
        for component in ("text_encoder", "text_encoder_2"):
            model = getattr(pipe, component, None)
            if model is not None:
                layers[f"{component}_lora_layers"] = _add_adapter(model, TEXT_TARGETS, rank, scale)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as scratch:
        type(pipe).save_lora_weights(scratch, weight_name="adapter.safetensors", **layers)
        Path(scratch, "adapter.safetensors").replace(dest)
    return dest


# The adapters `models make-tiny` writes: family folder -> (name, text encoders too, seed).
TINY_LORAS: dict[str, list[tuple[str, bool, int]]] = {
    "sd1": [("tiny-sd1-style", True, 1), ("tiny-sd1-detail", False, 2)],
    "sdxl": [("tiny-sdxl-style", True, 3)],
}


def build_tiny_loras(models: Path, dest: Path) -> dict[str, Path]:
    """Every adapter of TINY_LORAS for the tiny pipelines in `models`/<family>, written to
    `dest`/<family>/<name>.safetensors (the layout of a deployment's lora_dir)."""
    built: dict[str, Path] = {}
    for family, adapters in TINY_LORAS.items():
        for name, text_encoders, seed in adapters:
            file = dest / family / f"{name}.safetensors"
            built[name] = build_tiny_lora(models / family, file, seed, text_encoders)
    return built
