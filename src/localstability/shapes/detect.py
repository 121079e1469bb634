"""Read a scene back from pixels: background, shape, colour, size, place and count.

A deliberately simple detector, used to score the shapes model: the background is the median
colour of the border, the shapes are the connected regions that differ from it, the main
shape is the largest region. Its colour is the nearest named colour to its inner pixels, its
shape the template (circle, square, triangle) that best overlaps its bounding box, its place
the third of the image its centre falls in, horizontally and vertically.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from localstability.shapes import scenes

_BORDER = 3  # px at 128, the frame the background is read from
_FOREGROUND_DISTANCE = 60.0  # RGB distance from the background that counts as a shape
_MIN_AREA = 80  # px at 128; the smallest shape drawn has about 350
_TEMPLATE = 32
_LARGE_FROM = (scenes.SIZES["small"] + scenes.SIZES["large"]) / 2


@dataclass(frozen=True)
class Detection:
    """What the pixels show; shape, colour, size and position are None when nothing stands out."""

    background: str
    count: int
    shape: str | None = None
    colour: str | None = None
    size: str | None = None
    position: str | None = None


def nearest_colour(rgb: np.ndarray, exclude: str | None = None) -> str:
    """The named colour nearest to `rgb` (Euclidean in RGB), leaving `exclude` out."""
    names = [name for name in scenes.COLOURS if name != exclude]
    palette = np.array([scenes.COLOURS[name] for name in names], dtype=np.float32)
    return names[int(np.argmin(((palette - rgb) ** 2).sum(axis=1)))]


@lru_cache(maxsize=1)
def _templates() -> dict[str, np.ndarray]:
    masks: dict[str, np.ndarray] = {}
    for shape in scenes.SHAPES:
        image = Image.new("L", (_TEMPLATE * 4, _TEMPLATE * 4), 0)
        side = _TEMPLATE * 4
        scenes.draw_shape(ImageDraw.Draw(image), shape, side / 2, side / 2, side, 255)
        small = image.resize((_TEMPLATE, _TEMPLATE), Image.Resampling.BOX)
        masks[shape] = np.asarray(small, dtype=np.float32) / 255.0 > 0.5
    return masks


def classify_shape(mask: np.ndarray) -> str:
    """The template whose overlap (intersection over union) with the region's box is best."""
    rows, cols = np.nonzero(mask)
    box = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    scaled = Image.fromarray(box.astype(np.uint8) * 255).resize(
        (_TEMPLATE, _TEMPLATE), Image.Resampling.BILINEAR
    )
    region = np.asarray(scaled, dtype=np.float32) / 255.0 > 0.5
    best, best_iou = scenes.SHAPES[0], -1.0
    for shape, template in _templates().items():
        iou = float((region & template).sum()) / max(1.0, float((region | template).sum()))
        if iou > best_iou:
            best, best_iou = shape, iou
    return best


def _third(fraction: float) -> int:
    return 0 if fraction < 0.375 else 2 if fraction > 0.625 else 1


def border_colour(pixels: np.ndarray) -> np.ndarray:
    """The median RGB of the picture's frame (float pixels, height x width x 3)."""
    border = max(1, round(_BORDER * pixels.shape[0] / scenes.IMAGE_SIZE))
    frame = np.concatenate(
        [
            pixels[:border].reshape(-1, 3),
            pixels[-border:].reshape(-1, 3),
            pixels[:, :border].reshape(-1, 3),
            pixels[:, -border:].reshape(-1, 3),
        ]
    )
    return np.median(frame, axis=0)


def detect(image: Image.Image) -> Detection:
    """Read the scene in `image` (any square size; judged as if it were 128 px)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    side = pixels.shape[0]
    scale = side / scenes.IMAGE_SIZE
    background_rgb = border_colour(pixels)
    background = nearest_colour(background_rgb)
    distance = np.sqrt(((pixels - background_rgb) ** 2).sum(axis=2))
    foreground = ndimage.binary_opening(distance > _FOREGROUND_DISTANCE, iterations=1)
    labels, found = ndimage.label(foreground)
    areas = ndimage.sum_labels(foreground, labels, index=range(1, found + 1))
    regions = [i + 1 for i, area in enumerate(areas) if area >= _MIN_AREA * scale**2]
    if not regions:
        return Detection(background=background, count=0)
    main = max(regions, key=lambda label: areas[label - 1])
    mask = labels == main
    inner = ndimage.binary_erosion(mask, iterations=max(1, round(2 * scale)))
    colour_rgb = np.median(pixels[inner if inner.any() else mask], axis=0)
    rows, cols = np.nonzero(mask)
    extent = max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) / scale
    column, row = _third(cols.mean() / side), _third(rows.mean() / side)
    position = next(name for name, place in scenes.POSITIONS.items() if place == (column, row))
    return Detection(
        background=background,
        count=len(regions),
        shape=classify_shape(mask),
        colour=nearest_colour(colour_rgb, exclude=background),
        size="large" if extent >= _LARGE_FROM else "small",
        position=position,
    )
