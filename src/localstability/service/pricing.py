"""What a generation costs, in micro-credits.

    cost = 0.2 credits x engine factor x (steps x samples + extra prompts) / 30 x pixels / 1024²

0.2 credits is what SDXL 1.0 costs on the hosted API at 1024x1024, 30 steps, one sample
(its factor is 1.0). The factor weighs an engine's compute per pixel and step against SDXL:
0.5 for SD 1.x and 2.x, 0.25 for the upscalers. For ESRGAN, which has no steps, the steps
term is 1 and the pixels are the output's. A deployment can set its own factor per engine
(`cost_factor` in the engine's configuration). Every prompt beyond the first positive and
negative ones costs another text encoding before the first step, priced as one more denoising
step of one sample. Costs round up to a whole micro-credit.
"""

from __future__ import annotations

from fractions import Fraction
from math import ceil

from localstability.store.models import MICROS_PER_CREDIT

REFERENCE_CREDITS = Fraction(2, 10)
REFERENCE_STEPS = 30
REFERENCE_PIXELS = 1024 * 1024


def cost_micros(
    factor: float,
    *,
    width: int,
    height: int,
    steps: int | None = None,
    samples: int = 1,
    extra_prompts: int = 0,
) -> int:
    """The price of `samples` images of width x height after `steps` steps (None: no steps),
    with `extra_prompts` prompts beyond the first positive and the first negative one."""
    if steps is None:
        work = Fraction(samples)
    else:
        work = Fraction(steps * samples + extra_prompts, REFERENCE_STEPS)
    price = (
        REFERENCE_CREDITS
        * MICROS_PER_CREDIT
        * Fraction(str(factor))
        * work
        * Fraction(width * height, REFERENCE_PIXELS)
    )
    return ceil(price)
