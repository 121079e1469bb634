"""The v2beta Stable Image use cases on our engines (generate/ultra, core, sd3; upscale/fast).

v2beta names endpoints and models, not engines: each maps to one of the deployment's engines
(`ROUTE_ENGINES`, which the `[v2beta_engines]` table overrides), and the answer's size comes from
the aspect ratio (protocol_v2beta's tables), not from the client. A request becomes the
generation service's own text-to-image or image-to-image: the same jobs, queue, credits,
records, progress and cancellation as v1 (so `GET /v1/generation/{id}` and `DELETE` work for
it), its prompt as a weight-1 prompt and its negative prompt as a weight -1 one.

Image-to-image (ultra and sd3 with an `image`): the answer is about 1 MP whatever the input's
size (as the hosted API answers a 1536x1536 input with 1024x1024): the input is resized to the
table's size nearest its aspect ratio first, and `strength` (0 keeps the input, 1 ignores it)
is v1's `1 - image_strength`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from PIL import Image as PILImage

from localstability import errors
from localstability.engines import EngineSpec, Task
from localstability.inference.tasks import png
from localstability.protocol import (
    ImageToImageRequestBody,
    InitImageMode,
    TextPrompt,
    TextToImageRequestBody,
    UpscaleRequestBody,
)
from localstability.protocol_v2beta import (
    SIZES_1MP,
    SIZES_CORE,
    AspectRatio,
    GenerateMode,
    GenerateRequest,
    Sd3Model,
    Sd3Request,
    UltraRequest,
)
from localstability.service.generation import Delivery, GenerationService, Outcome
from localstability.service.images import decode_upload
from localstability.store.accounts import Principal

# Which engine serves each endpoint (core, ultra) and each generate/sd3 model, by default.
ROUTE_ENGINES: dict[str, str] = {
    "fast": "esrgan-v1-x2plus",  # Real-ESRGAN (offline: x4plus from a PyPI package)
    "core": "stable-diffusion-xl-1024-v1-0",  # no open Core: SDXL 1.0 at Core's sizes
    "ultra": "stable-diffusion-3-5-large",  # no open Ultra: SD 3.5 Large
    Sd3Model.SD35_LARGE: "stable-diffusion-3-5-large",
    Sd3Model.SD35_LARGE_TURBO: "stable-diffusion-3-5-large-turbo",
    Sd3Model.SD35_MEDIUM: "stable-diffusion-3-5-medium",
    Sd3Model.SD35_FLASH: "stable-diffusion-3-5-large-turbo",  # Flash has no open weights
    Sd3Model.SD3_LARGE: "stable-diffusion-3-5-large",
    Sd3Model.SD3_LARGE_TURBO: "stable-diffusion-3-5-large-turbo",
    Sd3Model.SD3_MEDIUM: "stable-diffusion-3-5-medium",
}
# generate/sd3's cfg_scale when the request has none: 4 for Large and Medium, 1 for the
# few-step models.
FEW_STEP_MODELS = {Sd3Model.SD35_LARGE_TURBO, Sd3Model.SD35_FLASH, Sd3Model.SD3_LARGE_TURBO}
MIN_SIDE = 64
# upscale/fast's input: sides and pixel count; the answer is 4x.
FAST_SIDES, FAST_PIXELS, FAST_FACTOR = (32, 1536), (1024, 1_048_576), 4


Sizes = dict[AspectRatio, tuple[int, int]]


def nearest_size(size: tuple[int, int], table: Sizes) -> tuple[int, int]:
    """The table's size whose aspect ratio is nearest the image's."""
    ratio = size[0] / size[1]
    return min(table.values(), key=lambda wh: abs(wh[0] / wh[1] - ratio))


class StableImageService:
    """generate/ultra, core and sd3 through the generation service."""

    def __init__(self, generation: GenerationService, engines: dict[str, str]) -> None:
        unknown = sorted(set(engines) - set(ROUTE_ENGINES))
        if unknown:
            raise ValueError(
                f"v2beta_engines: {', '.join(unknown)} is not a v2beta endpoint or model "
                f"(they are: {', '.join(ROUTE_ENGINES)})"
            )
        self.generation = generation
        self.routes = {**ROUTE_ENGINES, **engines}

    def engine(self, route: str, task: Task) -> EngineSpec:
        """The engine that serves `route` (an endpoint or an sd3 model) for `task`."""
        engine_id = self.routes[route]
        try:
            return self.generation.engine(engine_id, task)
        except errors.NotFound:
            raise errors.EngineUnavailable(
                f"{route}: its engine {engine_id} is not served here: configure it (an "
                f"[engines.{engine_id}] table, or `localstability models pull {engine_id}`), or "
                f"map {route} to another engine in [v2beta_engines]"
            ) from None

    async def generate(
        self,
        principal: Principal,
        route: str,
        request: GenerateRequest,
        image: bytes | None,
        delivery: Delivery,
        max_pixels: int,
    ) -> Outcome:
        """One generation for `route` ("core", "ultra" or "sd3"); `image` makes it
        image-to-image (ultra, sd3)."""
        key = route
        fields: dict[str, Any] = {"seed": request.seed, "samples": 1}
        if request.style_preset is not None:
            fields["style_preset"] = request.style_preset
        if isinstance(request, Sd3Request):
            key = request.model
            if request.mode == GenerateMode.IMAGE_TO_IMAGE and image is None:
                raise errors.BadRequest("image: required for mode image-to-image")
            if request.mode == GenerateMode.TEXT_TO_IMAGE:
                image = None  # only image-to-image reads it
            default_cfg = 1.0 if request.model in FEW_STEP_MODELS else 4.0
            fields["cfg_scale"] = request.cfg_scale or default_cfg
        prompts = [TextPrompt(text=request.prompt, weight=1.0)]
        if request.negative_prompt:
            prompts.append(TextPrompt(text=request.negative_prompt, weight=-1.0))
        table = SIZES_CORE if route == "core" else SIZES_1MP
        if image is None:
            engine = self.engine(key, Task.TEXT_TO_IMAGE)
            width, height = table[request.aspect_ratio]
            body = TextToImageRequestBody(
                text_prompts=prompts, width=width, height=height, **fields
            )
            return await self.generation.text_to_image(
                principal, engine, body, delivery, server_sized=True
            )
        assert isinstance(request, UltraRequest)
        if request.strength is None:
            raise errors.BadRequest("strength: required with an image")
        engine = self.engine(key, Task.IMAGE_TO_IMAGE)
        init = await asyncio.to_thread(_fitted, image, max_pixels, table)
        body_i2i = ImageToImageRequestBody(
            text_prompts=prompts,
            init_image_mode=InitImageMode.IMAGE_STRENGTH,
            image_strength=1.0 - request.strength,
            **fields,
        )
        return await self.generation.image_to_image(
            principal, engine, body_i2i, {"init_image": init}, delivery, server_sized=True
        )

    async def upscale_fast(
        self, principal: Principal, image: bytes, delivery: Delivery, max_pixels: int
    ) -> Outcome:
        """upscale/fast: Real-ESRGAN, 4x the input."""
        engine = self.engine("fast", Task.UPSCALE)
        await asyncio.to_thread(_check_fast_input, image, max_pixels)
        return await self.generation.upscale(
            principal, engine, UpscaleRequestBody(), {"image": image}, delivery, FAST_FACTOR
        )


def _check_fast_input(data: bytes, max_pixels: int) -> None:
    """upscale/fast's image checked against its limits (the upscale reads the bytes as sent)."""
    image = decode_upload(data, "image", max_pixels)
    (low, high), pixels = FAST_SIDES, image.size[0] * image.size[1]
    if not (low <= min(image.size) and max(image.size) <= high):
        raise errors.BadRequest(f"image: width and height must be between {low} and {high}")
    if not FAST_PIXELS[0] <= pixels <= FAST_PIXELS[1]:
        raise errors.BadRequest(
            f"image: {FAST_PIXELS[0]:,} to {FAST_PIXELS[1]:,} pixels, not {pixels:,}"
        )


def _fitted(data: bytes, max_pixels: int, table: Sizes) -> bytes:
    """The uploaded image, checked (every side at least 64), at the table's size nearest its
    aspect ratio, as PNG."""
    image = decode_upload(data, "image", max_pixels)
    if min(image.size) < MIN_SIDE:
        raise errors.BadRequest(f"image: every side must be at least {MIN_SIDE} pixels")
    fitted = image.convert("RGB").resize(
        nearest_size(image.size, table), PILImage.Resampling.LANCZOS
    )
    return png(fitted)
