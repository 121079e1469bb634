"""The `[safety]` table of the configuration: the prompt filter and the output filter."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, Field, model_validator


class PromptFilterMode(StrEnum):
    OFF = "off"
    WARN = "warn"  # log the match, let the request through
    BLOCK = "block"  # 400 invalid_prompts, nothing charged


class OutputClassifier(StrEnum):
    OFF = "off"
    NUDENET = "nudenet"  # NudeNet's detector (the optional extra `safety`)
    SAFETY_CHECKER = "safety-checker"  # CompVis/stable-diffusion-safety-checker


# What each classifier can say of an image (NudeNet 3.4's detector classes).
NUDENET_LABELS = (
    "FEMALE_GENITALIA_COVERED",
    "FACE_FEMALE",
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "FEET_EXPOSED",
    "BELLY_COVERED",
    "FEET_COVERED",
    "ARMPITS_COVERED",
    "ARMPITS_EXPOSED",
    "FACE_MALE",
    "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED",
    "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)
SAFETY_CHECKER_LABELS = ("nsfw", "special")
# NudeNet's labels that the output filter flags unless the operator lists others.
NUDENET_DEFAULT_LABELS = (
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "BUTTOCKS_EXPOSED",
    "ANUS_EXPOSED",
)
SAFETY_CHECKER_SOURCE = "CompVis/stable-diffusion-safety-checker"


class SafetySettings(BaseModel):
    """Content safety, both filters off unless turned on (docs/safety.md says why)."""

    prompt_filter: PromptFilterMode = Field(
        PromptFilterMode.OFF,
        description="The prompt filter for every organization without one of its own: off, "
        "warn (log only) or block (400 invalid_prompts, not charged).",
    )
    prompt_words: list[str] = Field(
        default_factory=list, description="Words and phrases added to the list."
    )
    prompt_words_file: Path | None = Field(
        None, description="A file of more words and phrases, one a line ('#' comments)."
    )
    prompt_words_builtin: bool = Field(
        True, description="False: only the operator's words, not the shipped list."
    )
    prompt_classifier: str | None = Field(
        None,
        description="'package.module:function', called with each prompt's text: True (or a "
        "number >= prompt_classifier_threshold) filters it, as a listed word would.",
    )
    prompt_classifier_threshold: float = Field(0.5, ge=0.0, le=1.0)
    output_filter: OutputClassifier = Field(
        OutputClassifier.OFF,
        description="The classifier every generated image passes: off, nudenet or "
        "safety-checker. A flagged image is blurred, finishReason CONTENT_FILTERED.",
    )
    output_labels: list[str] | None = Field(
        None,
        description="The classifier's labels that flag an image (NudeNet: e.g. "
        "FEMALE_BREAST_EXPOSED, FACE_FEMALE; the safety checker: nsfw). Unset: NudeNet's "
        "exposed-body labels; the safety checker's nsfw concepts.",
    )
    output_threshold: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="NudeNet: the least detection score that flags. The safety checker: "
        "0.5 is its own thresholds, lower flags more (each 0.1 moves them by 0.01).",
    )
    output_model: str | None = Field(
        None,
        description="NudeNet: an .onnx detector (unset: the one in the nudenet wheel). The "
        "safety checker: a Hub repo id or a local folder (unset: " + SAFETY_CHECKER_SOURCE + ").",
    )

    @model_validator(mode="after")
    def _known_labels(self) -> SafetySettings:
        known = {
            OutputClassifier.NUDENET: NUDENET_LABELS,
            OutputClassifier.SAFETY_CHECKER: SAFETY_CHECKER_LABELS,
        }.get(self.output_filter)
        unknown = [label for label in self.output_labels or () if known and label not in known]
        if known and unknown:
            raise ValueError(
                f"safety.output_labels: {', '.join(unknown)} is not a label of "
                f"{self.output_filter.value} (it has: {', '.join(known)})"
            )
        return self

    def labels(self) -> tuple[str, ...]:
        if self.output_labels is not None:
            return tuple(self.output_labels)
        if self.output_filter == OutputClassifier.NUDENET:
            return NUDENET_DEFAULT_LABELS
        return ("nsfw",)
