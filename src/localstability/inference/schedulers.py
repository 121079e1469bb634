"""The v1 sampler names mapped to diffusers schedulers.

A fresh scheduler is built per request from the pipeline's own scheduler config, so the shared
pipeline is never mutated and the model's training settings (beta schedule, prediction type,
timestep spacing) carry over.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from localstability import errors
from localstability.protocol import Sampler

DEFAULT_SAMPLER = Sampler.K_DPMPP_2M

# (diffusers class name, extra config)
SchedulerChoice = tuple[str, dict[str, Any]]

# The samplers of the Stable Diffusion families (each adapter in inference/families/ says which
# mapping it offers). K_DPMPP_2S_ANCESTRAL has no exact diffusers twin:
# DPMSolverSinglestepScheduler is DPM-Solver++ 2S without the ancestral noise.
SAMPLER_SCHEDULERS: dict[Sampler, SchedulerChoice] = {
    Sampler.DDIM: ("DDIMScheduler", {}),
    Sampler.DDPM: ("DDPMScheduler", {}),
    Sampler.K_DPMPP_2M: ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    Sampler.K_DPMPP_2S_ANCESTRAL: ("DPMSolverSinglestepScheduler", {"solver_order": 2}),
    Sampler.K_DPM_2: ("KDPM2DiscreteScheduler", {}),
    Sampler.K_DPM_2_ANCESTRAL: ("KDPM2AncestralDiscreteScheduler", {}),
    Sampler.K_EULER: ("EulerDiscreteScheduler", {}),
    Sampler.K_EULER_ANCESTRAL: ("EulerAncestralDiscreteScheduler", {}),
    Sampler.K_HEUN: ("HeunDiscreteScheduler", {}),
    Sampler.K_LMS: ("LMSDiscreteScheduler", {}),
}

# The samplers of the flow-matching families: the v1 names they can honour, each run on every
# task (text-to-image, image-to-image, inpainting). K_EULER is Euler on the flow ODE, the
# schedule those models ship with (FlowMatchEuler keeps their shift, dynamic for FLUX.1 [dev]);
# K_HEUN is Heun's method on it, for SD 3.5 (FLUX's pipelines give the scheduler their own
# sigmas, which FlowMatchHeun doesn't take). Any other name is answered 400 with these lists:
# the ancestral and DDPM samplers add noise that the flow ODE has no place for, DDIM and LMS
# are defined on a noise-prediction schedule, and diffusers' DPM-Solver++ runs flow matching
# for text-to-image only (it can't noise an init image: no scale_noise).
SD3_SAMPLERS: dict[Sampler, SchedulerChoice] = {
    Sampler.K_EULER: ("FlowMatchEulerDiscreteScheduler", {}),
    Sampler.K_HEUN: ("FlowMatchHeunDiscreteScheduler", {}),
}
FLUX_SAMPLERS: dict[Sampler, SchedulerChoice] = {
    Sampler.K_EULER: ("FlowMatchEulerDiscreteScheduler", {}),
}


def make_scheduler(
    sampler: Sampler | None,
    base_config: Any,
    samplers: Mapping[Sampler, SchedulerChoice] = SAMPLER_SCHEDULERS,
    default: Sampler | None = DEFAULT_SAMPLER,
) -> Any:
    """A new scheduler for `sampler` (None: `default`) built from a pipeline's config;
    `samplers` are the ones the model's family offers."""
    import diffusers

    chosen = sampler or default
    if chosen is None or chosen not in samplers:
        offered = ", ".join(samplers) or "none"
        wanted = f"sampler {chosen}" if chosen else "a request without a sampler"
        raise errors.BadRequest(f"sampler: this engine does not take {wanted} (offered: {offered})")
    class_name, overrides = samplers[chosen]
    scheduler_class = getattr(diffusers, class_name)
    return scheduler_class.from_config(base_config, **overrides)
