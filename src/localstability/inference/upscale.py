"""Upscaling: Real-ESRGAN and other spandrel models, and diffusers' x4 upscale pipeline.

What each of them is (how its model loads, its pipeline, its prompts) is its family adapter's
(localstability.inference.families.upscalers); this module runs them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from localstability import errors
from localstability.engines import Family
from localstability.inference.cache import PipelineCache
from localstability.inference.control import NO_CONTROL, StepControl
from localstability.inference.diffusion import generators
from localstability.inference.families import Role
from localstability.inference.families.upscalers import LATENT_UPSCALER, REAL_ESRGAN
from localstability.inference.loader import WeightSource, download, unavailable
from localstability.inference.prompts import WeightedPrompt, encode_weighted_prompts

log = logging.getLogger(__name__)

LATENT_UPSCALE_FACTOR = LATENT_UPSCALER.factor
LATENT_INPUT_MULTIPLE = LATENT_UPSCALER.input_multiple


def load_esrgan(
    cache: PipelineCache,
    source: WeightSource,
    fallback: WeightSource | None,
    control: StepControl = NO_CONTROL,
) -> Any:
    """The spandrel model for `source`; when it can't be had, `fallback` (logged). `control`
    may stop the wait for a load (which goes on, for the next job)."""

    def load(candidate: WeightSource) -> Any:
        path = download(candidate, cache.offline, cache.models_dir)
        try:
            return REAL_ESRGAN.load_model(path, cache.device)
        except ValueError as exc:
            raise unavailable(candidate, str(exc)) from exc

    try:
        return cache.get_or_load(source, lambda: load(source), control)
    except errors.EngineUnavailable as exc:
        if fallback is None:
            raise
        log.warning(
            "upscaler weights unavailable; using the fallback",
            extra={
                "engine_id": source.engine_id,
                "error": exc.message,
                "fallback": fallback.source,
            },
        )
        return cache.get_or_load(fallback, lambda: load(fallback), control)


def run_esrgan(
    model: Any, image: Any, width: int, height: int, control: StepControl = NO_CONTROL
) -> Any:
    """The model at its native scale in overlapping tiles, then a Lanczos resize to the size.
    `control` sees each tile and may stop between tiles."""
    control.check()
    return REAL_ESRGAN.upscale(model, image, width, height, on_tile=control.step)


@dataclass(frozen=True)
class LatentUpscaleParams:
    image: Any  # PIL.Image.Image
    width: int
    height: int
    prompts: list[WeightedPrompt]
    steps: int
    cfg_scale: float
    seed: int


def run_latent_upscale(
    pipe: Any, params: LatentUpscaleParams, control: StepControl = NO_CONTROL
) -> Any:
    """diffusers' x4 upscale pipeline: the input is first resized to a quarter of the target
    (rounded up to a multiple of 8), so that any requested size comes out of one 4x pass."""
    import torch
    from PIL import Image

    source = params.image.convert("RGB")
    small = source.resize(
        LATENT_UPSCALER.input_size(params.width, params.height), Image.Resampling.BICUBIC
    )
    view = LATENT_UPSCALER.view(pipe, Role.BASE, None)
    control.check()
    with torch.inference_mode():
        embeddings = encode_weighted_prompts(
            view,
            params.prompts,
            view._execution_device,
            control,
            family=Family.LATENT_UPSCALER,
        )
        output = view(
            **embeddings,
            image=small,
            num_inference_steps=params.steps,
            guidance_scale=params.cfg_scale,
            generator=generators([params.seed])[0],
            output_type="pil",
            # This pipeline has only the older per-step callback.
            callback=lambda index, _t, _latents: control.step(index + 1, params.steps),
            callback_steps=1,
        )
    upscaled = output.images[0]
    if upscaled.size != (params.width, params.height):
        upscaled = upscaled.resize((params.width, params.height), Image.Resampling.LANCZOS)
    if params.image.mode == "RGBA":
        alpha = params.image.getchannel("A").resize(upscaled.size, Image.Resampling.BICUBIC)
        upscaled.putalpha(alpha)
    return upscaled
