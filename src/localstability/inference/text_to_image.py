"""Run one text-to-image generation on a shared pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from localstability.inference.prompts import WeightedPrompt, encode_weighted_prompts
from localstability.inference.schedulers import make_scheduler
from localstability.protocol import Sampler


@dataclass(frozen=True)
class TextToImageParams:
    """Everything one text-to-image run needs, already validated by the service layer."""

    prompts: list[WeightedPrompt]
    width: int
    height: int
    steps: int
    cfg_scale: float
    sampler: Sampler | None
    seeds: list[int]


@dataclass(frozen=True)
class GeneratedImage:
    image: Any  # PIL.Image.Image
    seed: int
    nsfw: bool


def request_pipeline(pipe: Any, sampler: Sampler | None) -> Any:
    """A per-request view of `pipe` sharing its models, with its own scheduler instance."""
    view = type(pipe).from_pipe(pipe, scheduler=make_scheduler(sampler, pipe.scheduler.config))
    view.set_progress_bar_config(disable=True)
    return view


def generators(seeds: list[int]) -> list[Any]:
    """One CPU torch.Generator per sample, so each image depends only on its own seed."""
    import torch

    return [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]


def run_text_to_image(pipe: Any, params: TextToImageParams) -> list[GeneratedImage]:
    """Encode the weighted prompts, denoise, decode: one image per seed."""
    import torch

    view = request_pipeline(pipe, params.sampler)
    with torch.inference_mode():
        embeddings = encode_weighted_prompts(view, params.prompts, view._execution_device)
        output = view(
            **embeddings,
            width=params.width,
            height=params.height,
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
