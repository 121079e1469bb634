"""Procedural scenes for the shapes model: what a scene holds, its caption, its pixels.

A scene is one to three flat-coloured shapes (circle, square or triangle) of one colour and
size on a plain background. A single shape sits at one of nine named places on a 3x3 grid;
several shapes are scattered without a place in the caption. Captions are English sentences
("a small red circle at the top left on a blue background"); training captions leave some
attributes out at random so that short prompts ("a red circle") work too.

Everything is drawn with Pillow at twice the size and downsampled, so edges are antialiased.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 128

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "orange": (245, 140, 20),
    "yellow": (245, 222, 40),
    "green": (34, 160, 60),
    "blue": (37, 80, 220),
    "purple": (140, 55, 190),
    "pink": (250, 135, 195),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "black": (22, 22, 22),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: dict[str, int] = {"small": 30, "large": 56}  # side of the bounding box at 128 px
# Grid positions: name -> (column, row), column/row 0..2.
POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (0, 0),
    "top": (1, 0),
    "top right": (2, 0),
    "left": (0, 1),
    "center": (1, 1),
    "right": (2, 1),
    "bottom left": (0, 2),
    "bottom": (1, 2),
    "bottom right": (2, 2),
}
COUNT_WORDS: dict[int, str] = {1: "a", 2: "two", 3: "three"}
GRID_CENTRES = (0.25, 0.5, 0.75)  # of the image side
_JITTER = 0.04  # of the image side, either way
_POSITION_PHRASES: dict[str, str] = {
    "center": "in the center",
    "left": "on the left",
    "right": "on the right",
}


@dataclass(frozen=True)
class Scene:
    """One scene: `count` shapes alike, at `position` when count is 1."""

    shape: str
    colour: str
    size: str
    background: str
    count: int = 1
    position: str | None = None

    def caption(
        self,
        *,
        with_size: bool = True,
        with_colour: bool = True,
        with_position: bool = True,
        with_background: bool = True,
    ) -> str:
        """The scene in words, leaving out the attributes asked to."""
        words = [COUNT_WORDS[self.count]]
        if with_size:
            words.append(self.size)
        if with_colour:
            words.append(self.colour)
        words.append(self.shape if self.count == 1 else self.shape + "s")
        if with_position and self.position is not None:
            words.append(_POSITION_PHRASES.get(self.position, f"at the {self.position}"))
        if with_background:
            words.append(f"on a {self.background} background")
        if words[0] == "a" and words[1][0] in "aeiou":
            words[0] = "an"
        return " ".join(words)


def held_out(scene: Scene) -> bool:
    """Whether the scene's (colour, shape, position, background) is kept out of training.

    About one combination in eight, chosen by a fixed rule, so the evaluation's captions
    were never seen whole in training (each word was, in other combinations).
    """
    if scene.count != 1 or scene.position is None:
        return False
    key = (
        list(COLOURS).index(scene.colour) * 7
        + SHAPES.index(scene.shape) * 5
        + list(POSITIONS).index(scene.position) * 3
        + list(COLOURS).index(scene.background)
    )
    return key % 8 == 0


def random_scene(rng: random.Random, *, single: bool = False) -> Scene:
    """A random scene: one shape at a named place (3 in 4), else two or three shapes."""
    background = rng.choice(list(COLOURS))
    colour = rng.choice([c for c in COLOURS if c != background])
    shape = rng.choice(SHAPES)
    count = 1 if single or rng.random() < 0.75 else rng.choice((2, 3))
    if count == 1:
        return Scene(
            shape, colour, rng.choice(list(SIZES)), background, 1, rng.choice(list(POSITIONS))
        )
    return Scene(shape, colour, "small", background, count)


def training_scene(rng: random.Random) -> Scene:
    """A random scene whose combination is not held out for evaluation."""
    while True:
        scene = random_scene(rng)
        if not held_out(scene):
            return scene


def evaluation_scenes(n: int, seed: int = 1) -> list[Scene]:
    """`n` single-shape scenes whose combinations training never saw."""
    rng = random.Random(seed)
    scenes: list[Scene] = []
    while len(scenes) < n:
        scene = random_scene(rng, single=True)
        if held_out(scene):
            scenes.append(scene)
    return scenes


def training_flags(rng: random.Random) -> dict[str, bool]:
    """Which attributes a training caption says: each but the shape most of the time."""
    return {
        "with_size": rng.random() < 0.7,
        "with_colour": rng.random() < 0.9,
        "with_position": rng.random() < 0.85,
        "with_background": rng.random() < 0.7,
    }


def training_caption(scene: Scene, rng: random.Random) -> str:
    """The caption training uses (`training_flags` decide what it leaves out)."""
    return scene.caption(**training_flags(rng))


def _centres(scene: Scene, rng: random.Random, side: float) -> list[tuple[float, float]]:
    if scene.count == 1:
        assert scene.position is not None
        column, row = POSITIONS[scene.position]
        return [
            (
                (GRID_CENTRES[column] + rng.uniform(-_JITTER, _JITTER)) * side,
                (GRID_CENTRES[row] + rng.uniform(-_JITTER, _JITTER)) * side,
            )
        ]
    extent = SIZES[scene.size] / IMAGE_SIZE * side
    centres: list[tuple[float, float]] = []
    while len(centres) < scene.count:
        x, y = (rng.uniform(extent * 0.6, side - extent * 0.6) for _ in range(2))
        if all((x - a) ** 2 + (y - b) ** 2 > (extent * 1.3) ** 2 for a, b in centres):
            centres.append((x, y))
    return centres


def shape_outline(shape: str, cx: float, cy: float, extent: float) -> list[tuple[float, float]]:
    """The polygon of a square or an upward triangle, or the bounding box of a circle."""
    h = extent / 2
    if shape == "triangle":
        return [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]


def draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, extent: float, fill: object
) -> None:
    points = shape_outline(shape, cx, cy, extent)
    if shape == "circle":
        draw.ellipse([points[0], points[2]], fill=fill)  # type: ignore[arg-type]
    else:
        draw.polygon(points, fill=fill)  # type: ignore[arg-type]


def render(scene: Scene, rng: random.Random, size: int = IMAGE_SIZE) -> Image.Image:
    """Draw the scene (shape sizes vary by about 10 %, places by a few pixels)."""
    scale = 2
    side = size * scale
    image = Image.new("RGB", (side, side), COLOURS[scene.background])
    draw = ImageDraw.Draw(image)
    for cx, cy in _centres(scene, rng, side):
        extent = SIZES[scene.size] / IMAGE_SIZE * side * rng.uniform(0.9, 1.1)
        draw_shape(draw, scene.shape, cx, cy, extent, COLOURS[scene.colour])
    return image.resize((size, size), Image.Resampling.BOX)


def to_array(image: Image.Image) -> np.ndarray:
    """RGB pixels as float32 in [-1, 1], channels first (what the VAE reads)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return pixels.transpose(2, 0, 1)
