"""Run one diffusion generation (text-to-image, image-to-image, inpainting) on a shared pipeline.

Image-to-image and inpainting pipelines are built from the loaded text-to-image pipeline's
components (`from_pipe`), so an engine holds one copy of its weights whatever it serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from localstability.inference.control import NO_CONTROL, StepControl
from localstability.inference.prompts import WeightedPrompt, encode_weighted_prompts
from localstability.inference.schedulers import make_scheduler
from localstability.protocol import Sampler


@dataclass(frozen=True)
class DiffusionParams:
    """What every diffusion run needs, already validated by the service layer."""

    prompts: list[WeightedPrompt]
    steps: int
    cfg_scale: float
    sampler: Sampler | None
    seeds: list[int]


@dataclass(frozen=True)
class TextToImageParams(DiffusionParams):
    width: int
    height: int


@dataclass(frozen=True)
class ImageToImageParams(DiffusionParams):
    init_image: Any  # PIL.Image.Image, RGB
    strength: float  # diffusers' strength: the share of the schedule that is run
    skip_end: float = 0.0  # share of the schedule's last steps left out (step_schedule_end)


@dataclass(frozen=True)
class InpaintParams(DiffusionParams):
    init_image: Any  # PIL.Image.Image, RGB
    mask: Any  # PIL.Image.Image, L: 255 = replace, 0 = keep, grey = partial


@dataclass(frozen=True)
class GeneratedImage:
    image: Any  # PIL.Image.Image
    seed: int
    nsfw: bool


def request_pipeline(pipe: Any, task: str, sampler: Sampler | None) -> Any:
    """A per-request pipeline for `task` sharing `pipe`'s models, with its own scheduler."""
    import diffusers

    auto = {
        "text-to-image": diffusers.AutoPipelineForText2Image,
        "image-to-image": diffusers.AutoPipelineForImage2Image,
        "inpaint": diffusers.AutoPipelineForInpainting,
    }[task]
    view = auto.from_pipe(pipe, scheduler=make_scheduler(sampler, pipe.scheduler.config))
    view.set_progress_bar_config(disable=True)
    return view


def generators(seeds: list[int]) -> list[Any]:
    """One CPU torch.Generator per sample, so each image depends only on its own seed."""
    import torch

    return [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]


def _run(
    view: Any, params: DiffusionParams, control: StepControl, total: int, **call: Any
) -> list[GeneratedImage]:
    """Call the pipeline; `control` sees each of the `total` denoising steps and may stop it."""
    import torch

    control.check()
    call["callback_on_step_end"] = control.diffusers_callback(
        total, call.pop("callback_on_step_end", None)
    )
    with torch.inference_mode():
        embeddings = encode_weighted_prompts(view, params.prompts, view._execution_device)
        output = view(
            **embeddings,
            **call,
            num_inference_steps=params.steps,
            guidance_scale=params.cfg_scale,
            num_images_per_prompt=len(params.seeds),
            generator=generators(params.seeds),
            output_type="pil",
        )
    flags = getattr(output, "nsfw_content_detected", None) or [False] * len(params.seeds)
    return [
        GeneratedImage(image=image, seed=seed, nsfw=bool(flag))
        for image, seed, flag in zip(output.images, params.seeds, flags, strict=True)
    ]


def run_text_to_image(
    pipe: Any, params: TextToImageParams, control: StepControl = NO_CONTROL
) -> list[GeneratedImage]:
    """Encode the weighted prompts, denoise from noise, decode: one image per seed."""
    view = request_pipeline(pipe, "text-to-image", params.sampler)
    return _run(view, params, control, params.steps, width=params.width, height=params.height)


def steps_run(steps: int, strength: float, skip_end: float) -> int:
    """How many denoising steps an image-to-image run makes (0: the init image comes back)."""
    started = min(int(steps * strength), steps)
    return max(started - int(steps * skip_end), 0)


def run_image_to_image(
    pipe: Any, params: ImageToImageParams, control: StepControl = NO_CONTROL
) -> list[GeneratedImage]:
    """Noise the init image to `strength`, denoise (stopping early for `skip_end`), decode."""
    keep = steps_run(params.steps, params.strength, params.skip_end)
    if keep == 0:
        return [GeneratedImage(params.init_image.copy(), seed, False) for seed in params.seeds]
    view = request_pipeline(pipe, "image-to-image", params.sampler)
    call: dict[str, Any] = {"image": params.init_image, "strength": params.strength}
    if keep < min(int(params.steps * params.strength), params.steps):

        def stop_early(pipeline: Any, index: int, _t: Any, kwargs: dict[str, Any]) -> Any:
            if index + 1 >= keep:
                pipeline._interrupt = True  # the remaining steps are skipped, then decoded
            return kwargs

        call["callback_on_step_end"] = stop_early
    return _run(view, params, control, keep, **call)


def composite(init_image: Any, generated: Any, mask: Any) -> Any:
    """Blend linearly by the mask: 0 keeps the init pixel exactly, 255 takes the generated."""
    import numpy as np
    from PIL import Image

    weight = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
    original = np.asarray(init_image.convert("RGB"), dtype=np.float32)
    new = np.asarray(generated.convert("RGB"), dtype=np.float32)
    blended = original * (1.0 - weight) + new * weight
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8), "RGB")


def run_inpaint(
    pipe: Any, params: InpaintParams, control: StepControl = NO_CONTROL
) -> list[GeneratedImage]:
    """Regenerate where the mask says so, then composite so that kept pixels stay exact."""
    view = request_pipeline(pipe, "inpaint", params.sampler)
    width, height = params.init_image.size
    results = _run(
        view,
        params,
        control,
        params.steps,
        image=params.init_image,
        mask_image=params.mask,
        width=width,
        height=height,
        strength=1.0,
    )
    return [
        GeneratedImage(composite(params.init_image, r.image, params.mask), r.seed, r.nsfw)
        for r in results
    ]
