"""From the wire's text_prompts and style_preset to weighted prompts for the pipeline."""

from __future__ import annotations

import math

from localstability import errors
from localstability.inference.prompts import WeightedPrompt
from localstability.protocol import StylePreset, TextPrompt
from localstability.styles import STYLE_TEMPLATES


def weighted_prompts(
    text_prompts: list[TextPrompt], style_preset: StylePreset | None
) -> list[WeightedPrompt]:
    """Apply the style template to every positive prompt and add its negative prompt.

    Prompts of weight 0 take no part. At least one positive prompt is required.
    """
    prompts = [WeightedPrompt(p.text, p.weight) for p in text_prompts if p.weight != 0]
    if not any(p.weight > 0 for p in prompts):
        raise errors.BadRequest("text_prompts: at least one prompt must have a positive weight")
    for sign in (1, -1):
        # Prompts are blended by w / sum(w): a sum that overflows would blend nothing.
        if not math.isfinite(sum(p.weight for p in prompts if p.weight * sign > 0)):
            raise errors.BadRequest("text_prompts: the weights add up to more than a float holds")
    if style_preset is None:
        return prompts
    template = STYLE_TEMPLATES[style_preset]
    styled = [
        WeightedPrompt(template.apply(p.text), p.weight) if p.weight > 0 else p for p in prompts
    ]
    return [*styled, WeightedPrompt(template.negative_prompt, -1.0)]
