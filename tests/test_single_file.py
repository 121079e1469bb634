"""The converter from a diffusers folder to one original-format (LDM) checkpoint: diffusers' own
LDM-to-diffusers conversion gives every weight back, bit for bit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from localstability.engines import Family
from localstability.inference.weights import detect_family
from localstability.single_file import (
    SDXL_CLIP_PREFIX,
    SDXL_OPEN_CLIP_PREFIX,
    UnmappedWeight,
    pipeline_to_ldm,
    unet_to_ldm,
    vae_to_ldm,
    write_single_file,
)


def assert_same(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    differ = [key for key in expected if not torch.equal(got[key], expected[key])]
    assert differ == []


def test_the_tiny_sd1_single_file_loads_back_into_the_folders_weights(tiny_dir: Path) -> None:
    from diffusers import StableDiffusionPipeline

    path = tiny_dir / "sd1-single" / "tiny-sd1.safetensors"  # written by models make-tiny
    assert detect_family(str(path)) == Family.SD1
    folder = StableDiffusionPipeline.from_pretrained(str(tiny_dir / "sd1"))
    loaded = StableDiffusionPipeline.from_single_file(
        str(path), config=str(tiny_dir / "sd1"), local_files_only=True
    )
    components = ("unet", "vae", "text_encoder")
    for name in components:
        assert_same(getattr(folder, name).state_dict(), getattr(loaded, name).state_dict())
    with safe_open(str(path), framework="pt") as weights:
        names = set(weights.keys())
    assert "model.diffusion_model.input_blocks.0.0.weight" in names
    # Nothing else in the file: every tensor of it is one of the three components'.
    assert len(names) == sum(len(getattr(folder, name).state_dict()) for name in components)


def test_the_tiny_sdxl_converts_and_diffusers_converts_it_back(
    tiny_dir: Path, tmp_path: Path
) -> None:
    """Per component: diffusers' from_single_file tells SDXL's two text encoders apart by
    their widths, which the tiny model's share (32), so it can't load this file whole."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.loaders import single_file_utils as convert

    folder = StableDiffusionXLPipeline.from_pretrained(str(tiny_dir / "sdxl"))
    ldm = pipeline_to_ldm(tiny_dir / "sdxl")
    assert_same(
        folder.unet.state_dict(), convert.convert_ldm_unet_checkpoint(ldm, folder.unet.config)
    )
    assert_same(folder.vae.state_dict(), convert.convert_ldm_vae_checkpoint(ldm, folder.vae.config))
    clip: dict[str, Any] = convert.convert_ldm_clip_checkpoint(ldm)
    unwrapped = not hasattr(folder.text_encoder, "text_model")  # transformers >= 5 flattens it
    clip = {k.removeprefix("text_model.") if unwrapped else k: v for k, v in clip.items()}
    assert_same(folder.text_encoder.state_dict(), clip)
    open_clip = convert.convert_open_clip_checkpoint(
        folder.text_encoder_2, ldm, prefix=SDXL_OPEN_CLIP_PREFIX
    )
    assert_same(folder.text_encoder_2.state_dict(), open_clip)
    assert any(name.startswith(SDXL_CLIP_PREFIX) for name in ldm)
    written = write_single_file(tiny_dir / "sdxl", tmp_path / "xl" / "tiny-sdxl.safetensors")
    assert detect_family(str(written)) == Family.SDXL


def test_the_layout_of_the_real_sd1_blocks_converts_back() -> None:
    """The real SD 1 UNet's arrangement (two layers a level, attention in the first three levels
    and the mid block) and a VAE with mid-block attention, at toy widths: what the tiny model
    lacks."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as convert

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=2,
        norm_num_groups=8,
        cross_attention_dim=8,
        attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    ldm = {f"model.diffusion_model.{k}": v for k, v in unet_to_ldm(unet.state_dict(), 2).items()}
    assert_same(unet.state_dict(), convert.convert_ldm_unet_checkpoint(ldm, unet.config))
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=2,
        norm_num_groups=8,
    )
    ldm = {f"first_stage_model.{k}": v for k, v in vae_to_ldm(vae.state_dict(), 2).items()}
    assert "first_stage_model.decoder.mid.attn_1.q.weight" in ldm
    assert_same(vae.state_dict(), convert.convert_ldm_vae_checkpoint(ldm, vae.config))


def test_a_weight_the_layout_has_no_place_for_is_refused() -> None:
    with pytest.raises(UnmappedWeight, match="controlnet_cond_embedding"):
        unet_to_ldm({"controlnet_cond_embedding.conv_in.weight": torch.zeros(1)}, 1)
