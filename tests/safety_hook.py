"""An operator's prompt classifier, as `safety.prompt_classifier` names one
("tests.safety_hook:shouting"): the share of a prompt's letters that are capitals."""

from __future__ import annotations


def shouting(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    return sum(c.isupper() for c in letters) / len(letters) if letters else 0.0
