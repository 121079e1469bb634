"""Stable Diffusion XL: two CLIP text encoders; a prompt is their `prompt_embeds` and the
second one's `pooled_prompt_embeds`."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from localstability.engines import Family
from localstability.inference.families import FamilyAdapter, Role
from localstability.inference.schedulers import SAMPLER_SCHEDULERS, SchedulerChoice
from localstability.protocol import Sampler


class StableDiffusionXL(FamilyAdapter):
    families: ClassVar[frozenset[Family]] = frozenset({Family.SDXL})
    pipelines: ClassVar[Mapping[str, str]] = MappingProxyType(
        {
            Role.BASE: "StableDiffusionXLPipeline",
            Role.IMG2IMG: "StableDiffusionXLImg2ImgPipeline",
            Role.INPAINT: "StableDiffusionXLInpaintPipeline",
        }
    )
    samplers: ClassVar[Mapping[Sampler, SchedulerChoice]] = SAMPLER_SCHEDULERS

    def encode_prompt(self, pipe: Any, text: str, device: Any) -> dict[str, Any]:
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompt=text, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def default_negative(self, pipe: Any, positive: dict[str, Any], device: Any) -> dict[str, Any]:
        # The empty prompt encoded, or zeros where the model's force_zeros_for_empty_prompt
        # says so: the pipeline decides, as it does when called with no negative prompt.
        _, negative, _, negative_pooled = pipe.encode_prompt(
            prompt=None,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=True,
            **positive,
        )
        return {
            "negative_prompt_embeds": negative,
            "negative_pooled_prompt_embeds": negative_pooled,
        }


ADAPTERS = (StableDiffusionXL(),)
