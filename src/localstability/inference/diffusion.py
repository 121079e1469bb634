"""Run diffusion generations (text-to-image, image-to-image, inpainting) on a shared pipeline.

Image-to-image and inpainting pipelines are built from the loaded text-to-image pipeline's
components (`from_pipe`), so an engine holds one copy of its weights whatever it serves.

Every run takes a batch of parts: one part is one request (its prompts, seeds and images);
parts that share `batch_key()` run as one pipeline call, one row per sample, each with its
own seed's generator. A batch of one is the solo run. Each run is told the family of its
pipeline (`family=`, engines.Family): its adapter (localstability.inference.families) gives
the pipeline classes and encodes the prompts.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from localstability.engines import Family
from localstability.inference.control import NO_CONTROL, StepControl
from localstability.inference.families import Role, adapter_for
from localstability.inference.prompts import WeightedPrompt, stack_prompt_embeddings
from localstability.protocol import Sampler


@dataclass(frozen=True)
class DiffusionParams:
    """What every diffusion run needs, already validated by the service layer."""

    prompts: list[WeightedPrompt]
    steps: int
    cfg_scale: float
    sampler: Sampler | None
    seeds: list[int]

    def batch_key(self) -> tuple[Hashable, ...]:
        """What every part of a batch must share: the pipeline call's own arguments."""
        return (type(self).__name__, self.steps, self.cfg_scale, self.sampler)


@dataclass(frozen=True)
class TextToImageParams(DiffusionParams):
    width: int
    height: int

    def batch_key(self) -> tuple[Hashable, ...]:
        return (*super().batch_key(), self.width, self.height)


@dataclass(frozen=True)
class ImageToImageParams(DiffusionParams):
    init_image: Any  # PIL.Image.Image, RGB
    strength: float  # diffusers' strength: the share of the schedule that is run
    skip_end: float = 0.0  # share of the schedule's last steps left out (step_schedule_end)

    def batch_key(self) -> tuple[Hashable, ...]:
        return (*super().batch_key(), self.init_image.size, self.strength, self.skip_end)


@dataclass(frozen=True)
class InpaintParams(DiffusionParams):
    init_image: Any  # PIL.Image.Image, RGB
    mask: Any  # PIL.Image.Image, L: 255 = replace, 0 = keep, grey = partial

    def batch_key(self) -> tuple[Hashable, ...]:
        return (*super().batch_key(), self.init_image.size)


@dataclass(frozen=True)
class GeneratedImage:
    image: Any  # PIL.Image.Image
    seed: int
    nsfw: bool
    filtered_by: str | None = None  # the output filter's finding, when it blurred the image


class DiffusionRun(Protocol):
    """The signature of run_text_to_image, run_image_to_image and run_inpaint."""

    def __call__(
        self, pipe: Any, parts: Sequence[Any], control: StepControl = ..., *, family: Family
    ) -> list[list[GeneratedImage]]: ...


def request_pipeline(pipe: Any, role: Role, sampler: Sampler | None, *, family: Family) -> Any:
    """A per-request pipeline for `role` sharing `pipe`'s models, with its own scheduler."""
    return adapter_for(family).view(pipe, role, sampler)


def generators(seeds: list[int]) -> list[Any]:
    """One CPU torch.Generator per sample, so each image depends only on its own seed."""
    import torch

    return [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]


def per_sample(parts: Sequence[DiffusionParams], value: Any) -> list[Any]:
    """`value(part)` once for each of the part's samples, in batch order."""
    return [value(part) for part in parts for _ in part.seeds]


def _run(
    view: Any,
    family: Family,
    parts: Sequence[DiffusionParams],
    control: StepControl,
    total: int,
    **call: Any,
) -> list[list[GeneratedImage]]:
    """Call the pipeline (`view`, of `family`) once for all parts; `control` sees each of the
    `total` denoising steps and may stop it. The images come back per part."""
    import torch

    if len({part.batch_key() for part in parts}) != 1:
        raise ValueError("the parts of a batch must share their batch_key()")
    control.check()
    call["callback_on_step_end"] = control.diffusers_callback(
        total, call.pop("callback_on_step_end", None)
    )
    seeds = [seed for part in parts for seed in part.seeds]
    with torch.inference_mode():
        requests = [(part.prompts, len(part.seeds)) for part in parts]
        embeddings = stack_prompt_embeddings(
            view, requests, view._execution_device, control, family=family
        )
        output = view(
            **embeddings,
            **call,
            num_inference_steps=parts[0].steps,
            guidance_scale=parts[0].cfg_scale,
            num_images_per_prompt=1,
            generator=generators(seeds),
            output_type="pil",
        )
    flags = getattr(output, "nsfw_content_detected", None) or [False] * len(seeds)
    images = [
        GeneratedImage(image=image, seed=seed, nsfw=bool(flag))
        for image, seed, flag in zip(output.images, seeds, flags, strict=True)
    ]
    results, start = [], 0
    for part in parts:
        results.append(images[start : start + len(part.seeds)])
        start += len(part.seeds)
    return results


def run_text_to_image(
    pipe: Any,
    parts: Sequence[TextToImageParams],
    control: StepControl = NO_CONTROL,
    *,
    family: Family,
) -> list[list[GeneratedImage]]:
    """Encode the weighted prompts, denoise from noise, decode: one image per seed."""
    first = parts[0]
    view = request_pipeline(pipe, Role.BASE, first.sampler, family=family)
    return _run(view, family, parts, control, first.steps, width=first.width, height=first.height)


def steps_run(steps: int, strength: float, skip_end: float) -> int:
    """How many denoising steps an image-to-image run makes (0: the init image comes back)."""
    started = min(int(steps * strength), steps)
    return max(started - int(steps * skip_end), 0)


def run_image_to_image(
    pipe: Any,
    parts: Sequence[ImageToImageParams],
    control: StepControl = NO_CONTROL,
    *,
    family: Family,
) -> list[list[GeneratedImage]]:
    """Noise the init image to `strength`, denoise (stopping early for `skip_end`), decode."""
    first = parts[0]
    keep = steps_run(first.steps, first.strength, first.skip_end)
    if keep == 0:
        return [
            [GeneratedImage(part.init_image.copy(), seed, False) for seed in part.seeds]
            for part in parts
        ]
    view = request_pipeline(pipe, Role.IMG2IMG, first.sampler, family=family)
    call: dict[str, Any] = {
        "image": per_sample(parts, lambda part: part.init_image),
        "strength": first.strength,
    }
    if adapter_for(family).img2img_takes_size:
        call["width"], call["height"] = first.init_image.size
    if keep < min(int(first.steps * first.strength), first.steps):

        def stop_early(pipeline: Any, index: int, _t: Any, kwargs: dict[str, Any]) -> Any:
            if index + 1 >= keep:
                pipeline._interrupt = True  # the remaining steps are skipped, then decoded
            return kwargs

        call["callback_on_step_end"] = stop_early
    return _run(view, family, parts, control, keep, **call)


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
    pipe: Any,
    parts: Sequence[InpaintParams],
    control: StepControl = NO_CONTROL,
    *,
    family: Family,
) -> list[list[GeneratedImage]]:
    """Regenerate where the mask says so, then composite so that kept pixels stay exact."""
    view = request_pipeline(pipe, Role.INPAINT, parts[0].sampler, family=family)
    width, height = parts[0].init_image.size
    results = _run(
        view,
        family,
        parts,
        control,
        parts[0].steps,
        image=per_sample(parts, lambda part: part.init_image),
        mask_image=per_sample(parts, lambda part: part.mask),
        width=width,
        height=height,
        strength=1.0,
    )
    return [
        [
            GeneratedImage(composite(part.init_image, r.image, part.mask), r.seed, r.nsfw)
            for r in part_results
        ]
        for part, part_results in zip(parts, results, strict=True)
    ]
