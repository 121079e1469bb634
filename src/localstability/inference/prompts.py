"""Weighted prompts to embeddings.

Several positive prompts blend by weight: their text embeddings (and SDXL's pooled
embeddings) are averaged with coefficients w_i / sum(w). Negative prompts (weight < 0) form
the negative prompt the same way, with |w|. A single prompt is encoded exactly as the
pipeline would encode it, and a missing negative prompt becomes what the pipeline itself
would use, so results match calling the pipeline with the text directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from localstability.inference.control import NO_CONTROL, StepControl


@dataclass(frozen=True)
class WeightedPrompt:
    text: str
    weight: float


def _encode(pipe: Any, text: str, device: Any) -> tuple[Any, Any | None]:
    if hasattr(pipe, "text_encoder_2"):  # SDXL: two encoders and a pooled embedding
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompt=text, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return embeds, pooled
    embeds, _ = pipe.encode_prompt(
        prompt=text, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    return embeds, None


def _blend(
    pipe: Any, prompts: list[tuple[str, float]], device: Any, control: StepControl
) -> tuple[Any, Any | None]:
    total = sum(weight for _, weight in prompts)
    embeds_sum: Any = None
    pooled_sum: Any = None
    for text, weight in prompts:
        control.check()  # each encoding takes a while: a cancelled job stops between them
        embeds, pooled = _encode(pipe, text, device)
        coefficient = weight / total
        embeds_sum = (
            embeds * coefficient if embeds_sum is None else embeds_sum + embeds * coefficient
        )
        if pooled is not None:
            pooled_sum = (
                pooled * coefficient if pooled_sum is None else pooled_sum + pooled * coefficient
            )
    return embeds_sum, pooled_sum


def encode_weighted_prompts(
    pipe: Any, prompts: list[WeightedPrompt], device: Any, control: StepControl = NO_CONTROL
) -> dict[str, Any]:
    """Keyword arguments (prompt_embeds, ...) for a Stable Diffusion pipeline call;
    `control` may stop it between two prompts."""
    positives = [(p.text, p.weight) for p in prompts if p.weight > 0]
    negatives = [(p.text, -p.weight) for p in prompts if p.weight < 0]
    embeds, pooled = _blend(pipe, positives, device, control)
    kwargs: dict[str, Any] = {"prompt_embeds": embeds}
    if pooled is not None:
        kwargs["pooled_prompt_embeds"] = pooled
    if negatives:
        negative_embeds, negative_pooled = _blend(pipe, negatives, device, control)
        kwargs["negative_prompt_embeds"] = negative_embeds
        if negative_pooled is not None:
            kwargs["negative_pooled_prompt_embeds"] = negative_pooled
    return kwargs


def _complete_negatives(pipe: Any, kwargs: dict[str, Any], device: Any) -> dict[str, Any]:
    """Add the negative embeddings the pipeline would use when given none (the empty prompt,
    or zeros where an SDXL model says so), so that requests with and without a negative
    prompt can share a batch."""
    if "negative_prompt_embeds" in kwargs:
        return kwargs
    common = {"device": device, "num_images_per_prompt": 1, "do_classifier_free_guidance": True}
    if "pooled_prompt_embeds" in kwargs:
        _, negative, _, negative_pooled = pipe.encode_prompt(prompt=None, **common, **kwargs)
        return {
            **kwargs,
            "negative_prompt_embeds": negative,
            "negative_pooled_prompt_embeds": negative_pooled,
        }
    _, negative = pipe.encode_prompt(prompt=None, **common, **kwargs)
    return {**kwargs, "negative_prompt_embeds": negative}


def stack_prompt_embeddings(
    pipe: Any,
    requests: list[tuple[list[WeightedPrompt], int]],
    device: Any,
    control: StepControl = NO_CONTROL,
) -> dict[str, Any]:
    """Keyword arguments for one pipeline call over several requests: each request's
    (prompts, samples) gives `samples` rows, in order; call with num_images_per_prompt=1.
    `control` may stop it between two prompts."""
    import torch

    rows: dict[str, list[Any]] = {}
    for prompts, samples in requests:
        encoded = encode_weighted_prompts(pipe, prompts, device, control)
        kwargs = _complete_negatives(pipe, encoded, device)
        for name, tensor in kwargs.items():
            rows.setdefault(name, []).extend([tensor] * samples)
    return {name: torch.cat(tensors) for name, tensors in rows.items()}
