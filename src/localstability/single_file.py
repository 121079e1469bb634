"""Write a diffusers Stable Diffusion pipeline folder (SD 1.x or SDXL) as one original-format
single-file checkpoint: the UNet, the VAE and the text encoder(s) in one .safetensors file
under the key names of the Stability/CompVis code ("LDM" layout), the kind of file that
operators download and that `from_single_file` reads.

The mapping follows the two architectures. The LDM UNet numbers its blocks in one sequence:
`input_blocks.0` is conv_in, then each level has `layers_per_block` blocks of a ResBlock (`.0`)
and, in attention levels, a SpatialTransformer (`.1`), then (except the last level) a
Downsample block (`input_blocks.N.0.op`); `middle_block` is ResBlock, transformer, ResBlock;
`output_blocks` run the levels from the bottom, `layers_per_block + 1` blocks each, the
Upsample last in the level's last block (after the transformer, if any). The transformers'
inner names are diffusers' own. The LDM VAE numbers its decoder levels from the bottom
(`decoder.up.0` is diffusers' last up block) and writes its attention as 1x1 convolutions. SD
1's CLIP keeps transformers' names under `cond_stage_model.transformer.`; SDXL's first encoder
the same under `conditioner.embedders.0.transformer.`, its second (OpenCLIP) has OpenCLIP's
names under `conditioner.embedders.1.model.`, with q, k and v in one `in_proj` and the
projection transposed.

Used to build the tiny test fixtures' single files (`localstability models make-tiny`)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

Tensors = dict[str, torch.Tensor]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_CLIP_PREFIX = "cond_stage_model.transformer."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL's size and pooled-text embedding
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_VAE_TOP = {
    "conv_in": "conv_in",
    "conv_out": "conv_out",
    "conv_norm_out": "norm_out",
}
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
_OPEN_CLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


class UnmappedWeight(ValueError):
    """A weight of the folder that the LDM layout has no place for (another architecture)."""


def _resnet(rest: str) -> str:
    module, _, param = rest.partition(".")
    if module not in _RESNET:
        raise UnmappedWeight(f"unknown ResBlock weight {rest}")
    return f"{_RESNET[module]}.{param}"


def unet_to_ldm(weights: Tensors, layers_per_block: int) -> Tensors:
    """A diffusers UNet2DConditionModel's weights under the LDM UNet's names."""
    per_level = layers_per_block + 1
    # An up level with attention has its Upsample third in its last block, else second.
    attended = {
        int(k.split(".")[1]) for k in weights if re.match(r"up_blocks\.\d+\.attentions\.", k)
    }
    out: Tensors = {}
    for key, tensor in weights.items():
        module, _, param = key.rpartition(".")
        if module in _UNET_TOP:
            out[f"{_UNET_TOP[module]}.{param}"] = tensor
        elif m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            side, level, part, index, rest = m.groups()
            block = int(level) * per_level + int(index) + (1 if side == "down" else 0)
            name = "input_blocks" if side == "down" else "output_blocks"
            inner = f"0.{_resnet(rest)}" if part == "resnets" else f"1.{rest}"
            out[f"{name}.{block}.{inner}"] = tensor
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            block = int(m[1]) * per_level + layers_per_block + 1
            out[f"input_blocks.{block}.0.op.{m[2]}"] = tensor
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            block = int(m[1]) * per_level + layers_per_block
            out[f"output_blocks.{block}.{2 if int(m[1]) in attended else 1}.conv.{m[2]}"] = tensor
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            out[f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"] = tensor
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            out[f"middle_block.1.{m[1]}"] = tensor
        else:
            raise UnmappedWeight(f"no LDM name for the UNet weight {key}")
    return out


def vae_to_ldm(weights: Tensors, levels: int) -> Tensors:
    """A diffusers AutoencoderKL's weights under the LDM autoencoder's names."""
    out: Tensors = {}

    def shortcut(rest: str) -> str:
        return rest.replace("conv_shortcut", "nin_shortcut")

    for key, tensor in weights.items():
        if m := re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out|conv_norm_out)\.(.+)", key):
            out[f"{m[1]}.{_VAE_TOP[m[2]]}.{m[3]}"] = tensor
        elif re.fullmatch(r"(post_)?quant_conv\.(weight|bias)", key):
            out[key] = tensor
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            out[f"encoder.down.{m[1]}.block.{m[2]}.{shortcut(m[3])}"] = tensor
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            out[f"encoder.down.{m[1]}.downsample.conv.{m[2]}"] = tensor
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            out[f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{shortcut(m[3])}"] = tensor
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            out[f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"] = tensor
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            out[f"{m[1]}.mid.block_{int(m[2]) + 1}.{shortcut(m[3])}"] = tensor
        elif m := re.fullmatch(
            r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_[qkv]|to_out\.0)\.(.+)",
            key,
        ):
            # LDM's attention is 1x1 convolutions: a linear weight gains two unit dims.
            conv = tensor[:, :, None, None] if tensor.ndim == 2 else tensor
            out[f"{m[1]}.mid.attn_1.{_VAE_ATTENTION[m[2]]}.{m[3]}"] = conv.contiguous()
        else:
            raise UnmappedWeight(f"no LDM name for the VAE weight {key}")
    return out


def clip_to_ldm(weights: Tensors) -> Tensors:
    """OpenAI CLIP (transformers' CLIPTextModel) under the HF names that the LDM code keeps,
    always under `text_model.` (transformers 5 saves an unwrapped model without it)."""
    return {
        key if key.startswith("text_model.") else f"text_model.{key}": tensor
        for key, tensor in weights.items()
        if not key.endswith("position_ids")
    }


def open_clip_to_ldm(weights: Tensors) -> Tensors:
    """transformers' CLIPTextModelWithProjection under OpenCLIP's names (SDXL's second encoder)."""
    flat = {key.removeprefix("text_model."): tensor for key, tensor in weights.items()}
    out: Tensors = {
        "positional_embedding": flat.pop("embeddings.position_embedding.weight"),
        "token_embedding.weight": flat.pop("embeddings.token_embedding.weight"),
        "ln_final.weight": flat.pop("final_layer_norm.weight"),
        "ln_final.bias": flat.pop("final_layer_norm.bias"),
        # OpenCLIP multiplies by the projection from the right: the transpose of the Linear's.
        "text_projection": flat.pop("text_projection.weight").T.contiguous(),
    }
    flat.pop("embeddings.position_ids", None)
    layers = {int(k.split(".")[2]) for k in flat if k.startswith("encoder.layers.")}
    for n in sorted(layers):
        src, dst = f"encoder.layers.{n}.", f"transformer.resblocks.{n}."
        for param in ("weight", "bias"):
            qkv = [flat.pop(f"{src}self_attn.{p}_proj.{param}") for p in "qkv"]
            out[f"{dst}attn.in_proj_{param}"] = torch.cat(qkv)
            for hf, oc in _OPEN_CLIP_LAYER.items():
                out[f"{dst}{oc}.{param}"] = flat.pop(f"{src}{hf}.{param}")
    if flat:
        raise UnmappedWeight(f"no OpenCLIP name for the text encoder weights {sorted(flat)}")
    return out


def _component(folder: Path, name: str) -> tuple[Tensors, dict[str, Any]]:
    """A component's weights (its single .safetensors file) and its config.json."""
    sub = folder / name
    [weights] = sorted(sub.glob("*.safetensors"))
    return load_file(str(weights)), json.loads((sub / "config.json").read_text())


def _prefixed(prefix: str, weights: Tensors) -> Tensors:
    return {prefix + key: tensor for key, tensor in weights.items()}


def pipeline_to_ldm(folder: Path) -> Tensors:
    """Every weight of the SD 1.x or SDXL diffusers folder under its LDM checkpoint name."""
    index = json.loads((folder / "model_index.json").read_text())
    unet, unet_config = _component(folder, "unet")
    vae, vae_config = _component(folder, "vae")
    out = _prefixed(UNET_PREFIX, unet_to_ldm(unet, int(unet_config["layers_per_block"])))
    out |= _prefixed(VAE_PREFIX, vae_to_ldm(vae, len(vae_config["up_block_types"])))
    text, _ = _component(folder, "text_encoder")
    if "text_encoder_2" in index:
        text_2, _ = _component(folder, "text_encoder_2")
        out |= _prefixed(SDXL_CLIP_PREFIX, clip_to_ldm(text))
        out |= _prefixed(SDXL_OPEN_CLIP_PREFIX, open_clip_to_ldm(text_2))
    else:
        out |= _prefixed(SD1_CLIP_PREFIX, clip_to_ldm(text))
    return out


def write_single_file(
    folder: Path, dest: Path, progress: Callable[[str], None] | None = None
) -> Path:
    """Write the diffusers SD 1.x or SDXL pipeline `folder` as the single checkpoint `dest`
    (.safetensors; its folder is created). Returns `dest`."""
    weights = pipeline_to_ldm(folder)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f".{dest.name}.partial")  # never a half-written file at dest
    save_file({k: v.contiguous() for k, v in weights.items()}, str(partial))
    partial.replace(dest)
    if progress is not None:
        progress(f"wrote {folder.name} as the single-file checkpoint {dest}")
    return dest
