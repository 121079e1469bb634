"""The flow-matching families: Stable Diffusion 3.5 (two CLIP encoders and T5) and FLUX.1
(one CLIP encoder's pooled output and T5).

Their samplers are the v1 names they can honour (`SD3_SAMPLERS`, `FLUX_SAMPLERS` in
schedulers.py). Their T5 encoder reads a prompt up to `max_sequence_length` tokens (512 for
SD 3.5 and FLUX.1 [dev], the most T5 takes; 256 for FLUX.1 [schnell], the length it was
distilled with); the CLIP encoders read the first 77, as in every family. SD 3.5 takes negative
prompts (classifier-free guidance on the negative embeddings); FLUX.1 is guidance-distilled and
has none, so it takes no negative prompt (`negative_prompts = False`: the service answers 400)
and `cfg_scale` is its distilled guidance (ignored by [schnell], which has no guidance
embedding). Their published weights are bfloat16 and overflow in float16 (black or NaN
images), so a float16 deployment loads them in bfloat16.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from localstability.engines import Family
from localstability.inference.families import FamilyAdapter, Role
from localstability.inference.schedulers import FLUX_SAMPLERS, SD3_SAMPLERS, SchedulerChoice
from localstability.protocol import Sampler

# T5's longest input, which SD 3.5 and FLUX.1 [dev] take whole (the pipelines' own default is
# 256 for SD 3.5; a request may use the encoder's full length).
T5_MAX_LENGTH = 512
# FLUX.1 [schnell] (the model without a guidance embedding) was distilled with 256.
FLUX_SCHNELL_MAX_LENGTH = 256


class StableDiffusion3(FamilyAdapter):
    families: ClassVar[frozenset[Family]] = frozenset({Family.SD3})
    pipelines: ClassVar[Mapping[str, str]] = MappingProxyType(
        {
            Role.BASE: "StableDiffusion3Pipeline",
            Role.IMG2IMG: "StableDiffusion3Img2ImgPipeline",
            Role.INPAINT: "StableDiffusion3InpaintPipeline",
        }
    )
    samplers: ClassVar[Mapping[Sampler, SchedulerChoice]] = SD3_SAMPLERS
    default_sampler: ClassVar[Sampler | None] = Sampler.K_EULER
    img2img_takes_size: ClassVar[bool] = True
    instead_of_float16: ClassVar[str | None] = "bfloat16"

    def max_sequence_length(self, pipe: Any) -> int:
        return T5_MAX_LENGTH

    def encode_prompt(self, pipe: Any, text: str, device: Any) -> dict[str, Any]:
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompt=text,
            prompt_2=None,
            prompt_3=None,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length(pipe),
        )
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def default_negative(self, pipe: Any, positive: dict[str, Any], device: Any) -> dict[str, Any]:
        # The pipeline encodes the empty prompt with every encoder.
        _, negative, _, negative_pooled = pipe.encode_prompt(
            prompt=None,
            prompt_2=None,
            prompt_3=None,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=True,
            max_sequence_length=self.max_sequence_length(pipe),
            **positive,
        )
        return {
            "negative_prompt_embeds": negative,
            "negative_pooled_prompt_embeds": negative_pooled,
        }


class Flux(FamilyAdapter):
    families: ClassVar[frozenset[Family]] = frozenset({Family.FLUX})
    pipelines: ClassVar[Mapping[str, str]] = MappingProxyType(
        {
            Role.BASE: "FluxPipeline",
            Role.IMG2IMG: "FluxImg2ImgPipeline",
            Role.INPAINT: "FluxInpaintPipeline",
        }
    )
    samplers: ClassVar[Mapping[Sampler, SchedulerChoice]] = FLUX_SAMPLERS
    default_sampler: ClassVar[Sampler | None] = Sampler.K_EULER
    negative_prompts: ClassVar[bool] = False
    img2img_takes_size: ClassVar[bool] = True
    instead_of_float16: ClassVar[str | None] = "bfloat16"

    def max_sequence_length(self, pipe: Any) -> int:
        """[dev] (with a guidance embedding) 512, [schnell] 256: read from the weights."""
        guided = bool(pipe.transformer.config.guidance_embeds)
        return T5_MAX_LENGTH if guided else FLUX_SCHNELL_MAX_LENGTH

    def encode_prompt(self, pipe: Any, text: str, device: Any) -> dict[str, Any]:
        embeds, pooled, _text_ids = pipe.encode_prompt(
            prompt=text,
            prompt_2=None,
            device=device,
            num_images_per_prompt=1,
            max_sequence_length=self.max_sequence_length(pipe),
        )
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def default_negative(self, pipe: Any, positive: dict[str, Any], device: Any) -> dict[str, Any]:
        # No negative prompt: the pipeline runs without one (true CFG off).
        return {}


ADAPTERS = (StableDiffusion3(), Flux())
