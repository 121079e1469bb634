"""Generation use cases: check the engine's rules, run the job, shape the artifacts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from PIL import Image as PILImage
from pydantic import BaseModel

from localstability import errors
from localstability.config import Settings
from localstability.engines import CATALOGUE, EngineSpec, Family, Task, get_engine, upscale_size
from localstability.inference import diffusion, upscale
from localstability.inference.control import StepControl
from localstability.inference.loader import PipelineCache, WeightSource
from localstability.inference.prompts import WeightedPrompt
from localstability.jobs.base import Batching, JobSpec, RunFn
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
from localstability.service.pricing import cost_micros
from localstability.service.prompts import weighted_prompts
from localstability.service.records import extra_prompts, request_summary
from localstability.service.seeds import sample_seeds
from localstability.store.accounts import Principal

log = logging.getLogger(__name__)


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


def required_file(files: dict[str, bytes], name: str) -> bytes:
    try:
        return files[name]
    except KeyError:
        raise errors.BadRequest(f"{name}: is required") from None


class GenerationService:
    """Text-to-image, image-to-image, masking and upscale for the front doors."""

    def __init__(self, settings: Settings, pipelines: PipelineCache):
        self.settings = settings
        self.pipelines = pipelines

    def engines(self) -> list[EngineSpec]:
        """The engines this deployment serves, in catalogue order."""
        return [e for e in CATALOGUE.values() if self.settings.engine_config(e.id).enabled]

    def engine(self, engine_id: str, task: Task | None = None) -> EngineSpec:
        """The enabled engine `engine_id` (404 otherwise), checked to support `task`."""
        engine = get_engine(engine_id)
        if not self.settings.engine_config(engine_id).enabled:
            raise errors.NotFound(f"The specified engine (ID {engine_id}) was not found.")
        if task is not None and task not in engine.tasks:
            raise errors.BadRequest(f"engine {engine_id} does not support {task.value}")
        return engine

    def source(self, engine: EngineSpec) -> WeightSource:
        return weight_source(self.settings, engine)

    async def decode(self, data: bytes, field: str) -> PILImage.Image:
        """Decode an upload on a thread: a large image takes a while and the loop serves on."""
        return await asyncio.to_thread(decode_upload, data, field, self.settings.max_upload_pixels)

    def _common(
        self, body: GenerationRequestOptionalParams, text_prompts: list[TextPrompt], png: bool
    ) -> dict[str, Any]:
        if png and body.samples > 1:
            raise errors.InvalidSamples(
                "samples must be 1 when Accept is image/png; "
                f"use Accept: application/json for {body.samples} samples"
            )
        return {
            "prompts": weighted_prompts(text_prompts, body.style_preset),
            "steps": body.steps,
            "cfg_scale": body.cfg_scale,
            "sampler": body.sampler,
            "seeds": sample_seeds(body.seed, body.samples),
        }

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

    def _spec(
        self,
        principal: Principal,
        engine: EngineSpec,
        task: Task,
        body: BaseModel,
        cost: int,
        run: RunFn,
        steps: int,
        batching: Batching | None = None,
    ) -> JobSpec:
        return JobSpec(
            principal=principal,
            engine=engine,
            task=task,
            parameters=request_summary(body),
            cost=cost,
            run=run,
            steps=steps,
            batching=batching,
        )

    def _diffusion(
        self,
        principal: Principal,
        task: Task,
        body: GenerationRequestOptionalParams,
        engine: EngineSpec,
        source: WeightSource,
        run: Callable[[Any, Any, StepControl], list[list[diffusion.GeneratedImage]]],
        params: diffusion.DiffusionParams,
        size: tuple[int, int],
        steps: int,
    ) -> JobSpec:
        """A diffusion job; queued jobs with the same weights, task and batch_key() may run
        together (see localstability.inference.diffusion)."""

        def batch(parts: list[Any], control: StepControl) -> list[list[diffusion.GeneratedImage]]:
            return run(self.pipelines.get(source, control), parts, control)

        def job(control: StepControl) -> list[diffusion.GeneratedImage]:
            return batch([params], control)[0]

        batching = Batching(
            key=(source, task, params.batch_key()),
            images=len(params.seeds),
            max_images=self.batch_max_images(engine),
            part=params,
            run=batch,
        )
        cost = self.cost(
            engine, *size, steps=body.steps, samples=body.samples, prompts=params.prompts
        )
        return self._spec(principal, engine, task, body, cost, job, steps, batching)

    async def text_to_image(
        self,
        principal: Principal,
        engine_id: str,
        body: TextToImageRequestBody,
        *,
        png_response: bool,
    ) -> JobSpec:
        """Validate a text-to-image request against the engine's rules and run it."""
        engine = self.engine(engine_id, Task.TEXT_TO_IMAGE)
        common = self._common(body, body.text_prompts, png_response)
        # An omitted size takes the engine's default (1024x1024 on SDXL 1.0, else 512x512).
        width = body.width if "width" in body.model_fields_set else engine.default_width
        height = body.height if "height" in body.model_fields_set else engine.default_height
        engine.check_size(width, height)
        params = diffusion.TextToImageParams(**common, width=width, height=height)
        return self._diffusion(
            principal,
            Task.TEXT_TO_IMAGE,
            body,
            engine,
            self.source(engine),
            diffusion.run_text_to_image,
            params,
            (width, height),
            params.steps,
        )

    async def image_to_image(
        self,
        principal: Principal,
        engine_id: str,
        body: ImageToImageRequestBody,
        files: dict[str, bytes],
        *,
        png_response: bool,
    ) -> JobSpec:
        """Image-to-image: the output takes the init image's size, under the engine's rules."""
        engine = self.engine(engine_id, Task.IMAGE_TO_IMAGE)
        init_image = await self.decode(required_file(files, "init_image"), "init_image")
        engine.check_size(*init_image.size)
        common = self._common(body, body.text_prompts, png_response)
        if body.init_image_mode == InitImageMode.IMAGE_STRENGTH:
            strength, skip_end = 1.0 - body.image_strength, 0.0
        else:
            strength, skip_end = body.step_schedule_start, body.step_schedule_end or 0.0
        params = diffusion.ImageToImageParams(
            **common, init_image=init_image.convert("RGB"), strength=strength, skip_end=skip_end
        )
        return self._diffusion(
            principal,
            Task.IMAGE_TO_IMAGE,
            body,
            engine,
            self.source(engine),
            diffusion.run_image_to_image,
            params,
            init_image.size,
            diffusion.steps_run(params.steps, strength, skip_end),
        )

    async def masking(
        self,
        principal: Principal,
        engine_id: str,
        body: MaskingRequestBody,
        files: dict[str, bytes],
        *,
        png_response: bool,
    ) -> JobSpec:
        """Inpainting: regenerate where the mask says, keep the init image's pixels elsewhere."""
        engine = self.engine(engine_id, Task.MASKING)
        init_image = await self.decode(required_file(files, "init_image"), "init_image")
        mask = await self._mask(body.mask_source, init_image, files)
        engine.check_size(*init_image.size)
        params = diffusion.InpaintParams(
            **self._common(body, body.text_prompts, png_response),
            init_image=init_image.convert("RGB"),
            mask=mask,
        )
        config = self.settings.engine_config(engine.id)
        source = (
            weight_source(self.settings, engine, "inpaint")
            if config.inpainting_source
            else self.source(engine)
        )
        return self._diffusion(
            principal,
            Task.MASKING,
            body,
            engine,
            source,
            diffusion.run_inpaint,
            params,
            init_image.size,
            params.steps,
        )

    async def upscale(
        self,
        principal: Principal,
        engine_id: str,
        body: UpscaleRequestBody,
        files: dict[str, bytes],
        *,
        png_response: bool,
    ) -> JobSpec:
        """Upscale: twice the input by default, or to the given width or height (aspect kept)."""
        engine = self.engine(engine_id, Task.UPSCALE)
        image = await self.decode(required_file(files, "image"), "image")
        width, height = upscale_size(*image.size, body.width, body.height)
        seed = sample_seeds(body.seed, 1)[0]
        source = self.source(engine)
        if engine.family == Family.ESRGAN:
            fallback = fallback_source(self.settings, engine)

            def esrgan_job(control: StepControl) -> list[diffusion.GeneratedImage]:
                model = upscale.load_esrgan(self.pipelines, source, fallback, control)
                result = upscale.run_esrgan(model, image, width, height, control)
                return [diffusion.GeneratedImage(result, seed, False)]

            cost = self.cost(engine, width, height)
            # Its progress counts tiles, which are known once it starts.
            return self._spec(principal, engine, Task.UPSCALE, body, cost, esrgan_job, 0)
        prompts = (
            weighted_prompts(body.text_prompts, None)
            if body.text_prompts
            else [WeightedPrompt("", 1.0)]
        )
        params = upscale.LatentUpscaleParams(
            image=image,
            width=width,
            height=height,
            prompts=prompts,
            steps=body.steps,
            cfg_scale=body.cfg_scale,
            seed=seed,
        )

        def latent_job(control: StepControl) -> list[diffusion.GeneratedImage]:
            pipe = self.pipelines.get(source, control)
            result = upscale.run_latent_upscale(pipe, params, control)
            return [diffusion.GeneratedImage(result, seed, False)]

        cost = self.cost(engine, width, height, steps=body.steps, prompts=prompts)
        return self._spec(principal, engine, Task.UPSCALE, body, cost, latent_job, body.steps)

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
        mask = await self.decode(files["mask_image"], "mask_image")
        if mask.size != init_image.size:
            raise errors.InvalidImageDimensions(
                f"mask_image is {mask.size[0]}x{mask.size[1]} but init_image is "
                f"{init_image.size[0]}x{init_image.size[1]}; they must be the same size"
            )
        grey = mask.convert("L")
        return grey if mask_source == MaskSource.MASK_IMAGE_WHITE else ImageOps.invert(grey)
