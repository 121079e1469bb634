"""What runs a task on the device: one function per task, found by task and family.

A task arrives as plain data, `TaskRun`: the task, the engine's weights, its parameters as
JSON and the names of its input images, whose PNG bytes come beside it. Nothing in it is a
closure or a live object, so any process that can load the weights runs it the same way, and
two runs with equal `batch_key()` share one pipeline call (each keeps its prompts, seeds and
images).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from localstability.engines import Family, Task
from localstability.inference import diffusion, lora, safety, upscale
from localstability.inference.cache import PipelineCache
from localstability.inference.control import StepControl
from localstability.inference.diffusion import GeneratedImage
from localstability.inference.loader import WeightSource
from localstability.inference.prompts import WeightedPrompt
from localstability.protocol import Sampler

# The input images a task may name (PNG bytes beside the run).
INIT_IMAGE, MASK, IMAGE = "init_image", "mask", "image"

Inputs = dict[str, bytes]
Runner = Callable[[PipelineCache, Sequence["TaskRun"], Sequence[Inputs], StepControl], Any]


@dataclass(frozen=True)
class TaskRun:
    """One job's work: `params` is JSON (see each runner for its keys), `inputs` the names of
    its images."""

    task: Task
    weights: WeightSource
    params: dict[str, Any]
    inputs: tuple[str, ...] = ()
    fallback: WeightSource | None = None  # weights to use when `weights` can't be had
    batch_max_images: int = 1  # the most images runs sharing its pipeline call may make
    content_filter: safety.OutputFilter | None = None  # the output filter its images pass

    @property
    def images(self) -> int:
        """The images it makes."""
        return len(self.params.get("seeds", [self.params.get("seed")]))

    @property
    def batches(self) -> bool:
        return self.task in BATCHED and self.batch_max_images > 1

    def batch_key(self) -> tuple[Hashable, ...]:
        """What every run of one pipeline call shares: the weights, the task and the call's
        own arguments (steps, guidance, sampler, size, the LoRA adapters and their weights,
        and image-to-image's schedule)."""
        p = self.params
        key: tuple[Hashable, ...] = (
            self.weights.cache_key,
            self.task.value,
            p["steps"],
            p["cfg_scale"],
            p["sampler"],
            p["width"],
            p["height"],
            tuple(tuple(lora) for lora in p.get("loras", ())),
        )
        if self.task == Task.IMAGE_TO_IMAGE:
            key += (p["strength"], p["skip_end"])
        return key

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task.value,
            "weights": _source_dict(self.weights),
            "params": self.params,
            "inputs": list(self.inputs),
            "fallback": _source_dict(self.fallback) if self.fallback else None,
            "batch_max_images": self.batch_max_images,
            "content_filter": self.content_filter.to_dict() if self.content_filter else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskRun:
        fallback = data.get("fallback")
        content_filter = data.get("content_filter")
        return cls(
            task=Task(data["task"]),
            weights=_source(data["weights"]),
            params=data["params"],
            inputs=tuple(data.get("inputs", ())),
            fallback=_source(fallback) if fallback else None,
            batch_max_images=data.get("batch_max_images", 1),
            content_filter=safety.OutputFilter.from_dict(content_filter)
            if content_filter
            else None,
        )


def _source_dict(source: WeightSource) -> dict[str, Any]:
    return {**asdict(source), "family": source.family.value}


def _source(data: dict[str, Any]) -> WeightSource:
    return WeightSource(**{**data, "family": Family(data["family"])})


def png(image: Any) -> bytes:
    """An image as lossless PNG bytes (how input images travel with a run)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def image_of(data: bytes) -> Any:
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def prompts_of(params: dict[str, Any]) -> list[WeightedPrompt]:
    return [WeightedPrompt(text, weight) for text, weight in params["prompts"]]


def diffusion_params(run: TaskRun, inputs: Inputs) -> diffusion.DiffusionParams:
    """The diffusion function's parameters for one run."""
    p = run.params
    common: dict[str, Any] = {
        "prompts": prompts_of(p),
        "steps": p["steps"],
        "cfg_scale": p["cfg_scale"],
        "sampler": Sampler(p["sampler"]) if p["sampler"] else None,
        "seeds": list(p["seeds"]),
    }
    if run.task == Task.TEXT_TO_IMAGE:
        return diffusion.TextToImageParams(**common, width=p["width"], height=p["height"])
    init_image = image_of(inputs[INIT_IMAGE])
    if run.task == Task.IMAGE_TO_IMAGE:
        return diffusion.ImageToImageParams(
            **common, init_image=init_image, strength=p["strength"], skip_end=p["skip_end"]
        )
    return diffusion.InpaintParams(**common, init_image=init_image, mask=image_of(inputs[MASK]))


_DIFFUSION: dict[Task, diffusion.DiffusionRun] = {
    Task.TEXT_TO_IMAGE: diffusion.run_text_to_image,
    Task.IMAGE_TO_IMAGE: diffusion.run_image_to_image,
    Task.MASKING: diffusion.run_inpaint,
}


def _run_diffusion(
    pipelines: PipelineCache,
    runs: Sequence[TaskRun],
    inputs: Sequence[Inputs],
    control: StepControl,
) -> list[list[GeneratedImage]]:
    first = runs[0]
    parts = [diffusion_params(run, images) for run, images in zip(runs, inputs, strict=True)]
    pipe = pipelines.get(first.weights, control)
    lora.activate(pipe, [lora.Adapter.of(item) for item in first.params.get("loras", ())])
    result: list[list[GeneratedImage]] = _DIFFUSION[first.task](
        pipe, parts, control, family=first.weights.family
    )
    return result


def _run_esrgan(
    pipelines: PipelineCache,
    runs: Sequence[TaskRun],
    inputs: Sequence[Inputs],
    control: StepControl,
) -> list[list[GeneratedImage]]:
    [run], [images] = runs, inputs
    p = run.params
    model = upscale.load_esrgan(pipelines, run.weights, run.fallback, control)
    result = upscale.run_esrgan(model, image_of(images[IMAGE]), p["width"], p["height"], control)
    return [[GeneratedImage(result, p["seed"], False)]]


def _run_latent_upscale(
    pipelines: PipelineCache,
    runs: Sequence[TaskRun],
    inputs: Sequence[Inputs],
    control: StepControl,
) -> list[list[GeneratedImage]]:
    [run], [images] = runs, inputs
    p = run.params
    params = upscale.LatentUpscaleParams(
        image=image_of(images[IMAGE]),
        width=p["width"],
        height=p["height"],
        prompts=prompts_of(p),
        steps=p["steps"],
        cfg_scale=p["cfg_scale"],
        seed=p["seed"],
    )
    pipe = pipelines.get(run.weights, control)
    return [[GeneratedImage(upscale.run_latent_upscale(pipe, params, control), p["seed"], False)]]


DIFFUSION_FAMILIES = (Family.SD1, Family.SD2, Family.SDXL, Family.SD3, Family.FLUX)
BATCHED = frozenset(_DIFFUSION)
RUNNERS: dict[tuple[Task, Family], Runner] = {
    **{(task, family): _run_diffusion for task in _DIFFUSION for family in DIFFUSION_FAMILIES},
    (Task.UPSCALE, Family.ESRGAN): _run_esrgan,
    (Task.UPSCALE, Family.LATENT_UPSCALER): _run_latent_upscale,
}


def pipeline_of(run: TaskRun) -> WeightSource | None:
    """The weights whose pipeline the run's runner takes with `PipelineCache.get` (so that
    `PipelineCache.prefetch` can load it ahead of the run); None for an ESRGAN run, whose model
    loads otherwise (with its fallback)."""
    return None if run.weights.family == Family.ESRGAN else run.weights


@dataclass
class Batch:
    """Runs that share one call: each with its input images (PNG bytes by name)."""

    runs: list[TaskRun] = field(default_factory=list)
    inputs: list[Inputs] = field(default_factory=list)


def run_tasks(
    pipelines: PipelineCache, batch: Batch, control: StepControl
) -> list[list[GeneratedImage]]:
    """Run the batch's runs (one, or several with equal batch keys) as one call: the images
    of each run, in order, each run's through its output filter. `control` sees every step
    (or tile) and may stop it."""
    first = batch.runs[0]
    if len(batch.runs) > 1 and len({run.batch_key() for run in batch.runs}) != 1:
        raise ValueError("the runs of a batch must share their batch_key()")
    runner = RUNNERS.get((first.task, first.weights.family))
    if runner is None:
        raise ValueError(f"no runner for {first.task.value} on the {first.weights.family} family")
    control.check()
    with pipelines.holding():  # not unloaded under the budget while it runs
        result: list[list[GeneratedImage]] = runner(pipelines, batch.runs, batch.inputs, control)
    return [
        screened(pipelines, run, images) for run, images in zip(batch.runs, result, strict=True)
    ]


def screened(
    pipelines: PipelineCache, run: TaskRun, images: list[GeneratedImage]
) -> list[GeneratedImage]:
    """The run's images through its output filter (if it has one)."""
    spec = run.content_filter
    if spec is None:
        return images
    found = safety.classifier(spec, pipelines.device, pipelines.offline, pipelines.models_dir)
    return safety.screen(images, spec, found)
