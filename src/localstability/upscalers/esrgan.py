"""Single-image super-resolution through spandrel (ESRGAN / Real-ESRGAN / Compact and others).

:func:`load_upscaler` loads any single-image super-resolution model that spandrel recognises
(for example the Real-ESRGAN files written by
:func:`localstability.upscalers.ncnn.convert_packaged_model`), :func:`upscale` runs it at its
native scale in overlapping tiles so that memory stays bounded for large inputs, and
:func:`upscale_to` adds a Lanczos resize to an exact size.  :func:`write_tiny_esrgan` writes a
tiny random-weight RRDBNet for fast tests.

Tiling: every tile is processed with at least ``overlap`` extra input pixels of context on each
side (where the image has them) and only the tile's centre is written to the output.  A
convolutional network's output near a tile edge depends on pixels beyond it, so the tiled result
equals the untiled one only up to the influence of pixels farther than ``overlap`` away.  That
influence is real, not rounding noise (float64 gives the same differences as float32), and for
RRDBNet it reaches far.  Real-ESRGAN x4plus (23 blocks, 351 convolutions) against untiled
inference on crops of scikit-image's astronaut and coffee photos, with the context cut that
many input pixels away from the written region: the largest difference of the float output (in
units of 1/255) with one side cut (a 128x32 strip) and with two (the corner of a 112x112 crop),
and the largest uint8 difference of :func:`upscale` on a 192x32 strip in 32 px tiles
(``bench.upscale_quality``):

=======  ==========  ===========  ===================
overlap  float, one  float, two   uint8, tiled strip
=======  ==========  ===========  ===================
8        13.4        --           --
16       8.7         --           20
32       3.7         --           9
40       --          1.7 - 2.2    --
48       1.02        0.67 - 0.77  2
56       --          0.45 - 0.50  --
64       0.06        0.18 - 0.19  1
=======  ==========  ===========  ===================

So RRDBNet needs about 56 pixels of context for a difference of at most 1/255 on uint8 output;
:data:`RRDB_OVERLAP` is 64 for margin, and :func:`default_overlap` uses it for every
architecture except SRVGGNetCompact.  Compact (animevideov3) is a plain chain of 3x3
convolutions at the input resolution, so its receptive field is exactly its number of
convolutions (18 for animevideov3); with that overlap the tiled output equals the untiled one up
to float rounding.  Context costs compute: with ``tile`` 192 and overlap 64 an inner tile runs
on 320x320 input pixels, 2.8 times its own area.

torch and spandrel are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import itertools
import math
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_TILE",
    "RRDB_OVERLAP",
    "default_overlap",
    "load_upscaler",
    "upscale",
    "upscale_to",
    "write_tiny_esrgan",
]

DEFAULT_TILE = 192
"""Default tile size in input pixels (each side); ``tile <= 0`` disables tiling."""

RRDB_OVERLAP = 64
"""Tile context (input pixels per side) that keeps RRDBNet's tiled output within 1/255."""

_TINY_FEATURES = 16
_TINY_BLOCKS = 1
_TINY_GROWTH = 32  # spandrel's ESRGAN loader hard-codes the growth channels to 32
_TINY_SEED = 20241125
_TINY_SCALES = (2, 4, 8)


def load_upscaler(path: Path, device: str = "cpu") -> Any:
    """Load a single-image super-resolution model with spandrel and move it to ``device``.

    Any format spandrel reads works (``.safetensors``, ``.pth``, ``.ckpt``, ``.pt``), for any
    architecture spandrel detects, as long as the model upscales RGB images (purpose ``"SR"``,
    three input and output channels).

    Args:
        path: the model file.
        device: a torch device string such as ``"cpu"`` or ``"cuda"``.

    Returns:
        A ``spandrel.ImageModelDescriptor`` in eval mode; :func:`upscale` takes it.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not a model spandrel recognises, or not a single-image RGB
            super-resolution model.
    """
    import spandrel

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"upscaler model file not found: {path}")
    try:
        descriptor = spandrel.ModelLoader(device="cpu").load_from_file(path)
    except spandrel.UnsupportedModelError as exc:
        raise ValueError(f"{path}: not a model architecture spandrel recognises") from exc
    except Exception as exc:  # unreadable or corrupt files surface as many exception types
        raise ValueError(f"{path}: cannot be loaded as a spandrel model ({exc})") from exc
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise ValueError(
            f"{path}: a {descriptor.architecture.name} model, which is not a single-image model "
            "(for example an inpainting model)"
        )
    if descriptor.purpose != "SR" or descriptor.scale < 2:
        raise ValueError(
            f"{path}: a {descriptor.architecture.name} {descriptor.purpose} model with scale "
            f"{descriptor.scale}, not a super-resolution (upscaling) model"
        )
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise ValueError(
            f"{path}: the model maps {descriptor.input_channels} to "
            f"{descriptor.output_channels} channels; only RGB (3 -> 3) upscalers are supported"
        )
    descriptor.eval()
    descriptor.to(device)
    return descriptor


def default_overlap(model: Any) -> int:
    """The tile context :func:`upscale` uses for ``model`` when none is given.

    For SRVGGNetCompact (spandrel architecture ``Compact``) this is its number of convolutions,
    which is its exact receptive radius in input pixels; for everything else it is
    :data:`RRDB_OVERLAP` (64), measured for Real-ESRGAN x4plus (see the module docstring),
    times the pixel-unshuffle factor of models that run at a reduced resolution inside (such
    as RealESRGAN_x2plus, which unshuffles by 2).
    """
    if model.architecture.id == "Compact":
        import torch

        return sum(
            (module.kernel_size[0] // 2) * module.dilation[0]
            for module in model.model.modules()
            if isinstance(module, torch.nn.Conv2d)
        )
    shuffle = getattr(model.model, "shuffle_factor", None)
    return RRDB_OVERLAP * (shuffle if isinstance(shuffle, int) and shuffle > 1 else 1)


def _split_alpha(image: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """The RGB image to upscale and, if the image has transparency, its alpha channel."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or image.has_transparency_data:
        rgba = image.convert("RGBA")
        return rgba.convert("RGB"), rgba.getchannel("A")
    return (image if image.mode == "RGB" else image.convert("RGB")), None


def _spans(length: int, tile: int, multiple: int) -> list[tuple[int, int]]:
    """Split ``range(length)`` into near-equal spans of at most about ``tile`` pixels.

    Inner edges fall on multiples of ``multiple``; ``tile <= 0`` gives one span.
    """
    if tile <= 0 or length <= tile:
        return [(0, length)]
    count = math.ceil(length / tile)
    edges = [round(index * length / count / multiple) * multiple for index in range(count)]
    edges = [*sorted({edge for edge in edges if edge < length}), length]
    return list(itertools.pairwise(edges))


def _tiling(
    length: int, tile: int, overlap: int, multiple: int
) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Split one axis into ``(span, context)`` pairs: write ``span``, run on ``context``.

    Spans are near-equal, at most about ``tile`` long (see :func:`_spans`).  Each context adds at
    least ``overlap`` on each side where the image has pixels; all contexts have the same length
    (a window slid inward at the image borders rather than clipped), so the model sees few
    distinct input shapes: CPU backends prepare kernels per shape, which costs more than the
    extra context.  When that window covers the whole axis, the axis is not split at all, and
    neighbouring spans that end up with the same context are merged (one model call).
    Context starts are aligned down to ``multiple`` so that models that work on pixel blocks
    (pixel unshuffle) group the pixels as they do on the whole image.
    """
    spans = _spans(length, tile, multiple)
    widest = max(end - start for start, end in spans)
    window = math.ceil((widest + 2 * overlap) / multiple) * multiple
    if window >= length:
        return [((0, length), (0, length))]
    pairs: list[tuple[tuple[int, int], tuple[int, int]]] = []
    for start, end in spans:
        ctx_start = max(min(start - overlap, length - window), 0) // multiple * multiple
        context = (ctx_start, min(max(ctx_start + window, end), length))
        if pairs and pairs[-1][1] == context:  # same input: run it once for both spans
            pairs[-1] = ((pairs[-1][0][0], end), context)
        else:
            pairs.append(((start, end), context))
    return pairs


def _to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) in [0, 1] -> (H, W, 3) uint8, rounded."""
    array = tensor[0].permute(1, 2, 0).float().clamp(0, 1).mul(255).round()
    return array.to("cpu").numpy().astype(np.uint8)


def upscale(
    model: Any,
    image: Image.Image,
    *,
    tile: int = DEFAULT_TILE,
    overlap: int | None = None,
    on_tile: Callable[[int, int], None] | None = None,
) -> Image.Image:
    """Upscale ``image`` by the model's native scale, in overlapping tiles.

    The image is split into near-equal tiles of at most ``tile`` x ``tile`` input pixels; each is
    run with at least ``overlap`` extra pixels of context on every side (where the image has
    them; at the border the window slides inward, so all tiles run at one input size; an axis
    whose window would cover the whole image is not split) and only its centre is written into
    the output.  The model never sees more than about ``tile + 2 * overlap`` pixels a side, so
    its peak memory does not grow with the image.  With the default overlap
    (:func:`default_overlap`) the result matches untiled inference within 1/255 for Real-ESRGAN
    x4plus and animevideov3 (see the module docstring).

    Colour modes: RGB is upscaled as is; L, P, CMYK and other modes are converted to RGB first;
    images with transparency (RGBA, LA, PA, P with a transparent index) have their RGB channels
    upscaled by the model and their alpha channel resized with bicubic filtering, and come back
    as RGBA.

    Args:
        model: a descriptor from :func:`load_upscaler`.
        image: the input image.
        tile: the tile size in input pixels; ``tile <= 0`` runs the whole image at once.
        overlap: context pixels on each side of a tile (``>= 0``); ``None`` means
            :func:`default_overlap` of the model.
        on_tile: called with (tiles done, tiles in all) after each tile; it may raise to
            stop the upscale (cancellation).

    Returns:
        An RGB (or RGBA) image ``scale`` times as large in both dimensions.

    Raises:
        ValueError: if ``overlap`` is negative or the image is empty.
    """
    import torch

    if overlap is None:
        overlap = default_overlap(model)
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ValueError(f"cannot upscale an empty image ({width}x{height})")
    rgb, alpha = _split_alpha(image)
    scale = int(model.scale)
    multiple = max(1, int(model.size_requirements.multiple_of))
    pixels = np.array(rgb, dtype=np.uint8)  # a writable copy, as torch.from_numpy expects
    source = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)
    output = np.empty((height * scale, width * scale, 3), dtype=np.uint8)
    with torch.inference_mode():
        columns = _tiling(width, tile, overlap, multiple)
        rows = _tiling(height, tile, overlap, multiple)
        done, total = 0, len(rows) * len(columns)
        for (top, bottom), (ctx_top, ctx_bottom) in rows:
            for (left, right), (ctx_left, ctx_right) in columns:
                piece = source[:, :, ctx_top:ctx_bottom, ctx_left:ctx_right]
                result = model(piece.to(device=model.device, dtype=model.dtype).div(255.0))
                y0, x0 = (top - ctx_top) * scale, (left - ctx_left) * scale
                y1, x1 = y0 + (bottom - top) * scale, x0 + (right - left) * scale
                centre = _to_uint8(result[:, :, y0:y1, x0:x1])
                output[top * scale : bottom * scale, left * scale : right * scale] = centre
                done += 1
                if on_tile is not None:
                    on_tile(done, total)
    upscaled = Image.fromarray(output, "RGB")
    if alpha is not None:
        upscaled.putalpha(alpha.resize(upscaled.size, Image.Resampling.BICUBIC))
    return upscaled


def upscale_to(
    model: Any,
    image: Image.Image,
    width: int,
    height: int,
    *,
    tile: int = DEFAULT_TILE,
    overlap: int | None = None,
    on_tile: Callable[[int, int], None] | None = None,
) -> Image.Image:
    """Upscale ``image`` with the model at its native scale, then resize to ``width x height``.

    The resize uses Lanczos filtering (skipped when the native result already has that size).
    ``tile``, ``overlap`` and ``on_tile`` are passed to :func:`upscale`.

    Raises:
        ValueError: if ``width`` or ``height`` is not positive, or as :func:`upscale`.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    upscaled = upscale(model, image, tile=tile, overlap=overlap, on_tile=on_tile)
    if upscaled.size == (width, height):
        return upscaled
    return upscaled.resize((width, height), Image.Resampling.LANCZOS)


def _tiny_rrdb_state(scale: int) -> dict[str, torch.Tensor]:
    import torch

    generator = torch.Generator().manual_seed(_TINY_SEED + scale)
    feat, growth = _TINY_FEATURES, _TINY_GROWTH
    # Pixel-unshuffle before conv_first stands for scales below 4 (as RealESRGAN_x2plus does).
    in_ch = 3 * (4 // scale) ** 2 if scale < 4 else 3
    shapes: list[tuple[str, int, int, float]] = [("conv_first", in_ch, feat, 1.0)]
    for block in range(_TINY_BLOCKS):
        for rdb in range(1, 4):
            for conv in range(1, 6):
                conv_in = feat + (conv - 1) * growth
                conv_out = feat if conv == 5 else growth
                shapes.append((f"body.{block}.rdb{rdb}.conv{conv}", conv_in, conv_out, 0.1))
    shapes.append(("conv_body", feat, feat, 1.0))
    num_up = 3 if scale == 8 else 2
    shapes += [(f"conv_up{index}", feat, feat, 1.0) for index in range(1, num_up + 1)]
    # A small last layer with bias 0.5: grey textured output that rarely clips.
    shapes += [("conv_hr", feat, feat, 1.0), ("conv_last", feat, 3, 0.1)]
    state: dict[str, torch.Tensor] = {}
    for key, conv_in, conv_out, gain in shapes:
        std = gain * math.sqrt(2.0 / (conv_in * 9))  # Kaiming normal, scaled like BasicSR
        weight = torch.randn((conv_out, conv_in, 3, 3), generator=generator) * std
        state[f"{key}.weight"] = weight.contiguous()
        state[f"{key}.bias"] = (torch.randn((conv_out,), generator=generator) * 0.01).contiguous()
    state["conv_last.bias"] = torch.full((3,), 0.5)
    return state


def write_tiny_esrgan(dest: Path, scale: int = 4) -> Path:
    """Write a tiny random-weight RRDBNet as ``.safetensors``: a TEST FIXTURE, not a real model.

    The network has the Real-ESRGAN (BasicSR) key layout with 16 features, one RRDB block and
    32 growth channels (spandrel's ESRGAN loader hard-codes 32), so spandrel loads it as
    ``ESRGAN`` with the requested scale; scale 2 uses a pixel-unshuffled input as
    RealESRGAN_x2plus does.  The weights are seeded, so the file is byte-identical on every run.
    Its output is a meaningless grey texture; it exists to make HTTP tests fast.

    Args:
        dest: the file to write (should end in ``.safetensors``; parent folders are created).
        scale: 2, 4 or 8.

    Returns:
        ``dest``.

    Raises:
        ValueError: if ``scale`` is not supported.
    """
    from safetensors.torch import save_file

    if scale not in _TINY_SCALES:
        raise ValueError(f"tiny ESRGAN scale must be one of {_TINY_SCALES}, got {scale}")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # One metadata entry only: safetensors writes metadata in hash-map order, so several
    # entries would make the bytes differ from run to run.
    metadata = {
        "localstability.fixture": (
            f"tiny random-weight RRDBNet x{scale} test fixture (seed {_TINY_SEED + scale}), "
            "not a real model"
        )
    }
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        save_file(_tiny_rrdb_state(scale), str(tmp), metadata=metadata)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest
