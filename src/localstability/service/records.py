"""What a generation record keeps of its request: a bounded summary, never the raw body.

Every scalar parameter is kept; each prompt's text is cut to PROMPT_CHARS characters (its
weight kept), and of `extras` only the names of at most EXTRAS_KEYS keys, so a record stays
a few kilobytes whatever the client sent.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from localstability.inference.prompts import WeightedPrompt

PROMPT_CHARS = 200
EXTRAS_KEYS = 16
KEY_CHARS = 64


def request_summary(body: BaseModel) -> dict[str, Any]:
    """The record's `parameters` for the wire body `body`."""
    summary: dict[str, Any] = body.model_dump(mode="json", exclude={"text_prompts", "extras"})
    prompts = getattr(body, "text_prompts", None)
    if prompts:
        summary["text_prompts"] = [
            {"text": prompt.text[:PROMPT_CHARS], "weight": prompt.weight} for prompt in prompts
        ]
        if any(len(prompt.text) > PROMPT_CHARS for prompt in prompts):
            summary["prompts_cut_at"] = PROMPT_CHARS
    extras = getattr(body, "extras", None)
    if extras:
        summary["extras"] = sorted(str(key)[:KEY_CHARS] for key in extras)[:EXTRAS_KEYS]
    return summary


def extra_prompts(prompts: list[WeightedPrompt]) -> int:
    """Prompts beyond the first positive and the first negative one: each costs a text
    encoding of its own (see service.pricing)."""
    positives = sum(prompt.weight > 0 for prompt in prompts)
    negatives = sum(prompt.weight < 0 for prompt in prompts)
    return max(positives - 1, 0) + max(negatives - 1, 0)
