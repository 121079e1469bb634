"""The prompt filter: every prompt of every generation request, negative ones included, is
looked at before anything is queued or charged.

Its mode is the organization's own (`Organization.prompt_filter`, set through the admin API)
or else the deployment's (`safety.prompt_filter`): off, warn (the match is logged and counted,
the request goes on) or block (`400 invalid_prompts` with the hosted API's message). What it
looks for: the deny list (`safety/words.py`: the shipped list and the operator's words) and,
when configured, the operator's classifier (`safety.prompt_classifier`, "module:function").
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence

from localstability import errors, metrics
from localstability.inference import safety
from localstability.inference.cache import PipelineCache
from localstability.inference.safety import OutputFilter
from localstability.protocol import TextPrompt
from localstability.safety.settings import OutputClassifier, PromptFilterMode, SafetySettings
from localstability.safety.words import Match, deny_list
from localstability.store.accounts import Principal

log = logging.getLogger(__name__)

PromptClassifier = Callable[[str], "bool | float"]


def load_classifier(target: str) -> PromptClassifier:
    """The function named "package.module:function" (a ValueError says what is wrong)."""
    module_name, _, name = target.partition(":")
    if not module_name or not name:
        raise ValueError(f"safety.prompt_classifier {target!r}: write it 'package.module:function'")
    try:
        found = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"safety.prompt_classifier {target!r}: {exc}") from exc
    if not callable(found):
        raise ValueError(f"safety.prompt_classifier {target!r} is not a function")
    return found


class PromptScreen:
    """The deployment's prompt filter, built once at start."""

    def __init__(self, settings: SafetySettings) -> None:
        self.default = settings.prompt_filter
        files = [settings.prompt_words_file] if settings.prompt_words_file else []
        self.words = deny_list(settings.prompt_words_builtin, settings.prompt_words, files)
        self.classify = (
            load_classifier(settings.prompt_classifier) if settings.prompt_classifier else None
        )
        self.threshold = settings.prompt_classifier_threshold

    def mode(self, principal: Principal) -> PromptFilterMode:
        return PromptFilterMode(principal.prompt_filter or self.default)

    def find(self, texts: Sequence[str]) -> Match | None:
        """What the filter finds in `texts`: a listed word, else the classifier's verdict."""
        match = self.words.first_match(texts)
        if match is not None or self.classify is None:
            return match
        for index, text in enumerate(texts):
            verdict = self.classify(text)
            if verdict is True or (
                not isinstance(verdict, bool) and float(verdict) >= self.threshold
            ):
                return Match("(prompt_classifier)", index)
        return None

    def check(self, principal: Principal, prompts: Sequence[TextPrompt] | None) -> None:
        """Raise InvalidPrompts if the caller's filter blocks one of `prompts`; log a match
        in warn mode."""
        mode = self.mode(principal)
        if mode == PromptFilterMode.OFF or not prompts:
            return
        match = self.find([p.text for p in prompts])
        if match is None:
            return
        metrics.prompt_filtered(mode.value)
        log.warning(
            "prompt filtered",
            extra={
                "organization": principal.organization_id,
                "mode": mode.value,
                "match": match.entry,
                "prompt_index": match.prompt,
                "negative": prompts[match.prompt].weight < 0,
            },
        )
        if mode == PromptFilterMode.BLOCK:
            raise errors.InvalidPrompts()


def output_filter(settings: SafetySettings) -> OutputFilter | None:
    """The output filter every job of the deployment carries (None: off)."""
    if settings.output_filter == OutputClassifier.OFF:
        return None
    return OutputFilter(
        settings.output_filter,
        settings.labels(),
        settings.output_threshold,
        settings.output_model,
    )


def load_output_filter(settings: SafetySettings, pipelines: PipelineCache) -> None:
    """Load the output filter's classifier now, in a process that runs jobs: a deployment
    that asks for a classifier it can't load (the extra not installed, no weights) does not
    start; loaded, it stays for every job."""
    spec = output_filter(settings)
    if spec is not None:
        safety.classifier(spec, pipelines.device, pipelines.offline, pipelines.models_dir)
