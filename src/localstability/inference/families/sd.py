"""Stable Diffusion 1.x and 2.x: one CLIP text encoder; a prompt is its `prompt_embeds`."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from localstability.engines import Family
from localstability.inference.families import FamilyAdapter, Role
from localstability.inference.schedulers import SAMPLER_SCHEDULERS, SchedulerChoice
from localstability.protocol import Sampler


class StableDiffusion(FamilyAdapter):
    families: ClassVar[frozenset[Family]] = frozenset({Family.SD1, Family.SD2})
    pipelines: ClassVar[Mapping[str, str]] = MappingProxyType(
        {
            Role.BASE: "StableDiffusionPipeline",
            Role.IMG2IMG: "StableDiffusionImg2ImgPipeline",
            Role.INPAINT: "StableDiffusionInpaintPipeline",
        }
    )
    samplers: ClassVar[Mapping[Sampler, SchedulerChoice]] = SAMPLER_SCHEDULERS

    def encode_prompt(self, pipe: Any, text: str, device: Any) -> dict[str, Any]:
        embeds, _ = pipe.encode_prompt(
            prompt=text, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return {"prompt_embeds": embeds}

    def default_negative(self, pipe: Any, positive: dict[str, Any], device: Any) -> dict[str, Any]:
        # The pipeline encodes the empty prompt.
        _, negative = pipe.encode_prompt(
            prompt=None,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=True,
            **positive,
        )
        return {"negative_prompt_embeds": negative}


ADAPTERS = (StableDiffusion(),)
