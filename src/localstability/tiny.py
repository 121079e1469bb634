"""Tiny random-weight Stable Diffusion pipelines for tests, built offline in seconds.

The model hubs are unreachable from the machines this project is tested on, and no package
registry ships real Stable Diffusion weights.  This module therefore builds *tiny* pipelines
with random (but seeded, hence reproducible) weights that have the same layout as the real
families, so the whole server can be exercised end to end:

``sd1``
    :class:`~diffusers.StableDiffusionPipeline` shaped like SD 1.5: a ``quick_gelu``
    :class:`~transformers.CLIPTextModel`, a VAE with ``vae_scale_factor`` 8, and the SD 1.5
    PNDM scheduler configuration.
``sd1-inpaint``
    :class:`~diffusers.StableDiffusionInpaintPipeline` shaped like a dedicated SD 1.5
    inpainting checkpoint: the ``sd1`` text encoder, tokenizer, VAE and scheduler (identical
    weights) with its own UNet of 9 input channels (4 latent + 1 mask + the 4 channels of the
    masked image's latents).  It only inpaints.
``sd2``
    Like SD 2.x: an OpenCLIP-style (``gelu``) text encoder, a UNet with linear projections
    and upcast attention, an Euler scheduler with ``prediction_type="v_prediction"`` and a
    tokenizer whose pad token is ``"!"`` (id 0).
``sdxl``
    :class:`~diffusers.StableDiffusionXLPipeline` with two text encoders (the second with a
    projection), a ``text_time`` UNet, VAE scaling 0.13025 and an Euler scheduler.
``sd-x4-upscaler``
    :class:`~diffusers.StableDiffusionUpscalePipeline` shaped like
    ``stabilityai/stable-diffusion-x4-upscaler``: a three-level VAE (``vae_scale_factor`` 4,
    scaling 0.08333), a UNet with 7 input channels (4 latent + the 3 channels of the noised
    low-resolution image) and a 1000-entry class embedding for ``noise_level``, the SD 2 text
    encoder and tokenizer, a DDIM scheduler with ``prediction_type="v_prediction"``, a DDPM
    ``low_res_scheduler`` and ``max_noise_level`` 350.  Its UNet runs at the *input* image's
    resolution (the latents are as large as the low-resolution image), so it has four levels and
    attention only at an eighth of the input size.

The tokenizers use the real CLIP BPE vocabulary (49,408 tokens), converted from the
``bpe_simple_vocab_16e6.txt.gz`` file that ships inside the ``open-clip-torch`` package, so token
ids (and therefore prompt length limits) are exactly those of the real models.

The UNets keep attention only at their lowest resolution (a quarter of the latent size; an
eighth for the upscaler), which keeps even 1024x1024 SDXL requests at a few seconds on a small
CPU.  Every image these pipelines make is noise: they are test fixtures, not models.

Heavy libraries (torch, diffusers, transformers) are imported lazily inside the functions, so
importing this module is cheap.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localstability.packaged import package_dirs

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTokenizer

__all__ = [
    "CLIP_BOS_ID",
    "CLIP_BPE_FILENAME",
    "CLIP_EOS_ID",
    "CLIP_EOS_TOKEN",
    "FAMILIES",
    "FIXTURE_MARKER_FILENAME",
    "SD_SCHEDULE",
    "build_clip_tokenizer_files",
    "build_tiny_models",
    "build_tiny_pipeline",
    "find_clip_bpe_file",
    "is_tiny_fixture",
    "make_clip_tokenizer",
    "no_transformers_progress_bar",
]

FAMILIES: tuple[str, ...] = (
    "sd1",
    "sd1-inpaint",
    "sd2",
    "sdxl",
    "sd-x4-upscaler",
    # The flow-matching families, built by localstability.tiny_flow.
    "sd3",
    "flux",
    "flux-schnell",
)
"""The families :func:`build_tiny_pipeline` can build."""

CLIP_BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
"""The CLIP BPE merges file shipped by open-clip-torch (and by the OpenAI CLIP packages)."""

FIXTURE_MARKER_FILENAME = "LOCALSTABILITY_TEST_FIXTURE.txt"
"""A file written into every built folder, marking it as a random-weight test fixture."""

# Packages known to ship the CLIP BPE file next to their top-level ``__init__``.
# open-clip-torch is a dependency of this project; the others are fallbacks.
_BPE_PACKAGES: tuple[str, ...] = ("open_clip", "clip")

# The CLIP vocabulary: 256 byte tokens, the same 256 with the end-of-word suffix, 48,894 merged
# tokens and the two special tokens.
_CLIP_NUM_MERGES = 49152 - 256 - 2
_CLIP_VOCAB_SIZE = 49408
_BOS_TOKEN = "<|startoftext|>"
CLIP_EOS_TOKEN = "<|endoftext|>"
CLIP_BOS_ID = 49406
CLIP_EOS_ID = 49407
_SD2_PAD_TOKEN = "!"
_MAX_LENGTH = 77
_END_OF_WORD = "</w>"

# Base seed of the random weights; each component adds its own offset.
_SEED = 20241124

# Tiny sizes.  Text encoders: hidden 32, 2 layers (SDXL and clip-skip use the penultimate layer).
_TEXT_HIDDEN = 32
_TEXT_PROJECTION = 32
# UNet: three levels, attention only at the lowest one (latent size / 4).
_UNET_BLOCKS = (16, 32, 32)
_UNET_DOWN = ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D")
_UNET_UP = ("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D")
# VAE: four levels, so latents are 1/8 of the image size as in the real models.  Few channels
# at the two highest resolutions: decoding 1024x1024 costs about half of (8, 16, 32, 32).
_VAE_BLOCKS = (8, 8, 16, 16)
# SDXL micro-conditioning: six time ids (original size, crop top-left, target size).
_SDXL_TIME_EMBED_DIM = 8
_SDXL_NUM_TIME_IDS = 6
# x4 upscaler.  Its latents are as large as the low-resolution input image (128x128 for a
# 512x512 result, 256x256 for 1024x1024), so the UNet has four levels like the real one
# (DownBlock2D first, attention only at the lowest level, an eighth of the input size).  The
# VAE has three levels (vae_scale_factor 4); only its decoder runs when upscaling.
_X4_UNET_BLOCKS = (16, 32, 32, 32)
_X4_UNET_DOWN = ("DownBlock2D", "DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D")
_X4_UNET_UP = ("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D")
_X4_VAE_BLOCKS = (8, 16, 16)
_X4_LATENT_SCALING = 0.08333  # the pipeline resets any other value (with a deprecation warning)
_X4_IMAGE_CHANNELS = 3  # the noised low-resolution RGB image, concatenated to the 4 latents
_X4_NUM_NOISE_LEVELS = 1000  # class embeddings for noise_level, as in the real UNet
_X4_MAX_NOISE_LEVEL = 350
# Inpainting UNet: 4 latent + 1 mask + 4 masked-image latent channels.
_INPAINT_UNET_IN_CHANNELS = 4 + 1 + 4

SD_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "steps_offset": 1,
}

_FIXTURE_TEXT = """\
LOCALSTABILITY TEST FIXTURE -- NOT A REAL MODEL

family: {family}
pipeline: {pipeline}

This folder is a tiny Stable Diffusion pipeline with RANDOM weights, built offline by
localstability.tiny for the localstability test suite.  It has the layout of the real
{family} models (same components, configuration style and the real CLIP tokenizer
vocabulary), so it loads with diffusers and runs {tasks}, but every image it makes is noise.

Do not use it as a model.  It is rebuilt deterministically with:

    from localstability.tiny import build_tiny_pipeline
    build_tiny_pipeline("{family}", Path("<folder>"))
"""

# What each family's pipeline runs, for the fixture marker text.
_DEFAULT_TASKS = "text-to-image, image-to-image and\ninpainting"
_FAMILY_TASKS: dict[str, str] = {
    "sd1-inpaint": "inpainting (its UNet\nhas 9 input channels)",
    "sd-x4-upscaler": "text-guided 4x\nupscaling",
}


# --------------------------------------------------------------------------------------------
# CLIP tokenizer
# --------------------------------------------------------------------------------------------


def find_clip_bpe_file() -> Path:
    """Return the path of the CLIP BPE merges file shipped inside an installed package.

    The file (``bpe_simple_vocab_16e6.txt.gz``, MIT licensed) ships with ``open-clip-torch``.
    The package is located with :func:`importlib.util.find_spec`, without importing it
    (importing ``open_clip`` would pull in torchvision and timm).

    Raises:
        FileNotFoundError: if no installed package provides the file.
    """
    searched: list[str] = []
    for name in _BPE_PACKAGES:
        locations = package_dirs(name)
        if not locations:
            searched.append(f"{name} (not installed)")
            continue
        for location in locations:
            candidate = location / CLIP_BPE_FILENAME
            if candidate.is_file():
                return candidate
            searched.append(str(candidate))
    raise FileNotFoundError(
        f"Cannot find the CLIP BPE vocabulary file {CLIP_BPE_FILENAME!r}, needed to build the "
        "tiny test models' tokenizers. It ships inside the open-clip-torch package: install it "
        "with `pip install open-clip-torch` (or `pip install --no-deps open-clip-torch`, which is "
        "enough for this). Searched: " + ", ".join(searched)
    )


def _bytes_to_unicode() -> dict[int, str]:
    """Map every byte to a printable unicode character (the byte-level BPE alphabet).

    Printable latin-1 bytes map to themselves; the others (control characters, space, ...)
    map to consecutive code points from 256 upwards, in byte order.  The dict's order (the
    printable bytes first, then the others) is the order of CLIP's first 256 token ids.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\xa1"), ord("\xac") + 1),
        *range(ord("\xae"), ord("\xff") + 1),
    ]
    kept = set(printable)
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in kept:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


@lru_cache(maxsize=4)
def _clip_bpe_data(bpe_path: Path) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """Read the CLIP BPE file; return (tokens in id order, merges in rank order)."""
    text = gzip.decompress(bpe_path.read_bytes()).decode("utf-8")
    lines = text.split("\n")
    # Line 0 is a version header; the next 48,894 lines are the merges CLIP uses.
    raw = lines[1 : _CLIP_NUM_MERGES + 1]
    merges: list[tuple[str, str]] = []
    for line in raw:
        parts = line.split(" ")
        if len(parts) != 2:
            raise ValueError(f"{bpe_path}: unexpected merge line {line!r}")
        merges.append((parts[0], parts[1]))
    if len(merges) != _CLIP_NUM_MERGES:
        raise ValueError(
            f"{bpe_path}: expected {_CLIP_NUM_MERGES} merges, found {len(merges)}; "
            "is this the real CLIP bpe_simple_vocab_16e6.txt.gz?"
        )
    alphabet = list(_bytes_to_unicode().values())
    tokens = [
        *alphabet,
        *(ch + _END_OF_WORD for ch in alphabet),
        *(a + b for a, b in merges),
        _BOS_TOKEN,
        CLIP_EOS_TOKEN,
    ]
    if len(tokens) != _CLIP_VOCAB_SIZE or len(set(tokens)) != _CLIP_VOCAB_SIZE:
        raise ValueError(f"{bpe_path}: the vocabulary built from it is not CLIP's")
    return tuple(tokens), tuple(merges)


def _clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    tokens, merges = _clip_bpe_data(find_clip_bpe_file())
    return {token: i for i, token in enumerate(tokens)}, list(merges)


def build_clip_tokenizer_files(dest: Path) -> None:
    """Write the real CLIP tokenizer as ``vocab.json`` and ``merges.txt`` into ``dest``.

    These are the files the Hugging Face CLIP tokenizers read; the ids are exactly CLIP's
    (``"a photo of a cat"`` encodes to ``[49406, 320, 1125, 539, 320, 2368, 49407]``).
    ``dest`` is created if needed.

    Raises:
        FileNotFoundError: if the BPE file cannot be found (see :func:`find_clip_bpe_file`).
    """
    vocab, merges = _clip_vocab_and_merges()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "vocab.json").write_text(
        json.dumps(vocab, ensure_ascii=False, separators=(",", ":")), encoding="utf-8"
    )
    (dest / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )


def make_clip_tokenizer(pad_token: str) -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab_and_merges()
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=CLIP_EOS_TOKEN,
        bos_token=_BOS_TOKEN,
        eos_token=CLIP_EOS_TOKEN,
        pad_token=pad_token,
        model_max_length=_MAX_LENGTH,
    )


# --------------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------------


@contextmanager
def _seeded(offset: int) -> Iterator[None]:
    """Seed torch's CPU generator for one component, restoring the caller's RNG state after."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED + offset)
        yield


def _text_config(hidden_act: str, pad_token_id: int) -> CLIPTextConfig:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=_CLIP_VOCAB_SIZE,
        hidden_size=_TEXT_HIDDEN,
        intermediate_size=37,
        projection_dim=_TEXT_PROJECTION,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=_MAX_LENGTH,
        hidden_act=hidden_act,
        layer_norm_eps=1e-5,
        bos_token_id=CLIP_BOS_ID,
        eos_token_id=CLIP_EOS_ID,
        pad_token_id=pad_token_id,
    )


def _text_encoder(offset: int, hidden_act: str, pad_token_id: int, projection: bool) -> Any:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    config = _text_config(hidden_act, pad_token_id)
    with _seeded(offset):
        model = CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)
    return model.eval()


def _vae(
    offset: int,
    sample_size: int,
    scaling_factor: float,
    blocks: tuple[int, ...] = _VAE_BLOCKS,
    latent_channels: int = 4,
    **config: Any,
) -> AutoencoderKL:
    """A tiny random VAE; `config` adds AutoencoderKL arguments (the flow families' shift and
    their VAE without quant convs)."""
    from diffusers import AutoencoderKL

    n = len(blocks)
    with _seeded(offset):
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=blocks,
            layers_per_block=1,
            act_fn="silu",
            latent_channels=latent_channels,
            norm_num_groups=8,
            sample_size=sample_size,
            scaling_factor=scaling_factor,
            # The real SDXL VAE has force_upcast=True, but then the SDXL img2img/inpaint
            # pipelines call vae.to(float32) on every request, and diffusers 0.42 warns each
            # time.  The random tiny VAE does not overflow in float16 anyway.
            force_upcast=False,
            # The real VAEs have self-attention in the mid block; at 1024x1024 that is
            # 16,384 tokens and would dominate the run time, so the tiny VAE leaves it out.
            mid_block_add_attention=False,
            **config,
        )
    return vae.eval()


def _unet(
    offset: int,
    sample_size: int,
    *,
    in_channels: int = 4,
    blocks: tuple[int, ...] = _UNET_BLOCKS,
    down_block_types: tuple[str, ...] = _UNET_DOWN,
    up_block_types: tuple[str, ...] = _UNET_UP,
    **extra: Any,
) -> UNet2DConditionModel:
    from diffusers import UNet2DConditionModel

    with _seeded(offset):
        unet = UNet2DConditionModel(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=4,
            down_block_types=down_block_types,
            up_block_types=up_block_types,
            block_out_channels=blocks,
            layers_per_block=1,
            norm_num_groups=8,
            **extra,
        )
    return unet.eval()


def _build_sd1() -> DiffusionPipeline:
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    scheduler = PNDMScheduler(**SD_SCHEDULE, skip_prk_steps=True, set_alpha_to_one=False)
    return StableDiffusionPipeline(
        vae=_vae(1, sample_size=512, scaling_factor=0.18215),
        text_encoder=_text_encoder(2, "quick_gelu", pad_token_id=CLIP_EOS_ID, projection=False),
        tokenizer=make_clip_tokenizer(pad_token=CLIP_EOS_TOKEN),
        unet=_unet(3, sample_size=64, cross_attention_dim=_TEXT_HIDDEN, attention_head_dim=4),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


def _build_sd1_inpaint() -> DiffusionPipeline:
    from diffusers import PNDMScheduler, StableDiffusionInpaintPipeline

    # The sd1 components (same seeds, so the same weights) with a 9-channel UNet of its own.
    scheduler = PNDMScheduler(**SD_SCHEDULE, skip_prk_steps=True, set_alpha_to_one=False)
    unet = _unet(
        4,
        sample_size=64,
        in_channels=_INPAINT_UNET_IN_CHANNELS,
        cross_attention_dim=_TEXT_HIDDEN,
        attention_head_dim=4,
    )
    return StableDiffusionInpaintPipeline(
        vae=_vae(1, sample_size=512, scaling_factor=0.18215),
        text_encoder=_text_encoder(2, "quick_gelu", pad_token_id=CLIP_EOS_ID, projection=False),
        tokenizer=make_clip_tokenizer(pad_token=CLIP_EOS_TOKEN),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


def _build_sd2() -> DiffusionPipeline:
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    scheduler = EulerDiscreteScheduler(**SD_SCHEDULE, prediction_type="v_prediction")
    unet = _unet(
        13,
        sample_size=64,
        cross_attention_dim=_TEXT_HIDDEN,
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        upcast_attention=True,
    )
    return StableDiffusionPipeline(
        vae=_vae(11, sample_size=512, scaling_factor=0.18215),
        text_encoder=_text_encoder(12, "gelu", pad_token_id=0, projection=False),
        tokenizer=make_clip_tokenizer(pad_token=_SD2_PAD_TOKEN),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


def _build_sdxl() -> DiffusionPipeline:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    scheduler = EulerDiscreteScheduler(
        **SD_SCHEDULE,
        prediction_type="epsilon",
        interpolation_type="linear",
        use_karras_sigmas=False,
        timestep_spacing="leading",
    )
    unet = _unet(
        24,
        sample_size=128,
        # The prompt embedding is both encoders' penultimate hidden states, concatenated.
        cross_attention_dim=2 * _TEXT_HIDDEN,
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        transformer_layers_per_block=1,
        addition_embed_type="text_time",
        addition_time_embed_dim=_SDXL_TIME_EMBED_DIM,
        # Pooled text_encoder_2 output plus the six micro-conditioning time embeddings.
        projection_class_embeddings_input_dim=_TEXT_PROJECTION
        + _SDXL_NUM_TIME_IDS * _SDXL_TIME_EMBED_DIM,
    )
    return StableDiffusionXLPipeline(
        vae=_vae(21, sample_size=1024, scaling_factor=0.13025),
        text_encoder=_text_encoder(22, "quick_gelu", pad_token_id=CLIP_EOS_ID, projection=False),
        text_encoder_2=_text_encoder(23, "gelu", pad_token_id=0, projection=True),
        tokenizer=make_clip_tokenizer(pad_token=CLIP_EOS_TOKEN),
        tokenizer_2=make_clip_tokenizer(pad_token=_SD2_PAD_TOKEN),
        unet=unet,
        scheduler=scheduler,
        image_encoder=None,
        feature_extractor=None,
        force_zeros_for_empty_prompt=True,
    )


def _build_sd_x4_upscaler() -> DiffusionPipeline:
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline

    # The schedulers of stabilityai/stable-diffusion-x4-upscaler.  low_res_scheduler only
    # noises the low-resolution image (to the requested noise_level) before it is concatenated
    # to the latents; it never steps.
    scheduler = DDIMScheduler(
        **SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False, prediction_type="v_prediction"
    )
    low_res_scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        trained_betas=None,
        variance_type="fixed_small",
        clip_sample=False,
    )
    unet = _unet(
        33,
        sample_size=128,
        in_channels=4 + _X4_IMAGE_CHANNELS,
        blocks=_X4_UNET_BLOCKS,
        down_block_types=_X4_UNET_DOWN,
        up_block_types=_X4_UNET_UP,
        cross_attention_dim=_TEXT_HIDDEN,
        attention_head_dim=(2, 4, 4, 4),
        use_linear_projection=True,
        # As in the real config: no class_embed_type, so num_class_embeds makes an
        # nn.Embedding, indexed by the pipeline's noise_level (passed as class_labels).
        num_class_embeds=_X4_NUM_NOISE_LEVELS,
    )
    return StableDiffusionUpscalePipeline(
        vae=_vae(31, sample_size=256, scaling_factor=_X4_LATENT_SCALING, blocks=_X4_VAE_BLOCKS),
        text_encoder=_text_encoder(32, "gelu", pad_token_id=0, projection=False),
        tokenizer=make_clip_tokenizer(pad_token=_SD2_PAD_TOKEN),
        unet=unet,
        low_res_scheduler=low_res_scheduler,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
        max_noise_level=_X4_MAX_NOISE_LEVEL,
    )


_BUILDERS: dict[str, Callable[[], DiffusionPipeline]] = {
    "sd1": _build_sd1,
    "sd1-inpaint": _build_sd1_inpaint,
    "sd2": _build_sd2,
    "sdxl": _build_sdxl,
    "sd-x4-upscaler": _build_sd_x4_upscaler,
}


# --------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------


def is_tiny_fixture(folder: Path) -> bool:
    """Return True if ``folder`` was built by this module (it holds the fixture marker file)."""
    return (Path(folder) / FIXTURE_MARKER_FILENAME).is_file()


@contextmanager
def no_transformers_progress_bar() -> Iterator[None]:
    """Silence transformers' "Writing model shards" bar while saving, then restore it."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _write_folder(family: str, pipe: DiffusionPipeline, folder: Path) -> None:
    with no_transformers_progress_bar():
        pipe.save_pretrained(folder, safe_serialization=True)
    # transformers 5 saves only tokenizer.json + tokenizer_config.json; also write the
    # classic vocab.json + merges.txt so that any CLIP tokenizer class can load the folder
    # (a CLIP tokenizer's folder only: Flux's tokenizer_2 is T5's).
    for name in ("tokenizer", "tokenizer_2"):
        sub = folder / name
        if sub.is_dir() and type(getattr(pipe, name, None)).__name__.startswith("CLIP"):
            build_clip_tokenizer_files(sub)
    (folder / FIXTURE_MARKER_FILENAME).write_text(
        _FIXTURE_TEXT.format(
            family=family,
            pipeline=type(pipe).__name__,
            tasks=_FAMILY_TASKS.get(family, _DEFAULT_TASKS),
        ),
        encoding="utf-8",
    )


def build_tiny_pipeline(family: str, dest: Path) -> Path:
    """Build the tiny random-weight pipeline ``family`` into the folder ``dest``.

    The result loads with ``DiffusionPipeline.from_pretrained(dest)`` and is deterministic:
    building twice gives byte-identical weight files.  ``dest`` must not exist, be empty, or
    hold an earlier fixture (which is replaced); the folder is built next to it first and then
    moved into place, so a half-written folder is never left at ``dest``.

    Args:
        family: one of :data:`FAMILIES` (``"sd1"``, ``"sd1-inpaint"``, ``"sd2"``, ``"sdxl"``,
            ``"sd-x4-upscaler"``, and localstability.tiny_flow's ``"sd3"``, ``"flux"``,
            ``"flux-schnell"``).
        dest: the folder to write.

    Returns:
        ``dest``.

    Raises:
        ValueError: if ``family`` is unknown.
        FileExistsError: if ``dest`` exists, is not empty and is not a tiny fixture.
        FileNotFoundError: if the CLIP BPE file cannot be found.
    """
    from localstability.tiny_flow import BUILDERS as FLOW_BUILDERS

    builders = {**_BUILDERS, **FLOW_BUILDERS}
    if family not in builders:
        raise ValueError(f"unknown tiny model family {family!r}; expected one of {FAMILIES}")
    dest = Path(dest)
    _check_replaceable(dest)
    pipe = builders[family]()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _write_folder(family, pipe, tmp)
        _check_replaceable(dest)
        if dest.exists():
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            else:
                dest.unlink()
        try:
            tmp.rename(dest)
        except OSError:
            # Another process may have built the same fixture concurrently; theirs is as good.
            if not is_tiny_fixture(dest):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _check_replaceable(dest: Path) -> None:
    if not dest.exists() and not dest.is_symlink():
        return
    if dest.is_dir() and (is_tiny_fixture(dest) or not any(dest.iterdir())):
        return
    raise FileExistsError(
        f"{dest} exists and is not a tiny test fixture; refusing to replace it "
        f"(fixtures contain {FIXTURE_MARKER_FILENAME})"
    )


def build_tiny_models(dest: Path, progress: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Build every family of :data:`FAMILIES` into ``dest/<family>``.

    Args:
        dest: the parent folder (created if needed).
        progress: called with a short human-readable message before and after each family.

    Returns:
        A mapping from family name to its folder.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    built: dict[str, Path] = {}
    for family in FAMILIES:
        folder = dest / family
        if progress is not None:
            progress(f"building tiny {family} pipeline in {folder}")
        start = time.perf_counter()
        built[family] = build_tiny_pipeline(family, folder)
        if progress is not None:
            progress(f"built tiny {family} pipeline in {time.perf_counter() - start:.1f} s")
    return built
