"""The output filter: a classifier looks at each generated image; a flagged one is blurred
past recognition and marked (finishReason CONTENT_FILTERED), keeping its seed.

What to run travels with the job as plain data (`OutputFilter`, from the deployment's
`[safety]` settings), so every worker filters alike; the classifier's model loads once per
process (`classifier`) and stays. Two classifiers:

- `nudenet`: NudeNet's ONNX detector (the `nudenet` wheel carries `320n.onnx`, so it works
  offline; it is the optional extra `safety`, its wheel ships an AGPL-3.0 licence file beside
  its MIT metadata). Labels are its classes (FEMALE_BREAST_EXPOSED, FACE_FEMALE...); an image is
  flagged when a listed class is detected with at least the threshold's score.
- `safety-checker`: the Stable Diffusion safety checker (`CompVis/stable-diffusion-safety-checker`,
  a CLIP vision model and concept embeddings) from the Hub or a local folder, through
  diffusers. Labels: `nsfw` (its concepts) and `special` (its special-care concepts).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from localstability import errors, metrics
from localstability.inference.diffusion import GeneratedImage
from localstability.safety.settings import SAFETY_CHECKER_SOURCE, OutputClassifier

log = logging.getLogger(__name__)

# The blur: the image is brought down to this many pixels on its longer side and back up,
# then smoothed, so that no shape smaller than a tenth of the image survives.
BLUR_CELLS = 8


@dataclass(frozen=True)
class OutputFilter:
    """Which classifier, which of its labels flag an image, from what score, and its model
    (None: the classifier's own default)."""

    classifier: OutputClassifier
    labels: tuple[str, ...]
    threshold: float
    model: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "classifier": self.classifier.value,
            "labels": list(self.labels),
            "threshold": self.threshold,
            "model": self.model,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OutputFilter:
        return cls(
            OutputClassifier(data["classifier"]),
            tuple(data["labels"]),
            float(data["threshold"]),
            data.get("model"),
        )


class Classifier(Protocol):
    def scores(self, images: Sequence[Any]) -> list[dict[str, float]]:
        """Each image's labels with their scores (0..1; only what was seen)."""


class NudeNet:
    """NudeNet's detector: for each image, the best score of each class it detects."""

    def __init__(self, model: str | None) -> None:
        try:
            from nudenet import NudeDetector
        except ImportError as exc:
            raise errors.EngineUnavailable(
                "the output filter nudenet needs the optional extra: pip install "
                "'localstability[safety]' (NudeNet's wheel carries an AGPL-3.0 licence file)"
            ) from exc
        self._detector = NudeDetector(model_path=model)
        self._lock = threading.Lock()

    def scores(self, images: Sequence[Any]) -> list[dict[str, float]]:
        import numpy as np

        found = []
        for image in images:
            # NudeNet reads OpenCV's BGR order.
            bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
            with self._lock:
                detections = self._detector.detect(bgr)
            best: dict[str, float] = {}
            for d in detections:
                best[d["class"]] = max(best.get(d["class"], 0.0), float(d["score"]))
            found.append(best)
        return found


class SafetyChecker:
    """The Stable Diffusion safety checker: CLIP image embeddings against its concept
    embeddings. A score above 0.5 is over the checker's own threshold for that concept;
    each 0.01 of cosine similarity moves it by 0.1."""

    def __init__(self, source: str, device: Any, offline: bool, cache_dir: Any) -> None:
        from diffusers.pipelines.stable_diffusion.safety_checker import (
            StableDiffusionSafetyChecker,
        )
        from transformers import CLIPImageProcessor

        kwargs = {"local_files_only": offline, "cache_dir": cache_dir}
        try:
            self._processor = CLIPImageProcessor.from_pretrained(source, **kwargs)
            model = StableDiffusionSafetyChecker.from_pretrained(source, **kwargs)
        except OSError as exc:
            raise errors.EngineUnavailable(
                f"the output filter's safety checker {source} could not be loaded: put it in a "
                "local folder and set safety.output_model to it"
            ) from exc
        self._model = model.to(device).eval()
        self._device = device

    def scores(self, images: Sequence[Any]) -> list[dict[str, float]]:
        import torch
        from torch.nn import functional

        model = self._model
        pixels = self._processor([i.convert("RGB") for i in images], return_tensors="pt")
        with torch.inference_mode():
            pooled = model.vision_model(pixels.pixel_values.to(self._device, model.dtype))[1]
            embeds = functional.normalize(model.visual_projection(pooled).float(), dim=-1)
            concepts = functional.normalize(model.concept_embeds.float(), dim=-1)
            special = functional.normalize(model.special_care_embeds.float(), dim=-1)
            nsfw = embeds @ concepts.T - model.concept_embeds_weights.float()
            care = embeds @ special.T - model.special_care_embeds_weights.float()
        return [
            {"nsfw": _score(float(n.max())), "special": _score(float(c.max()))}
            for n, c in zip(nsfw, care, strict=True)
        ]


def _score(margin: float) -> float:
    """A cosine margin over the checker's threshold as a 0..1 score (0 margin: 0.5)."""
    return min(1.0, max(0.0, 0.5 + margin * 10))


_loaded: dict[tuple[str, str | None], Classifier] = {}
_loading = threading.Lock()


def classifier(spec: OutputFilter, device: Any, offline: bool, cache_dir: Any) -> Classifier:
    """The classifier `spec` names, loaded once per process."""
    key = (spec.classifier.value, spec.model)
    with _loading:
        found = _loaded.get(key)
        if found is None:
            started = time.perf_counter()
            if spec.classifier == OutputClassifier.NUDENET:
                found = NudeNet(spec.model)
            elif spec.classifier == OutputClassifier.SAFETY_CHECKER:
                source = spec.model or SAFETY_CHECKER_SOURCE
                found = SafetyChecker(source, device, offline, cache_dir)
            else:
                raise ValueError(f"no output classifier {spec.classifier}")
            _loaded[key] = found
            log.info(
                "output filter loaded",
                extra={"classifier": key[0], "seconds": round(time.perf_counter() - started, 3)},
            )
        return found


def blur(image: Any) -> Any:
    """The image past recognition: a few cells of colour, smoothed; same size and mode."""
    from PIL import Image, ImageFilter

    width, height = image.size
    scale = BLUR_CELLS / max(width, height)
    small = image.resize(
        (max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BOX
    )
    big = small.resize((width, height), Image.Resampling.BILINEAR)
    return big.filter(ImageFilter.GaussianBlur(max(width, height) / (2 * BLUR_CELLS)))


def screen(
    images: list[GeneratedImage], spec: OutputFilter, found: Classifier
) -> list[GeneratedImage]:
    """The images with every flagged one blurred and marked; the others as they were."""
    if not images:
        return images
    started = time.perf_counter()
    screened = []
    for generated, scores in zip(images, found.scores([g.image for g in images]), strict=True):
        hits = {
            label: s for label, s in scores.items() if label in spec.labels and s >= spec.threshold
        }
        if not hits:
            screened.append(generated)
            continue
        why = ", ".join(f"{label} {score:.2f}" for label, score in sorted(hits.items()))
        screened.append(
            replace(
                generated,
                image=blur(generated.image),
                nsfw=True,
                filtered_by=f"{spec.classifier.value}: {why}",
            )
        )
    flagged = sum(1 for g in screened if g.filtered_by)
    metrics.output_screened(spec.classifier.value, time.perf_counter() - started, flagged)
    if flagged:
        log.info("images filtered", extra={"classifier": spec.classifier.value, "images": flagged})
    return screened
