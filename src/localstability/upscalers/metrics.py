"""Image-quality figures for upscalers, shared by the tests and bench/upscale_quality.py.

`ssim` needs scikit-image, a development dependency (it is imported only when called).
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def psnr(reference: Image.Image, image: Image.Image) -> float:
    """Peak signal-to-noise ratio in dB of `image` against `reference` (8-bit)."""
    diff = np.asarray(reference, dtype=np.float64) - np.asarray(image, dtype=np.float64)
    return float(10.0 * np.log10(255.0**2 / np.mean(diff**2)))


def ssim(reference: Image.Image, image: Image.Image) -> float:
    """Structural similarity of two RGB images."""
    from skimage.metrics import structural_similarity

    return float(
        structural_similarity(
            np.asarray(reference), np.asarray(image), channel_axis=2, data_range=255
        )
    )


def edge_energy(image: Image.Image) -> float:
    """Mean Sobel gradient magnitude of the luminance."""
    from scipy import ndimage

    luma = np.asarray(image.convert("L"), dtype=np.float64)
    return float(np.hypot(ndimage.sobel(luma, 0), ndimage.sobel(luma, 1)).mean())


def max_diff(first: Image.Image, second: Image.Image) -> int:
    """The largest per-channel difference of two images of one size and mode."""
    if first.size != second.size or first.mode != second.mode:
        raise ValueError(f"{first.size} {first.mode} vs {second.size} {second.mode}")
    a, b = np.asarray(first, dtype=np.int16), np.asarray(second, dtype=np.int16)
    return int(np.abs(a - b).max())
