"""Weighted prompts to embeddings.

Several positive prompts blend by weight: their text embeddings (every tensor the family's
adapter encodes a prompt into, e.g. SDXL's pooled embeddings too) are averaged with
coefficients w_i / sum(w). Negative prompts (weight < 0) form the negative prompt the same way,
with |w|. A single prompt is encoded exactly as the pipeline would encode it, and a missing
negative prompt becomes what the pipeline itself would use, so results match calling the
pipeline with the text directly. The family (engines.Family) says how: see
localstability.inference.families.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from localstability.engines import Family
from localstability.inference.control import NO_CONTROL, StepControl
from localstability.inference.families import NEGATIVE_PREFIX, FamilyAdapter, adapter_for


@dataclass(frozen=True)
class WeightedPrompt:
    text: str
    weight: float


def _blend(
    adapter: FamilyAdapter,
    pipe: Any,
    prompts: list[tuple[str, float]],
    device: Any,
    control: StepControl,
) -> dict[str, Any]:
    if not prompts:
        raise ValueError("at least one prompt of positive weight is needed")
    total = sum(weight for _, weight in prompts)
    sums: dict[str, Any] = {}
    for text, weight in prompts:
        control.check()  # each encoding takes a while: a cancelled job stops between them
        coefficient = weight / total
        for name, tensor in adapter.encode_prompt(pipe, text, device).items():
            sums[name] = (
                tensor * coefficient if name not in sums else sums[name] + tensor * coefficient
            )
    return sums


def encode_weighted_prompts(
    pipe: Any,
    prompts: list[WeightedPrompt],
    device: Any,
    control: StepControl = NO_CONTROL,
    *,
    family: Family,
) -> dict[str, Any]:
    """Keyword arguments (prompt_embeds, ...) for a call of `pipe`, a pipeline of `family`;
    `control` may stop it between two prompts."""
    adapter = adapter_for(family)
    positives = [(p.text, p.weight) for p in prompts if p.weight > 0]
    negatives = [(p.text, -p.weight) for p in prompts if p.weight < 0]
    kwargs = _blend(adapter, pipe, positives, device, control)
    if negatives:
        negative = _blend(adapter, pipe, negatives, device, control)
        kwargs.update({NEGATIVE_PREFIX + name: tensor for name, tensor in negative.items()})
    return kwargs


def _complete_negatives(
    adapter: FamilyAdapter, pipe: Any, kwargs: dict[str, Any], device: Any
) -> dict[str, Any]:
    """Add the negative embeddings the pipeline would use when given none (the empty prompt,
    or zeros where an SDXL model says so), so that requests with and without a negative
    prompt can share a batch."""
    if any(name.startswith(NEGATIVE_PREFIX) for name in kwargs):
        return kwargs
    return {**kwargs, **adapter.default_negative(pipe, kwargs, device)}


def stack_prompt_embeddings(
    pipe: Any,
    requests: list[tuple[list[WeightedPrompt], int]],
    device: Any,
    control: StepControl = NO_CONTROL,
    *,
    family: Family,
) -> dict[str, Any]:
    """Keyword arguments for one call of `pipe` (a pipeline of `family`) over several
    requests: each request's (prompts, samples) gives `samples` rows, in order; call with
    num_images_per_prompt=1. `control` may stop it between two prompts."""
    import torch

    adapter = adapter_for(family)
    rows: dict[str, list[Any]] = {}
    for prompts, samples in requests:
        encoded = encode_weighted_prompts(pipe, prompts, device, control, family=family)
        kwargs = _complete_negatives(adapter, pipe, encoded, device)
        for name, tensor in kwargs.items():
            rows.setdefault(name, []).extend([tensor] * samples)
    return {name: torch.cat(tensors) for name, tensors in rows.items()}
