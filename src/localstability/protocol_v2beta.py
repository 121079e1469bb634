"""The v2beta Stable Image wire models, named exactly as ../shared/spec/stability-v2beta.md
names them: the generate requests, the JSON image answer, the error body, and the aspect-ratio
tables that decide an answer's size (v2beta has no width or height).

Requests are multipart only; their unknown fields are ignored (Stability's own clients send
some), so every request model ignores extra keys.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from localstability.protocol import StylePreset, WireModel

SEED_MAX = 4_294_967_294  # 2**32 - 2, not v1's 2**32 - 1
PROMPT_MAX = 10_000


class OutputFormat(StrEnum):
    JPEG = "jpeg"
    PNG = "png"
    WEBP = "webp"


class AspectRatio(StrEnum):
    R21_9 = "21:9"
    R16_9 = "16:9"
    R3_2 = "3:2"
    R5_4 = "5:4"
    R1_1 = "1:1"
    R4_5 = "4:5"
    R2_3 = "2:3"
    R9_16 = "9:16"
    R9_21 = "9:21"


class Sd3Model(StrEnum):
    SD35_LARGE = "sd3.5-large"
    SD35_LARGE_TURBO = "sd3.5-large-turbo"
    SD35_MEDIUM = "sd3.5-medium"
    SD35_FLASH = "sd3.5-flash"  # documented and accepted, missing from the spec's enum
    # Re-routed by the hosted API to their 3.5 equivalents since 2025-04-17.
    SD3_LARGE = "sd3-large"
    SD3_LARGE_TURBO = "sd3-large-turbo"
    SD3_MEDIUM = "sd3-medium"


class GenerateMode(StrEnum):
    TEXT_TO_IMAGE = "text-to-image"
    IMAGE_TO_IMAGE = "image-to-image"


class V2betaFinishReason(StrEnum):
    SUCCESS = "SUCCESS"
    CONTENT_FILTERED = "CONTENT_FILTERED"


# Aspect ratio -> output pixels (width, height): Ultra and SD 3.5 (1 MP), Core (1.5x a side).
SIZES_1MP: dict[AspectRatio, tuple[int, int]] = {
    AspectRatio.R1_1: (1024, 1024),
    AspectRatio.R5_4: (1088, 896),
    AspectRatio.R4_5: (896, 1088),
    AspectRatio.R3_2: (1216, 832),
    AspectRatio.R2_3: (832, 1216),
    AspectRatio.R16_9: (1344, 768),
    AspectRatio.R9_16: (768, 1344),
    AspectRatio.R21_9: (1536, 640),
    AspectRatio.R9_21: (640, 1536),
}
# Core's sides are 1.5x those (1:1 1536x1536), as the hosted API answers.
SIZES_CORE: dict[AspectRatio, tuple[int, int]] = {
    ratio: (width * 3 // 2, height * 3 // 2) for ratio, (width, height) in SIZES_1MP.items()
}


class GenerateRequest(WireModel):
    """The fields every generate endpoint shares (generate/core takes exactly these)."""

    prompt: str = Field(min_length=1, max_length=PROMPT_MAX)
    negative_prompt: str | None = Field(None, max_length=PROMPT_MAX)
    aspect_ratio: AspectRatio = AspectRatio.R1_1
    seed: int = Field(0, ge=0, le=SEED_MAX, description="0: a random seed.")
    output_format: OutputFormat = OutputFormat.PNG
    style_preset: StylePreset | None = None


class UltraRequest(GenerateRequest):
    """generate/ultra: with `image`, image-to-image, and `strength` is required."""

    strength: float | None = Field(None, ge=0, le=1)


class Sd3Request(UltraRequest):
    """generate/sd3: the model, the mode and its guidance."""

    mode: GenerateMode = GenerateMode.TEXT_TO_IMAGE
    model: Sd3Model = Sd3Model.SD35_LARGE
    cfg_scale: float | None = Field(
        None, ge=1, le=10, description="Default 4 (Large, Medium), 1 (Turbo, Flash)."
    )


class UpscaleFastRequest(WireModel):
    """upscale/fast: the `image` part (4x; sides 32-1,536, 1,024-1,048,576 pixels) and the
    answer's format."""

    output_format: OutputFormat = OutputFormat.PNG


class ImageBody(WireModel):
    """The JSON answer of a finished generation (Accept: application/json)."""

    image: str = Field(description="The image file, base64 (not a data URL).")
    seed: int
    finish_reason: V2betaFinishReason


class ErrorBody(WireModel):
    """Every v2beta error: `id` is 32 hex, `errors` at least one message."""

    id: str
    name: str
    errors: list[str] = Field(min_length=1)
