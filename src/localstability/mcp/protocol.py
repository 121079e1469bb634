"""The MCP tools' arguments and results, built from the REST wire models' own fields.

A tool argument that is also a REST field reuses that field (its type, range, default and
description), so the tools' input schemas state the API's rules and nothing defines them twice;
the arguments then become the REST request body (`TextToImageRequestBody`, ...), which applies
every rule once more, the same way for both front doors.
"""

from __future__ import annotations

from copy import copy
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from localstability.protocol import (
    Engine,
    FinishReason,
    GenerationRequestOptionalParams,
    Image,
    ImageToImageRequestBody,
    LoraRequest,
    MaskingRequestBody,
    MaskSource,
    Sampler,
    StylePreset,
    UpscaleRequestBody,
    WireModel,
)


def wire_field(model: type[BaseModel], name: str, description: str | None = None) -> Any:
    """A REST wire model's field, to declare a tool argument of the same name; `description`
    where the wire field has none (a tool's every argument is described to the assistant)."""
    field = copy(model.model_fields[name])
    if description is not None:
        field.description = description
    assert field.description, f"{model.__name__}.{name} needs a description"
    return field


# The formats JSON Schema (2020-12) defines; the wire models also carry OpenAPI's ("float",
# "double"...), which strict validators (Ajv) refuse to compile.
JSON_SCHEMA_FORMATS = frozenset(
    [
        "date-time",
        "date",
        "time",
        "duration",
        "email",
        "idn-email",
        "hostname",
        "idn-hostname",
        "ipv4",
        "ipv6",
        "uri",
        "uri-reference",
        "iri",
        "iri-reference",
        "uuid",
        "uri-template",
        "json-pointer",
        "relative-json-pointer",
        "regex",
    ]
)


def tool_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON Schema of a tool's arguments or result, without OpenAPI's formats."""

    def clean(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                key: clean(value)
                for key, value in node.items()
                if not (key == "format" and value not in JSON_SCHEMA_FORMATS)
            }
        if isinstance(node, list):
            return [clean(item) for item in node]
        return node

    schema: dict[str, Any] = clean(model.model_json_schema())
    return schema


ENGINE_ID_HELP = "The engine (model) to use: an id that list_available_models lists."
IMAGE_HELP = "base64-encoded PNG, JPEG or WebP file (a data: URL works too)"


class ToolArguments(WireModel):
    """The arguments of one tool call. An unknown argument is an error (a misspelt name
    should not pass unnoticed); an argument given as null counts as left out."""

    model_config = ConfigDict(extra="forbid")

    def wire_fields(self, body: type[BaseModel]) -> dict[str, Any]:
        """The arguments the caller gave that are fields of the REST request `body`."""
        return self.model_dump(
            exclude_unset=True, exclude_none=True, include=set(body.model_fields)
        )


class EngineArguments(ToolArguments):
    """The arguments of a tool that runs an engine."""

    engine_id: str = Field(description=ENGINE_ID_HELP)

    def text_prompts(self) -> list[dict[str, Any]] | None:
        """The prompts as REST's text_prompts, if the tool takes any."""
        return None

    def body_fields(self, body: type[BaseModel]) -> dict[str, Any]:
        """The fields of the REST request `body` that these arguments make."""
        fields = self.wire_fields(body)
        prompts = self.text_prompts()
        if prompts is not None:
            fields["text_prompts"] = prompts
        return fields


class PromptArguments(EngineArguments):
    """A positive and an optional negative prompt, and the diffusion parameters of REST."""

    prompt: str = Field(description="What the image should show.")
    negative_prompt: str | None = Field(None, description="What the image should not show.")
    steps: int = wire_field(GenerationRequestOptionalParams, "steps")
    cfg_scale: float = wire_field(GenerationRequestOptionalParams, "cfg_scale")
    seed: int = wire_field(GenerationRequestOptionalParams, "seed")
    samples: int = wire_field(GenerationRequestOptionalParams, "samples")
    sampler: Sampler | None = wire_field(GenerationRequestOptionalParams, "sampler")
    style_preset: StylePreset | None = wire_field(
        GenerationRequestOptionalParams,
        "style_preset",
        "A style to steer the image towards (the engine's prompt gains its words). Omitted: none.",
    )
    loras: list[LoraRequest] | None = wire_field(
        GenerationRequestOptionalParams,
        "loras",
        "LoRA adapters to apply, by the names list_available_models gives the engine "
        "(`loras`), each with a weight (1.0 as trained). Omitted: the engine's own only.",
    )

    def text_prompts(self) -> list[dict[str, Any]]:
        """The prompt, and the negative prompt with weight -1."""
        prompts: list[dict[str, Any]] = [{"text": self.prompt, "weight": 1.0}]
        if self.negative_prompt:
            prompts.append({"text": self.negative_prompt, "weight": -1.0})
        return prompts


class TextToImageArguments(PromptArguments):
    """generate_image_from_text."""

    width: int | None = Field(
        None,
        description="Width in pixels, a multiple of 64; the engine decides which sizes it "
        "takes. Omitted: the engine's default size.",
    )
    height: int | None = Field(
        None,
        description="Height in pixels, a multiple of 64; the engine decides which sizes it "
        "takes. Omitted: the engine's default size.",
    )


class TransformImageArguments(PromptArguments):
    """transform_image."""

    init_image: str = Field(
        description=f"The image to transform: a {IMAGE_HELP}. The result has its size, "
        "which must be one the engine takes."
    )
    image_strength: float = wire_field(ImageToImageRequestBody, "image_strength")


class InpaintImageArguments(PromptArguments):
    """inpaint_image."""

    init_image: str = Field(description=f"The image to change: a {IMAGE_HELP}.")
    mask_source: MaskSource = wire_field(
        MaskingRequestBody,
        "mask_source",
        "Where the mask comes from: MASK_IMAGE_WHITE (white pixels of mask_image are "
        "regenerated), MASK_IMAGE_BLACK (black pixels of mask_image), or INIT_IMAGE_ALPHA "
        "(the transparent pixels of init_image; no mask_image).",
    )
    mask_image: str | None = Field(
        None,
        description=f"The mask, the size of init_image: a {IMAGE_HELP}. White (or black, "
        "per mask_source) marks what is regenerated. Not used with INIT_IMAGE_ALPHA, where "
        "the transparent pixels of init_image are regenerated.",
    )


class UpscaleImageArguments(EngineArguments):
    """upscale_image."""

    image: str = Field(description=f"The image to upscale: a {IMAGE_HELP}.")
    engine_id: str = Field(
        description=ENGINE_ID_HELP + " esrgan-v1-x2plus (Real-ESRGAN) or "
        "stable-diffusion-x4-latent-upscaler."
    )
    width: int | None = wire_field(UpscaleRequestBody, "width")
    height: int | None = wire_field(UpscaleRequestBody, "height")
    prompt: str | None = Field(
        None, description="Latent upscaler only: what the image shows, to guide it."
    )
    seed: int = wire_field(
        UpscaleRequestBody,
        "seed",
        "Latent upscaler only: the noise seed; 0 picks one at random.",
    )
    steps: int = wire_field(
        UpscaleRequestBody, "steps", "Latent upscaler only: the number of denoising steps."
    )
    cfg_scale: float = wire_field(
        UpscaleRequestBody,
        "cfg_scale",
        "Latent upscaler only: how strictly the prompt guides the result.",
    )

    def text_prompts(self) -> list[dict[str, Any]] | None:
        return [{"text": self.prompt, "weight": 1.0}] if self.prompt else None


class ListModelsArguments(ToolArguments):
    """list_available_models: no arguments."""


class ArtifactInfo(BaseModel):
    """What REST's artifact says besides its image (which comes as image content)."""

    seed: int = wire_field(Image, "seed")
    finishReason: FinishReason = Field(
        description="SUCCESS, ERROR, or CONTENT_FILTERED (the image was blurred)."
    )
    uri: str = Field(
        description="The full-size PNG as a resource: resources/read answers it while the "
        "generation's result is kept."
    )
    preview: bool = Field(
        description="True when the result carries a small JPEG preview and a resource link "
        "for this image instead of the PNG itself (the PNGs are too large to send inline)."
    )


class GenerationResult(BaseModel):
    """The structured result of a generating tool; its images come as image content (PNGs,
    or JPEG previews each followed by a resource link to its PNG), in the order of
    `artifacts`."""

    generation_id: str = Field(
        description="The generation's id, also for GET /v1/generation/{id} while its result is kept"
    )
    engine_id: str = Field(description="The engine that made the images.")
    artifacts: list[ArtifactInfo] = Field(description="One per image, in order.")


class ModelInfo(Engine):
    """An engine as GET /v1/engines/list shows it, and the tools that take it."""

    tools: list[str] = Field(description="The tools that accept this engine_id")


class ModelList(BaseModel):
    """The structured result of list_available_models."""

    models: list[ModelInfo] = Field(description="The engines this server runs.")
