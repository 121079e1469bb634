"""From a wire body to the work of a job: each rule of the engine checked once, the task's
parameters as plain data (`inference.tasks.TaskRun`), its input images as PNG bytes, its
progress total and its price."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from PIL import Image as PILImage

from localstability import errors
from localstability.config import Settings
from localstability.engines import (
    CATALOGUE,
    EngineSpec,
    Family,
    Task,
    custom_engine,
    get_engine,
    upscale_size,
)
from localstability.inference.diffusion import steps_run
from localstability.inference.families import adapter_for
from localstability.inference.loader import WeightSource
from localstability.inference.prompts import WeightedPrompt
from localstability.inference.tasks import IMAGE, INIT_IMAGE, MASK, TaskRun, png
from localstability.inference.weights import detect_family
from localstability.protocol import (
    GenerationRequestOptionalParams,
    ImageToImageRequestBody,
    InitImageMode,
    MaskingRequestBody,
    MaskSource,
    TextPrompt,
    TextToImageRequestBody,
    UpscaleRequestBody,
)
from localstability.service.images import decode_upload
from localstability.service.loras import LoraFolder
from localstability.service.pricing import cost_micros
from localstability.service.prompts import weighted_prompts
from localstability.service.records import extra_prompts
from localstability.service.seeds import sample_seeds

Body = TypeVar("Body", bound=GenerationRequestOptionalParams)


def weight_source(settings: Settings, engine: EngineSpec, role: str = "base") -> WeightSource:
    """The configured weight source of an engine (the catalogue default unless overridden)."""
    config = settings.engine_config(engine.id)
    source = config.source or engine.default_source
    if role == "inpaint":
        if not config.inpainting_source:
            raise ValueError(f"engine {engine.id} has no dedicated inpainting checkpoint")
        source = config.inpainting_source
    return WeightSource(
        engine_id=engine.id,
        family=engine.family,
        source=source,
        config=config.config,
        variant=config.variant,
        role=role,
    )


def fallback_source(settings: Settings, engine: EngineSpec) -> WeightSource | None:
    """The catalogue's fallback weights, used only while the engine's source is the default."""
    if not engine.fallback_source or settings.engine_config(engine.id).source:
        return None
    return WeightSource(engine.id, engine.family, engine.fallback_source)


def weights_state(settings: Settings, engine: EngineSpec) -> tuple[str, WeightSource | None]:
    """Whether the engine's weights are on this machine: "ready" (its own), "fallback" (the
    offline fallback, returned too) or "missing"."""
    models_dir = settings.data_dir / "models"
    if weight_source(settings, engine).is_ready(models_dir):
        return "ready", None
    fallback = fallback_source(settings, engine)
    if fallback is not None and fallback.is_ready(models_dir):
        return "fallback", fallback
    return "missing", None


def required_file(files: dict[str, bytes], name: str) -> bytes:
    try:
        return files[name]
    except KeyError:
        raise errors.BadRequest(f"{name}: is required") from None


@dataclass(frozen=True)
class Work:
    """A job's work before it has an id: what runs, its input images, its price."""

    run: TaskRun
    inputs: dict[str, bytes]  # PNG bytes by input name
    cost: int  # micro-credits
    steps: int  # the progress total known before it starts


def deployment_catalogue(settings: Settings) -> dict[str, EngineSpec]:
    """The catalogue's engines (with the names and descriptions the operator gave them), then
    the operator's own engines: each with its family's rules, the family named in its
    configuration or read from its weights (ValueError when neither says)."""
    catalogue: dict[str, EngineSpec] = {}
    for engine in CATALOGUE.values():
        config = settings.engine_config(engine.id)
        catalogue[engine.id] = replace(
            engine,
            name=config.name or engine.name,
            description=config.description or engine.description,
        )
    for engine_id, config in settings.custom_engines().items():
        source = str(config.source)
        family = config.family or detect_family(source)
        if family is None:
            families = ", ".join(f.value for f in Family)
            raise ValueError(
                f"engine {engine_id}: its weights ({source}) don't say which model family they "
                f"are (or are not on this machine); set its family, one of {families}"
            )
        catalogue[engine_id] = custom_engine(
            engine_id, family, source, config.name, config.description
        )
    return catalogue


class TaskBuilder:
    """The engines a deployment serves, and the work each kind of request makes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.catalogue = deployment_catalogue(settings)
        self.loras = LoraFolder(settings)
        for engine in self.catalogue.values():
            self.loras.check_engine(engine)

    def serves(self, engine: EngineSpec) -> bool:
        """Whether this deployment serves `engine`: unless the operator disabled it; an engine
        that `needs_weights` (SD 3.5, FLUX.1) only once the operator configured it (an
        [engines.ID] table) or its weights are on this machine (`models pull`)."""
        if not self.settings.engine_config(engine.id).enabled:
            return False
        if not engine.needs_weights or engine.id in self.settings.engines:
            return True
        return weights_state(self.settings, engine)[0] != "missing"

    def engines(self) -> list[EngineSpec]:
        """The engines this deployment serves: the catalogue's, then the operator's own."""
        return [e for e in self.catalogue.values() if self.serves(e)]

    def engine(self, engine_id: str, task: Task | None = None) -> EngineSpec:
        """The served engine `engine_id` (404 otherwise), checked to support `task`."""
        engine = get_engine(engine_id, self.catalogue)
        if not self.serves(engine):
            raise errors.NotFound(f"The specified engine (ID {engine_id}) was not found.")
        if task is not None and task not in engine.tasks:
            raise errors.BadRequest(f"engine {engine_id} does not support {task.value}")
        return engine

    def cost(
        self,
        engine: EngineSpec,
        width: int,
        height: int,
        steps: int | None = None,
        samples: int = 1,
        prompts: list[WeightedPrompt] | None = None,
    ) -> int:
        """The price in micro-credits (see localstability.service.pricing)."""
        factor = self.settings.engine_config(engine.id).cost_factor
        return cost_micros(
            engine.cost_factor if factor is None else factor,
            width=width,
            height=height,
            steps=steps,
            samples=samples,
            extra_prompts=extra_prompts(prompts or []),
        )

    def batch_max_images(self, engine: EngineSpec) -> int:
        if not self.settings.batching:
            return 1
        configured = self.settings.engine_config(engine.id).batch_max_images
        return engine.batch_max_images if configured is None else configured

    async def _decode(self, files: dict[str, bytes], field: str) -> PILImage.Image:
        """Decode an upload on a thread: a large image takes a while and the loop serves on."""
        data = required_file(files, field)
        return await asyncio.to_thread(decode_upload, data, field, self.settings.max_upload_pixels)

    # -- diffusion -------------------------------------------------------------------------

    def _common(
        self,
        engine: EngineSpec,
        body: GenerationRequestOptionalParams,
        text_prompts: list[TextPrompt],
        png_response: bool,
    ) -> list[WeightedPrompt]:
        """The rules every diffusion request shares: samples vs a PNG answer, a sampler the
        family offers, the prompts (weighted, styled; negative ones where the family takes
        them)."""
        if png_response and body.samples > 1:
            raise errors.InvalidSamples(
                "samples must be 1 when Accept is image/png; "
                f"use Accept: application/json for {body.samples} samples"
            )
        offered = adapter_for(engine.family).samplers
        if body.sampler is not None and body.sampler not in offered:
            raise errors.BadRequest(
                f"sampler: {engine.id} offers {', '.join(offered) or 'no sampler choice'}, "
                f"not {body.sampler.value}"
            )
        if adapter_for(engine.family).negative_prompts:
            return weighted_prompts(text_prompts, body.style_preset)
        if any(p.weight < 0 for p in text_prompts):
            raise errors.BadRequest(
                f"text_prompts: {engine.id} takes no negative prompts (a weight below 0): "
                f"{engine.family.value} models are guidance-distilled and have no negative "
                "conditioning; leave them out"
            )
        # A style preset's own negative prompt has nothing to condition here: its positive
        # template alone applies (docs/models.md).
        return [p for p in weighted_prompts(text_prompts, body.style_preset) if p.weight > 0]

    def _diffusion(
        self,
        engine: EngineSpec,
        task: Task,
        body: GenerationRequestOptionalParams,
        prompts: list[WeightedPrompt],
        size: tuple[int, int],
        inputs: dict[str, PILImage.Image] | None = None,
        source: WeightSource | None = None,
        **extra: Any,
    ) -> tuple[TaskRun, int]:
        """The run and its price."""
        params = {
            "prompts": [[p.text, p.weight] for p in prompts],
            "steps": body.steps,
            "cfg_scale": body.cfg_scale,
            "sampler": body.sampler.value if body.sampler else None,
            "seeds": sample_seeds(body.seed, body.samples),
            "width": size[0],
            "height": size[1],
            "loras": self.loras.for_run(engine, body.loras),
            **extra,
        }
        run = TaskRun(
            task=task,
            weights=source or weight_source(self.settings, engine),
            params=params,
            inputs=tuple(inputs or ()),
            batch_max_images=self.batch_max_images(engine),
        )
        cost = self.cost(engine, *size, steps=body.steps, samples=body.samples, prompts=prompts)
        return run, cost

    async def text_to_image(
        self,
        engine: EngineSpec,
        body: TextToImageRequestBody,
        png_response: bool,
        server_sized: bool = False,
    ) -> Work:
        """`server_sized`: the size comes from the server's own table (v2beta's aspect
        ratios), not from the client, so the engine's v1 size rules don't judge it."""
        body = engine_defaults(engine, body)
        # An omitted size takes the engine's default (1024x1024 on SDXL 1.0, else 512x512).
        prompts = self._common(engine, body, body.text_prompts, png_response)
        width = body.width if "width" in body.model_fields_set else engine.default_width
        height = body.height if "height" in body.model_fields_set else engine.default_height
        if not server_sized:
            engine.check_size(width, height)
        run, cost = self._diffusion(engine, Task.TEXT_TO_IMAGE, body, prompts, (width, height))
        return Work(run, {}, cost, body.steps)

    async def image_to_image(
        self,
        engine: EngineSpec,
        body: ImageToImageRequestBody,
        files: dict[str, bytes],
        png_response: bool,
        server_sized: bool = False,
    ) -> Work:
        """The output takes the init image's size, under the engine's rules (unless the
        server chose that size: `server_sized`)."""
        body = engine_defaults(engine, body)
        init_image = await self._decode(files, INIT_IMAGE)
        if not server_sized:
            engine.check_size(*init_image.size)
        prompts = self._common(engine, body, body.text_prompts, png_response)
        if body.init_image_mode == InitImageMode.IMAGE_STRENGTH:
            strength, skip_end = 1.0 - body.image_strength, 0.0
        else:
            strength, skip_end = body.step_schedule_start, body.step_schedule_end or 0.0
        images = {INIT_IMAGE: init_image.convert("RGB")}
        run, cost = self._diffusion(
            engine,
            Task.IMAGE_TO_IMAGE,
            body,
            prompts,
            init_image.size,
            images,
            strength=strength,
            skip_end=skip_end,
        )
        steps = steps_run(body.steps, strength, skip_end)
        return Work(run, await _encoded(images), cost, steps)

    async def masking(
        self,
        engine: EngineSpec,
        body: MaskingRequestBody,
        files: dict[str, bytes],
        png_response: bool,
    ) -> Work:
        """Regenerate where the mask says, keep the init image's pixels elsewhere."""
        body = engine_defaults(engine, body)
        init_image = await self._decode(files, INIT_IMAGE)
        mask = await self._mask(body.mask_source, init_image, files)
        engine.check_size(*init_image.size)
        prompts = self._common(engine, body, body.text_prompts, png_response)
        config = self.settings.engine_config(engine.id)
        role = "inpaint" if config.inpainting_source else "base"
        images = {INIT_IMAGE: init_image.convert("RGB"), MASK: mask}
        source = weight_source(self.settings, engine, role)
        run, cost = self._diffusion(
            engine, Task.MASKING, body, prompts, init_image.size, images, source
        )
        return Work(run, await _encoded(images), cost, body.steps)

    async def _mask(
        self, mask_source: MaskSource, init_image: PILImage.Image, files: dict[str, bytes]
    ) -> PILImage.Image:
        """The mask as L: 255 where the image is regenerated, 0 where it is kept."""
        from PIL import ImageOps

        if mask_source == MaskSource.INIT_IMAGE_ALPHA:
            if init_image.mode != "RGBA":
                raise errors.InvalidMaskImage(
                    "init_image: mask_source INIT_IMAGE_ALPHA needs an init_image with an "
                    "alpha channel"
                )
            return ImageOps.invert(init_image.getchannel("A"))
        if "mask_image" not in files:
            raise errors.InvalidMaskImage(
                f"mask_image: is required when mask_source is {mask_source.value}"
            )
        mask = await self._decode(files, "mask_image")
        if mask.size != init_image.size:
            raise errors.InvalidImageDimensions(
                f"mask_image is {mask.size[0]}x{mask.size[1]} but init_image is "
                f"{init_image.size[0]}x{init_image.size[1]}; they must be the same size"
            )
        grey = mask.convert("L")
        return grey if mask_source == MaskSource.MASK_IMAGE_WHITE else ImageOps.invert(grey)

    # -- upscale ---------------------------------------------------------------------------

    async def upscale(
        self,
        engine: EngineSpec,
        body: UpscaleRequestBody,
        files: dict[str, bytes],
        png_response: bool,
        factor: int | None = None,
    ) -> Work:
        """Twice the input by default, or to the given width or height (aspect kept); or
        `factor` times the input, a size the server chose (v2beta's upscale/fast: 4x, past v1's
        pixel cap)."""
        image = await self._decode(files, IMAGE)
        if factor is None:
            width, height = upscale_size(*image.size, body.width, body.height)
        else:
            width, height = image.size[0] * factor, image.size[1] * factor
        seed = sample_seeds(body.seed, 1)[0]
        params: dict[str, Any] = {"width": width, "height": height, "seed": seed}
        source = weight_source(self.settings, engine)
        inputs = await _encoded({IMAGE: image})
        if engine.family == Family.ESRGAN:
            run = TaskRun(
                task=Task.UPSCALE,
                weights=source,
                params=params,
                inputs=(IMAGE,),
                fallback=fallback_source(self.settings, engine),
            )
            # Its progress counts tiles, which are known once it starts.
            return Work(run, inputs, self.cost(engine, width, height), 0)
        prompts = (
            weighted_prompts(body.text_prompts, None)
            if body.text_prompts
            else [WeightedPrompt("", 1.0)]
        )
        params |= {
            "prompts": [[p.text, p.weight] for p in prompts],
            "steps": body.steps,
            "cfg_scale": body.cfg_scale,
        }
        run = TaskRun(task=Task.UPSCALE, weights=source, params=params, inputs=(IMAGE,))
        cost = self.cost(engine, width, height, steps=body.steps, prompts=prompts)
        return Work(run, inputs, cost, body.steps)


def engine_defaults(engine: EngineSpec, body: Body) -> Body:
    """`body` with the engine's own steps and cfg_scale where the request left them out
    (SD 3.5 and FLUX.1 have theirs; the others take the wire's 30 and 7)."""
    update: dict[str, Any] = {}
    if engine.default_steps is not None and "steps" not in body.model_fields_set:
        update["steps"] = engine.default_steps
    if engine.default_cfg_scale is not None and "cfg_scale" not in body.model_fields_set:
        update["cfg_scale"] = engine.default_cfg_scale
    return body.model_copy(update=update) if update else body


async def _encoded(images: dict[str, PILImage.Image]) -> dict[str, bytes]:
    """The input images as PNG bytes (lossless: the job sees these very pixels), on a thread."""

    def encode() -> dict[str, bytes]:
        return {name: png(image) for name, image in images.items()}

    return await asyncio.to_thread(encode)
