"""Wire models of the Stability AI REST API v1, named exactly as the spec names them.

Nothing else in the package defines a field name of the wire.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

UINT32_MAX = 4_294_967_295
# Ours (the hosted API sets no bound): every prompt is encoded before the first step, so their
# number is what one request may make the device do before it can be stopped between steps.
MAX_TEXT_PROMPTS = 10
PROMPTS_DESCRIPTION = (
    f"At most {MAX_TEXT_PROMPTS} prompts (weights below 0 are negative prompts); each one "
    "beyond the first positive and the first negative is priced as one more step"
)
# Ours too: the LoRA adapters one request may stack (each one is a pass over the model's layers).
MAX_LORAS = 8
LORA_WEIGHT_LIMIT = 4.0


class Sampler(StrEnum):
    DDIM = "DDIM"
    DDPM = "DDPM"
    K_DPMPP_2M = "K_DPMPP_2M"
    K_DPMPP_2S_ANCESTRAL = "K_DPMPP_2S_ANCESTRAL"
    K_DPM_2 = "K_DPM_2"
    K_DPM_2_ANCESTRAL = "K_DPM_2_ANCESTRAL"
    K_EULER = "K_EULER"
    K_EULER_ANCESTRAL = "K_EULER_ANCESTRAL"
    K_HEUN = "K_HEUN"
    K_LMS = "K_LMS"


class ClipGuidancePreset(StrEnum):
    FAST_BLUE = "FAST_BLUE"
    FAST_GREEN = "FAST_GREEN"
    NONE = "NONE"
    SIMPLE = "SIMPLE"
    SLOW = "SLOW"
    SLOWER = "SLOWER"
    SLOWEST = "SLOWEST"


class StylePreset(StrEnum):
    ENHANCE = "enhance"
    ANIME = "anime"
    PHOTOGRAPHIC = "photographic"
    DIGITAL_ART = "digital-art"
    COMIC_BOOK = "comic-book"
    FANTASY_ART = "fantasy-art"
    LINE_ART = "line-art"
    ANALOG_FILM = "analog-film"
    NEON_PUNK = "neon-punk"
    ISOMETRIC = "isometric"
    LOW_POLY = "low-poly"
    ORIGAMI = "origami"
    MODELING_COMPOUND = "modeling-compound"
    CINEMATIC = "cinematic"
    THREE_D_MODEL = "3d-model"
    PIXEL_ART = "pixel-art"
    TILE_TEXTURE = "tile-texture"


class FinishReason(StrEnum):
    SUCCESS = "SUCCESS"
    ERROR = "ERROR"
    CONTENT_FILTERED = "CONTENT_FILTERED"


class EngineType(StrEnum):
    AUDIO = "AUDIO"
    CLASSIFICATION = "CLASSIFICATION"
    PICTURE = "PICTURE"
    STORAGE = "STORAGE"
    TEXT = "TEXT"
    VIDEO = "VIDEO"


class WireModel(BaseModel):
    # NaN and infinities are never valid numbers on this wire; unknown keys are ignored.
    model_config = ConfigDict(allow_inf_nan=False, extra="ignore")

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads true/false as 1/0 (or 1.0/0.0): only a boolean field may.
        name = info.field_name
        if isinstance(value, bool) and name and cls.model_fields[name].annotation is not bool:
            raise ValueError("a boolean is not valid here")
        return value


class TextPrompt(WireModel):
    text: str = Field(max_length=2000, description="The prompt itself")
    weight: float = Field(
        1.0,
        description="Weight of the prompt (use negative numbers for negative prompts). "
        "Defaults to 1.0.",
        json_schema_extra={"format": "float"},
    )


class LoraRequest(WireModel):
    """Our extension: one LoRA adapter to apply, by the name the engine list gives it."""

    name: str = Field(
        min_length=1,
        max_length=128,
        description="An adapter the engine offers (GET /v1/engines/list gives each engine's "
        "`loras`): a name, never a path or URL",
    )
    weight: float = Field(
        1.0,
        ge=-LORA_WEIGHT_LIMIT,
        le=LORA_WEIGHT_LIMIT,
        description="How strongly it applies: 1.0 as trained, 0 switches it off (also one the "
        "engine applies by default)",
        json_schema_extra={"format": "float"},
    )


class GenerationRequestOptionalParams(WireModel):
    cfg_scale: float = Field(
        7,
        ge=0,
        le=35,
        description="How strictly the diffusion process adheres to the prompt text",
    )
    clip_guidance_preset: ClipGuidancePreset = ClipGuidancePreset.NONE
    sampler: Sampler | None = Field(
        None,
        description="Which sampler to use for the diffusion process. "
        "If omitted the server selects one (K_DPMPP_2M).",
    )
    samples: int = Field(1, ge=1, le=10, description="Number of images to generate")
    seed: int = Field(
        0, ge=0, le=UINT32_MAX, description="Random noise seed (omit or use 0 for a random seed)"
    )
    steps: int = Field(30, ge=10, le=50, description="Number of diffusion steps to run")
    style_preset: StylePreset | None = None
    extras: dict[str, Any] | None = Field(
        None, description="Extra parameters passed to the engine (accepted, currently unused)"
    )
    loras: list[LoraRequest] | None = Field(
        None,
        max_length=MAX_LORAS,
        description=f"Our extension: up to {MAX_LORAS} LoRA adapters to apply, each named once, "
        "on top of those the engine applies by default. Omitted: the engine's own only",
    )


class TextToImageRequestBody(GenerationRequestOptionalParams):
    text_prompts: list[TextPrompt] = Field(
        min_length=1, max_length=MAX_TEXT_PROMPTS, description=PROMPTS_DESCRIPTION
    )
    # Sizes are checked per engine, with the spec's error names; the schema states the floor.
    height: int = Field(
        512,
        description="Height of the image to generate, in pixels",
        json_schema_extra={"minimum": 128, "multipleOf": 64},
    )
    width: int = Field(
        512,
        description="Width of the image to generate, in pixels",
        json_schema_extra={"minimum": 128, "multipleOf": 64},
    )


class Image(BaseModel):
    """One artifact of a generation response (the spec's `Image` schema)."""

    base64: str = Field(description="Image encoded in base64 (a PNG)")
    finishReason: FinishReason
    seed: int = Field(description="The seed associated with this image")


class GenerationResponse(BaseModel):
    artifacts: list[Image]


class Engine(BaseModel):
    id: str
    name: str
    description: str
    type: EngineType
    loras: list[str] = Field(
        default_factory=list,
        description="Our extension: the LoRA adapters a request may name in `loras` for this "
        "engine (empty: none)",
    )


class OrganizationMembership(BaseModel):
    id: str
    name: str
    role: str
    is_default: bool


class AccountResponseBody(BaseModel):
    id: str
    email: str = Field(json_schema_extra={"format": "email"})
    profile_picture: str | None = Field(None, json_schema_extra={"format": "uri"})
    organizations: list[OrganizationMembership]


class BalanceResponseBody(BaseModel):
    credits: float = Field(json_schema_extra={"format": "double"})


class GenerationStatus(StrEnum):
    """Extension: where a generation stands (GET /v1/generation/{id})."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = (GenerationStatus.SUCCEEDED, GenerationStatus.FAILED, GenerationStatus.CANCELLED)


class GenerationProgress(BaseModel):
    step: int = Field(description="Diffusion steps done (0 while queued)")
    total: int = Field(description="Diffusion steps in all (0 until it starts)")


class GenerationStatusBody(BaseModel):
    """Extension: a generation by id while it is queued or running (202), as the async POST
    answers it, and what DELETE answers."""

    id: str = Field(description="The generation id (also in the Generation-Id header)")
    status: str = Field(
        description="queued, running, succeeded, failed or cancelled",
        json_schema_extra={"enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
    )
    progress: GenerationProgress
    queue_position: int | None = Field(None, description="Jobs ahead of it; only while queued")
    batch_size: int | None = Field(
        None, description="Requests sharing its model run; only once started"
    )


class HealthBody(BaseModel):
    """GET /healthz (extension): the process is alive."""

    status: str = "ok"


class ReadinessBody(BaseModel):
    """GET /readyz (extension): whether this process can serve, and what with."""

    status: str = Field(description="ready, or not_ready (503)")
    database: str = Field(description="ok, or unavailable")
    jobs: str = Field(description="the job backend (celery: Redis): ok, or unavailable")
    workers: int = Field(description="live processes that run generations (0 if unknown)")
    engines: dict[str, str] = Field(
        description="each enabled engine: ready (its weights are here), fallback (its offline "
        "fallback is), or missing (loaded on first use if they can be fetched)"
    )


class Error(BaseModel):
    id: str = Field(description="A unique identifier for this particular occurrence of the problem")
    name: str = Field(description="The short-name of this class of errors e.g. `bad_request`")
    message: str = Field(description="A human-readable explanation specific to this failure")


class InitImageMode(StrEnum):
    IMAGE_STRENGTH = "IMAGE_STRENGTH"
    STEP_SCHEDULE = "STEP_SCHEDULE"


class MaskSource(StrEnum):
    MASK_IMAGE_WHITE = "MASK_IMAGE_WHITE"
    MASK_IMAGE_BLACK = "MASK_IMAGE_BLACK"
    INIT_IMAGE_ALPHA = "INIT_IMAGE_ALPHA"


class ImageToImageRequestBody(GenerationRequestOptionalParams):
    """The multipart fields of image-to-image other than the `init_image` file part."""

    text_prompts: list[TextPrompt] = Field(
        min_length=1, max_length=MAX_TEXT_PROMPTS, description=PROMPTS_DESCRIPTION
    )
    init_image_mode: InitImageMode = InitImageMode.IMAGE_STRENGTH
    image_strength: float = Field(
        0.35,
        ge=0,
        le=1,
        description="How much the init_image shapes the result (1 keeps it)",
        json_schema_extra={"format": "float"},
    )
    step_schedule_start: float = Field(
        0.65, ge=0, le=1, description="Skips a proportion of the start of the diffusion steps"
    )
    step_schedule_end: float | None = Field(
        None, ge=0, le=1, description="Skips a proportion of the end of the diffusion steps"
    )


class MaskingRequestBody(GenerationRequestOptionalParams):
    """The multipart fields of masking other than the `init_image` / `mask_image` parts."""

    text_prompts: list[TextPrompt] = Field(
        min_length=1, max_length=MAX_TEXT_PROMPTS, description=PROMPTS_DESCRIPTION
    )
    mask_source: MaskSource


class UpscaleRequestBody(WireModel):
    """The multipart fields of upscale other than the `image` part (latent upscaler: all)."""

    width: int | None = Field(None, ge=512, description="Desired width of the output image")
    height: int | None = Field(None, ge=512, description="Desired height of the output image")
    text_prompts: list[TextPrompt] | None = Field(
        None, min_length=1, max_length=MAX_TEXT_PROMPTS, description=PROMPTS_DESCRIPTION
    )
    seed: int = Field(0, ge=0, le=UINT32_MAX)
    steps: int = Field(30, ge=10, le=50)
    cfg_scale: float = Field(7, ge=0, le=35)
