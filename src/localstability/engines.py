"""The engine catalogue: engine id -> family, default weights, size rules and default size.

The dimension rules of the spec (section 5) live here, once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

from localstability import errors
from localstability.protocol import Engine, EngineType
from localstability.sizes_flow import FLUX_RULE, SD35_LARGE_RULE, SD35_MEDIUM_RULE


class Family(StrEnum):
    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"
    SD3 = "sd3"  # Stable Diffusion 3.5: MMDiT, flow matching, CLIP x2 + T5
    FLUX = "flux"  # FLUX.1: flow matching, CLIP + T5, guidance-distilled
    ESRGAN = "esrgan"
    LATENT_UPSCALER = "latent-upscaler"


class Task(StrEnum):
    TEXT_TO_IMAGE = "text-to-image"
    IMAGE_TO_IMAGE = "image-to-image"
    MASKING = "image-to-image/masking"
    UPSCALE = "image-to-image/upscale"


DIFFUSION_TASKS = frozenset({Task.TEXT_TO_IMAGE, Task.IMAGE_TO_IMAGE, Task.MASKING})

SDXL_V1_SIZES: tuple[tuple[int, int], ...] = (
    (1024, 1024),
    (1152, 896),
    (1216, 832),
    (1344, 768),
    (1536, 640),
    (640, 1536),
    (768, 1344),
    (832, 1216),
    (896, 1152),
)

SizeRule = Callable[[str, int, int], None]

# Sizes are multiples of this (the spec's "increments of 64"); allowed_sizes steps by it.
SIZE_STEP = 64

UPSCALE_MAX_PIXELS = 4_194_304


def upscale_size(
    input_width: int, input_height: int, width: int | None, height: int | None
) -> tuple[int, int]:
    """The upscale output size: twice the input by default, else one side given, aspect kept."""
    if width is not None and height is not None:
        raise errors.BadRequest("only one of width or height may be specified")
    if width is not None:
        size = (width, max(1, round(width * input_height / input_width)))
    elif height is not None:
        size = (max(1, round(height * input_width / input_height)), height)
    else:
        size = (input_width * 2, input_height * 2)
    if size[0] * size[1] > UPSCALE_MAX_PIXELS:
        raise errors.InvalidPixelCount(
            f"The requested image would exceed the maximum pixel count of "
            f"{UPSCALE_MAX_PIXELS:,} ({size[0]}x{size[1]} = {size[0] * size[1]:,})"
        )
    if size[0] < input_width or size[1] < input_height:
        raise errors.BadRequest(
            f"image: the output {size[0]}x{size[1]} would be smaller than the input "
            f"{input_width}x{input_height}; upscale makes images larger"
        )
    return size


def _check_increments(width: int, height: int) -> None:
    if width % SIZE_STEP or height % SIZE_STEP or width < 128 or height < 128:
        raise errors.InvalidHeightOrWidth(
            "Height and width must be specified in increments of 64 and be at least 128, "
            f"but we received {width}x{height}"
        )


def sdxl_v1_rule(engine_id: str, width: int, height: int) -> None:
    """SDXL 0.9/1.0: one of the nine trained sizes, given as width x height."""
    if (width, height) not in SDXL_V1_SIZES:
        allowed = ", ".join(f"{w}x{h}" for w, h in SDXL_V1_SIZES)
        raise errors.InvalidSdxlV1Dimensions(
            f"for {engine_id} the allowed dimensions are {allowed}, "
            f"but we received {width}x{height}"
        )


def sdxl_v222_rule(engine_id: str, width: int, height: int) -> None:
    """SDXL beta: between 128x128 and 512x896 (or 896x512); only one side may exceed 512."""
    _check_increments(width, height)
    if max(width, height) > 896 or min(width, height) > 512:
        raise errors.InvalidSdxlV222Dimensions(
            f"for {engine_id} the dimensions must be between 128x128 and 512x896 (or 896x512) "
            f"and only one side may be greater than 512, but we received {width}x{height}"
        )


def sd16_rule(engine_id: str, width: int, height: int) -> None:
    """SD 1.6: each side between 320 and 1536 (the spec names no error; we use the size one)."""
    _check_increments(width, height)
    if not (320 <= width <= 1536 and 320 <= height <= 1536):
        raise errors.InvalidHeightOrWidth(
            f"for {engine_id} the dimensions must be between 320x320 and 1536x1536, "
            f"but we received {width}x{height}"
        )


def shapes_rule(engine_id: str, width: int, height: int) -> None:
    """The shapes model: trained at 128x128; each side between 128 and 512."""
    _check_increments(width, height)
    if max(width, height) > 512:
        raise errors.InvalidHeightOrWidth(
            f"for {engine_id} the dimensions must be between 128x128 and 512x512 (it was "
            f"trained at 128x128), but we received {width}x{height}"
        )


SHAPES_ENGINE_ID = "localstability-shapes-v1"


def shapes_model_dir() -> Path:
    """The diffusers folder of our own shapes model, shipped inside the package."""
    return Path(__file__).resolve().parent / "models" / SHAPES_ENGINE_ID


def pixel_count_rule(low: int, high: int) -> SizeRule:
    """The "512 engines" rule: low <= width * height <= high."""

    def rule(engine_id: str, width: int, height: int) -> None:
        _check_increments(width, height)
        if not low <= width * height <= high:
            raise errors.InvalidPixelCount(
                f"for {engine_id} the pixel count (width x height) must be between {low:,} "
                f"and {high:,}, but we received {width}x{height} = {width * height:,}"
            )

    return rule


@dataclass(frozen=True)
class EngineSpec:
    """What the catalogue knows of one engine id."""

    id: str
    name: str
    description: str
    family: Family
    tasks: frozenset[Task]
    default_source: str
    size_rule: SizeRule | None = None
    default_width: int = 512
    default_height: int = 512
    type: EngineType = EngineType.PICTURE
    fallback_source: str | None = None  # used when the default source can't be had
    # Price relative to SDXL per pixel and step (see localstability.service.pricing).
    cost_factor: float = 1.0
    # The most images queued requests may run together in one pipeline call (1: no batching).
    # On where bench/batching.py measured a gain (tiny models, CPU): SD 1.x/2.x 1.2-1.4x at
    # 2-4 images; SDXL at 1024x1024 none.
    batch_max_images: int = 1
    # Whether LoRA adapters of its family apply (not to our shapes model: an SD 1 pipeline,
    # but not SD 1's layer sizes, so no SD 1 adapter fits it).
    offers_loras: bool = True
    # What a request that leaves steps or cfg_scale out gets (None: the wire's 30 and 7).
    default_steps: int | None = None
    default_cfg_scale: float | None = None
    # Listed and served only where its weights are on this machine or the operator configured
    # it (an [engines.ID] table): the large models nobody has by default (service/tasks.py).
    needs_weights: bool = False

    def as_wire(self, loras: list[str] | None = None) -> Engine:
        return Engine(
            id=self.id,
            name=self.name,
            description=self.description,
            type=self.type,
            loras=loras or [],
        )

    @property
    def takes_loras(self) -> bool:
        """Whether LoRA adapters apply to it: the diffusion engines (not the upscalers), but
        those that say otherwise."""
        return self.offers_loras and bool(self.tasks & DIFFUSION_TASKS)

    def check_size(self, width: int, height: int) -> None:
        """Raise the spec's size error when width x height is not allowed for this engine."""
        if self.size_rule is not None:
            self.size_rule(self.id, width, height)

    def allowed_sizes(self, largest: int = 2048) -> list[tuple[int, int]]:
        """Every width x height that check_size accepts with both sides multiples of 64 up to
        `largest`, widths ascending, then heights. `largest` bounds the rules that have no
        bound of their own (SD 2.1's pixel count would allow 128x8192). None for an engine
        without a size rule: an upscaler's output size follows its input."""
        if self.size_rule is None:
            return []
        sides = range(SIZE_STEP, largest + 1, SIZE_STEP)
        return [(width, height) for width in sides for height in sides if self._fits(width, height)]

    def _fits(self, width: int, height: int) -> bool:
        try:
            self.check_size(width, height)
        except errors.BadRequest:
            return False
        return True

    @property
    def takes_prompts(self) -> bool:
        """Whether its requests read text prompts, steps and cfg_scale: every diffusion model,
        the latent upscaler included (service/tasks.py runs it with them), but not Real-ESRGAN,
        a plain super-resolution network that only takes the image and a size."""
        return self.family != Family.ESRGAN


def _flow(
    engine_id: str,
    name: str,
    description: str,
    family: Family,
    source: str,
    size_rule: SizeRule,
    *,
    steps: int,
    cfg_scale: float,
    cost_factor: float,
) -> EngineSpec:
    """An SD 3.5 or FLUX.1 engine: every diffusion task, 1024x1024 by default, its own steps
    and guidance, listed once its weights are here (docs/models.md)."""
    return EngineSpec(
        id=engine_id,
        name=name,
        description=description,
        family=family,
        tasks=DIFFUSION_TASKS,
        default_source=source,
        size_rule=size_rule,
        default_width=1024,
        default_height=1024,
        default_steps=steps,
        default_cfg_scale=cfg_scale,
        cost_factor=cost_factor,
        needs_weights=True,
    )


CATALOGUE: dict[str, EngineSpec] = {
    spec.id: spec
    for spec in (
        EngineSpec(
            id=SHAPES_ENGINE_ID,
            name="localstability Shapes v1",
            description="A small latent diffusion model of coloured shapes on plain backgrounds, "
            "trained by localstability; ships with the package and runs offline",
            family=Family.SD1,
            tasks=DIFFUSION_TASKS,
            batch_max_images=4,
            default_source=str(shapes_model_dir()),
            size_rule=shapes_rule,
            default_width=128,
            default_height=128,
            cost_factor=0.5,
            offers_loras=False,
        ),
        EngineSpec(
            id="stable-diffusion-v1-6",
            name="Stable Diffusion v1.6",
            description="Stability-AI Stable Diffusion v1.6",
            family=Family.SD1,
            tasks=DIFFUSION_TASKS,
            batch_max_images=4,
            default_source="stable-diffusion-v1-5/stable-diffusion-v1-5",
            size_rule=sd16_rule,
            cost_factor=0.5,
        ),
        EngineSpec(
            id="stable-diffusion-512-v2-1",
            name="Stable Diffusion v2.1",
            description="Stability-AI Stable Diffusion v2.1",
            family=Family.SD2,
            tasks=DIFFUSION_TASKS,
            batch_max_images=4,
            default_source="stabilityai/stable-diffusion-2-1-base",
            size_rule=pixel_count_rule(262_144, 1_048_576),
            cost_factor=0.5,
        ),
        EngineSpec(
            id="stable-diffusion-xl-1024-v1-0",
            name="Stable Diffusion XL v1.0",
            description="Stability-AI Stable Diffusion XL v1.0",
            family=Family.SDXL,
            tasks=DIFFUSION_TASKS,
            default_source="stabilityai/stable-diffusion-xl-base-1.0",
            size_rule=sdxl_v1_rule,
            default_width=1024,
            default_height=1024,
        ),
        EngineSpec(
            id="stable-diffusion-xl-beta-v2-2-2",
            name="Stable Diffusion v2.2.2-XL Beta",
            description="Stability-AI Stable Diffusion XL Beta v2.2.2",
            family=Family.SDXL,
            tasks=DIFFUSION_TASKS,
            default_source="stabilityai/stable-diffusion-xl-base-1.0",
            size_rule=sdxl_v222_rule,
        ),
        _flow(
            "stable-diffusion-3-5-large",
            "Stable Diffusion 3.5 Large",
            "Stability-AI Stable Diffusion 3.5 Large (MMDiT, flow matching)",
            Family.SD3,
            "stabilityai/stable-diffusion-3.5-large",
            SD35_LARGE_RULE,
            steps=28,
            cfg_scale=3.5,
            cost_factor=2.5,
        ),
        _flow(
            "stable-diffusion-3-5-large-turbo",
            "Stable Diffusion 3.5 Large Turbo",
            "Stability-AI Stable Diffusion 3.5 Large Turbo (few steps, no guidance)",
            Family.SD3,
            "stabilityai/stable-diffusion-3.5-large-turbo",
            SD35_LARGE_RULE,
            steps=10,  # the model card's 4 is below v1's floor of 10
            cfg_scale=0.0,
            cost_factor=2.5,
        ),
        _flow(
            "stable-diffusion-3-5-medium",
            "Stable Diffusion 3.5 Medium",
            "Stability-AI Stable Diffusion 3.5 Medium (MMDiT-X, flow matching)",
            Family.SD3,
            "stabilityai/stable-diffusion-3.5-medium",
            SD35_MEDIUM_RULE,
            steps=40,
            cfg_scale=4.5,
            cost_factor=1.0,
        ),
        _flow(
            "flux-1-schnell",
            "FLUX.1 [schnell]",
            "Black Forest Labs FLUX.1 [schnell] (few steps, no guidance, no negative prompts)",
            Family.FLUX,
            "black-forest-labs/FLUX.1-schnell",
            FLUX_RULE,
            steps=10,  # the model card's 4 is below v1's floor of 10
            cfg_scale=0.0,
            cost_factor=3.0,
        ),
        _flow(
            "flux-1-dev",
            "FLUX.1 [dev]",
            "Black Forest Labs FLUX.1 [dev] (guidance-distilled: cfg_scale is its guidance; "
            "no negative prompts)",
            Family.FLUX,
            "black-forest-labs/FLUX.1-dev",
            FLUX_RULE,
            steps=28,
            cfg_scale=3.5,
            cost_factor=3.0,
        ),
        EngineSpec(
            id="esrgan-v1-x2plus",
            name="Real-ESRGAN x2",
            description="Real-ESRGAN_x2plus upscaler model",
            family=Family.ESRGAN,
            tasks=frozenset({Task.UPSCALE}),
            default_source="ai-forever/Real-ESRGAN/RealESRGAN_x2.pth",
            # Offline: Real-ESRGAN x4plus, converted from the ncnn files that ship on PyPI.
            fallback_source="packaged:realesrgan-x4plus",
            cost_factor=0.25,
        ),
        EngineSpec(
            id="stable-diffusion-x4-latent-upscaler",
            name="Stable Diffusion x4 Latent Upscaler",
            description="Stability-AI Stable Diffusion x4 latent upscaler",
            family=Family.LATENT_UPSCALER,
            tasks=frozenset({Task.UPSCALE}),
            default_source="stabilityai/stable-diffusion-x4-upscaler",
            cost_factor=0.25,
        ),
    )
}


# An engine id is one path segment of /v1/generation/{engine_id}/...: lowercase letters and
# digits, then also '.', '_' and '-', at most 64 characters (every catalogue id is one).
ENGINE_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")

# A LoRA adapter's name is its file's name in the adapter folder without `.safetensors`:
# letters, digits, then also '.', '_' and '-' (so never a path), at most 128 characters.
LORA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
LORA_SUFFIX = ".safetensors"


def is_lora_name(name: str) -> bool:
    """Whether `name` can name an adapter (the rule above, and not its file's name)."""
    return bool(LORA_NAME.fullmatch(name)) and not name.endswith(LORA_SUFFIX)


# An operator's own engine takes its family's rules (tasks, sizes, default size, price,
# batching) from the catalogue engine that serves that family.
FAMILY_TEMPLATES: dict[Family, str] = {
    Family.SD1: "stable-diffusion-v1-6",
    Family.SD2: "stable-diffusion-512-v2-1",
    Family.SDXL: "stable-diffusion-xl-1024-v1-0",
    Family.SD3: "stable-diffusion-3-5-large",
    Family.FLUX: "flux-1-dev",
    Family.ESRGAN: "esrgan-v1-x2plus",
    Family.LATENT_UPSCALER: "stable-diffusion-x4-latent-upscaler",
}


def custom_engine(
    engine_id: str,
    family: Family,
    source: str,
    name: str | None = None,
    description: str | None = None,
) -> EngineSpec:
    """An engine of the operator's own: `family`'s rules, its own id, weights and words."""
    template = CATALOGUE[FAMILY_TEMPLATES[family]]
    return replace(
        template,
        id=engine_id,
        name=name or engine_id,
        description=description or f"{engine_id}: {family.value} weights served by this server",
        default_source=source,
        fallback_source=None,
        needs_weights=False,  # the operator configured it
    )


def get_engine(engine_id: str, catalogue: dict[str, EngineSpec] | None = None) -> EngineSpec:
    """The entry for engine_id (in `catalogue`, default the built-in one), or the spec's
    404 not_found."""
    try:
        return (CATALOGUE if catalogue is None else catalogue)[engine_id]
    except KeyError:
        raise errors.NotFound(f"The specified engine (ID {engine_id}) was not found.") from None
