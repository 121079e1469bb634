"""Generation use cases: check the engine's rules, run the job, shape the artifacts."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any

from localstability import errors
from localstability.config import Settings
from localstability.engines import CATALOGUE, EngineSpec, Task, get_engine
from localstability.inference.loader import PipelineCache, WeightSource
from localstability.inference.text_to_image import TextToImageParams, run_text_to_image
from localstability.inference.worker import InferenceWorker
from localstability.protocol import FinishReason, TextToImageRequestBody
from localstability.service.prompts import weighted_prompts
from localstability.service.seeds import sample_seeds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Artifact:
    """One generated image, PNG-encoded, with the seed that made it."""

    png: bytes
    seed: int
    finish_reason: FinishReason


def encode_png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def weight_source(settings: Settings, engine: EngineSpec) -> WeightSource:
    """The configured weight source of an engine (the catalogue default unless overridden)."""
    config = settings.engine_config(engine.id)
    return WeightSource(
        engine_id=engine.id,
        family=engine.family,
        source=config.source or engine.default_source,
        config=config.config,
        variant=config.variant,
    )


class GenerationService:
    """Text-to-image (and, later, image-to-image, masking, upscale) for the front doors."""

    def __init__(self, settings: Settings, pipelines: PipelineCache, worker: InferenceWorker):
        self.settings = settings
        self.pipelines = pipelines
        self.worker = worker

    def engines(self) -> list[EngineSpec]:
        """The engines this deployment serves, in catalogue order."""
        return [e for e in CATALOGUE.values() if self.settings.engine_config(e.id).enabled]

    def engine(self, engine_id: str) -> EngineSpec:
        engine = get_engine(engine_id)
        if not self.settings.engine_config(engine_id).enabled:
            raise errors.NotFound(f"The specified engine (ID {engine_id}) was not found.")
        return engine

    def source(self, engine: EngineSpec) -> WeightSource:
        return weight_source(self.settings, engine)

    async def text_to_image(
        self, engine_id: str, body: TextToImageRequestBody, *, png_response: bool
    ) -> list[Artifact]:
        """Validate a text-to-image request against the engine's rules and run it."""
        engine = self.engine(engine_id)
        if Task.TEXT_TO_IMAGE not in engine.tasks:
            raise errors.BadRequest(f"engine {engine_id} does not support text-to-image")
        if png_response and body.samples > 1:
            raise errors.InvalidSamples(
                "samples must be 1 when Accept is image/png; "
                f"use Accept: application/json for {body.samples} samples"
            )
        # An omitted size takes the engine's default (1024x1024 on SDXL 1.0, else 512x512).
        width = body.width if "width" in body.model_fields_set else engine.default_width
        height = body.height if "height" in body.model_fields_set else engine.default_height
        engine.check_size(width, height)
        params = TextToImageParams(
            prompts=weighted_prompts(body.text_prompts, body.style_preset),
            width=width,
            height=height,
            steps=body.steps,
            cfg_scale=body.cfg_scale,
            sampler=body.sampler,
            seeds=sample_seeds(body.seed, body.samples),
        )
        return await self.worker.run(self._run_text_to_image, self.source(engine), params)

    def _run_text_to_image(self, source: WeightSource, params: TextToImageParams) -> list[Artifact]:
        pipe = self.pipelines.get(source)
        images = run_text_to_image(pipe, params)
        return [
            Artifact(
                png=encode_png(generated.image),
                seed=generated.seed,
                finish_reason=(
                    FinishReason.CONTENT_FILTERED if generated.nsfw else FinishReason.SUCCESS
                ),
            )
            for generated in images
        ]
