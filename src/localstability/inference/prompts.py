"""Weighted prompts to embeddings.

Several positive prompts blend by weight: their text embeddings (and SDXL's pooled
embeddings) are averaged with coefficients w_i / sum(w). Negative prompts (weight < 0) form
the negative prompt the same way, with |w|. A single prompt is encoded exactly as the
pipeline would encode it, so results match calling the pipeline with the text directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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


def _accumulate(total: Any, term: Any) -> Any:
    return term if total is None else total + term


def _blend(pipe: Any, prompts: list[tuple[str, float]], device: Any) -> tuple[Any, Any | None]:
    total = sum(weight for _, weight in prompts)
    embeds_sum: Any = None
    pooled_sum: Any = None
    for text, weight in prompts:
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
    pipe: Any, prompts: list[WeightedPrompt], device: Any
) -> dict[str, Any]:
    """Keyword arguments (prompt_embeds, ...) for a Stable Diffusion pipeline call."""
    positives = [(p.text, p.weight) for p in prompts if p.weight > 0]
    negatives = [(p.text, -p.weight) for p in prompts if p.weight < 0]
    embeds, pooled = _blend(pipe, positives, device)
    kwargs: dict[str, Any] = {"prompt_embeds": embeds}
    if pooled is not None:
        kwargs["pooled_prompt_embeds"] = pooled
    if negatives:
        negative_embeds, negative_pooled = _blend(pipe, negatives, device)
        kwargs["negative_prompt_embeds"] = negative_embeds
        if negative_pooled is not None:
            kwargs["negative_pooled_prompt_embeds"] = negative_pooled
    return kwargs
