"""The upscaler families: Real-ESRGAN (any single-image super-resolution model spandrel knows)
and diffusers' Stable Diffusion x4 latent upscaler."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

from localstability import errors
from localstability.engines import Family
from localstability.inference.families import FamilyAdapter, Role
from localstability.inference.families.sd import StableDiffusion
from localstability.inference.schedulers import SchedulerChoice
from localstability.protocol import Sampler


class RealEsrgan(FamilyAdapter):
    """No diffusers pipeline, no prompt and no sampler: a spandrel model, run in tiles
    (localstability.upscalers.esrgan)."""

    families: ClassVar[frozenset[Family]] = frozenset({Family.ESRGAN})
    default_sampler: ClassVar[Sampler | None] = None

    def load_model(self, path: Path, device: str) -> Any:
        """The spandrel model in the file at `path`, on `device`; ValueError when it is not a
        super-resolution model that spandrel knows."""
        from localstability.upscalers.esrgan import load_upscaler

        return load_upscaler(path, device)

    def upscale(
        self,
        model: Any,
        image: Any,
        width: int,
        height: int,
        on_tile: Callable[[int, int], None] | None = None,
    ) -> Any:
        """The model at its native scale in overlapping tiles (`on_tile(done, total)` after
        each), then a Lanczos resize to width x height."""
        from localstability.upscalers.esrgan import upscale_to

        return upscale_to(model, image, width, height, on_tile=on_tile)


class LatentUpscaler(StableDiffusion):
    """diffusers' x4 upscale pipeline: a Stable Diffusion 2 UNet on the low-resolution image's
    pixels, its prompt encoded as SD 2.x's (one CLIP text encoder). It offers no sampler
    choice: a request runs on a fresh copy of the pipeline's own scheduler."""

    families: ClassVar[frozenset[Family]] = frozenset({Family.LATENT_UPSCALER})
    pipelines: ClassVar[Mapping[str, str]] = MappingProxyType(
        {Role.BASE: "StableDiffusionUpscalePipeline"}
    )
    samplers: ClassVar[Mapping[Sampler, SchedulerChoice]] = MappingProxyType({})
    default_sampler: ClassVar[Sampler | None] = None

    # It upscales 4x; its UNet halves the low-resolution image up to three times.
    factor = 4
    input_multiple = 8

    def scheduler(self, pipe: Any, sampler: Sampler | None) -> Any:
        if sampler is not None:
            raise errors.BadRequest(f"sampler: {sampler} is not offered by the x4 upscaler")
        return type(pipe.scheduler).from_config(pipe.scheduler.config)

    def input_size(self, width: int, height: int) -> tuple[int, int]:
        """The low-resolution input size for a width x height result: a quarter of it, each
        side rounded up to a multiple of 8 (one 4x pass then covers any size)."""

        def low_res(side: int) -> int:
            quarter = -(-side // self.factor)
            return -(-quarter // self.input_multiple) * self.input_multiple

        return low_res(width), low_res(height)


REAL_ESRGAN = RealEsrgan()
LATENT_UPSCALER = LatentUpscaler()

ADAPTERS = (REAL_ESRGAN, LATENT_UPSCALER)
