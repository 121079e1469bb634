"""The five MCP tools, on the same services as the REST routes.

Each generating tool only translates: its arguments become the REST request body
(`TextToImageRequestBody`, ...) and base64 images the REST file parts, the service's use case
does the rest (checks, price, job, credits) exactly as for the REST routes, and its outcome
becomes MCP content where REST has artifacts.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    BlobResourceContents,
    CallToolResult,
    ReadResourceResult,
    TextContent,
    Tool,
    ToolAnnotations,
)
from pydantic import BaseModel, ValidationError

from localstability import errors
from localstability.context import AppContext
from localstability.engines import EngineSpec, Task
from localstability.errors import (
    UNEXPECTED_MESSAGE,
    describe_validation_errors,
    report_unexpected,
)
from localstability.mcp.protocol import (
    EngineArguments,
    GenerationResult,
    InpaintImageArguments,
    ListModelsArguments,
    ModelInfo,
    ModelList,
    TextToImageArguments,
    ToolArguments,
    TransformImageArguments,
    UpscaleImageArguments,
    tool_schema,
)
from localstability.mcp.results import b64, generation_result, parse_image_uri
from localstability.protocol import (
    Error,
    GenerationStatusBody,
    ImageToImageRequestBody,
    MaskingRequestBody,
    TextToImageRequestBody,
    UpscaleRequestBody,
)
from localstability.service.generation import Delivery, Outcome
from localstability.service.images import check_file_size
from localstability.store.accounts import Principal

log = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=BaseModel)

# A JSON-RPC server error (the range -32000 to -32099 is the server's own): a request the REST
# API would refuse, with the REST envelope as its data.
REFUSED = -32000

# Sends the caller an MCP progress notification: progress, total, message.
Reporter = Callable[[float, float | None, str | None], Awaitable[None]]
# The reporter of the tool call being run, when its caller asked for progress (a progress
# token in the request's `_meta`); set by `ImageTools.call`.
_reporter: ContextVar[Reporter | None] = ContextVar("progress_reporter", default=None)


def validated(model: type[ModelT], payload: dict[str, Any]) -> ModelT:
    """`payload` as `model`; invalid input is the REST API's bad_request, same message."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise errors.BadRequest(describe_validation_errors(list(exc.errors()))) from None


def request_body(args: EngineArguments, body: type[ModelT]) -> ModelT:
    """The REST request body that the tool's arguments make, validated as REST does."""
    return validated(body, args.body_fields(body))


def image_bytes(value: str, field: str, max_bytes: int) -> bytes:
    """The file of a base64 image argument (or of a base64 data: URL)."""
    if value.startswith("data:"):
        header, _, value = value.partition(",")
        if not header.endswith(";base64"):
            raise errors.BadRequest(f"{field}: a data: URL must be base64-encoded")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise errors.BadRequest(f"{field}: not valid base64") from None
    check_file_size(field, data, max_bytes)
    return data


def envelope_of(exc: errors.ApiError, error_id: str | None = None) -> Error:
    """The REST API's error envelope for `exc`: {id, name, message}."""
    return Error(id=error_id or uuid.uuid4().hex, name=exc.name, message=exc.message)


def error_result(exc: errors.ApiError, error_id: str | None = None) -> CallToolResult:
    """A tool error whose text is the REST API's envelope."""
    text = envelope_of(exc, error_id).model_dump_json()
    return CallToolResult(content=[TextContent(text=text)], is_error=True)


def protocol_error(exc: errors.ApiError, code: int = REFUSED) -> MCPError:
    """A JSON-RPC error for a request (not a tool call) that fails: its message names the
    REST error, its data is the REST envelope."""
    envelope = envelope_of(exc)
    return MCPError(code=code, message=f"{exc.name}: {exc.message}", data=envelope.model_dump())


@dataclass(frozen=True)
class ToolSpec:
    """One tool: its name, what it tells the assistant, its arguments and its use case."""

    name: str
    title: str
    description: str
    arguments: type[ToolArguments]
    output: type[BaseModel]
    run: Callable[[Principal, EngineSpec | None, Any], Awaitable[CallToolResult]]
    read_only: bool = False
    task: Task | None = None  # the task whose engines the tool takes


class ImageTools:
    """The tools' use cases over one deployment's services."""

    def __init__(self, context: AppContext) -> None:
        self.context = context
        self.specs = {
            spec.name: spec
            for spec in (
                ToolSpec(
                    "generate_image_from_text",
                    "Generate an image from text",
                    "Generate images from a text prompt with a Stable Diffusion engine "
                    "(POST /v1/generation/{engine_id}/text-to-image). Returns each image as "
                    "PNG with its seed and finish reason; costs credits.",
                    TextToImageArguments,
                    GenerationResult,
                    self.generate_image_from_text,
                    task=Task.TEXT_TO_IMAGE,
                ),
                ToolSpec(
                    "transform_image",
                    "Transform an image",
                    "Make a new image from an init image and a text prompt "
                    "(POST /v1/generation/{engine_id}/image-to-image); image_strength says "
                    "how much of the init image stays. Returns PNGs with seeds; costs credits.",
                    TransformImageArguments,
                    GenerationResult,
                    self.transform_image,
                    task=Task.IMAGE_TO_IMAGE,
                ),
                ToolSpec(
                    "upscale_image",
                    "Upscale an image",
                    "Upscale an image: twice its size, or to the width or the height given "
                    "(aspect kept) (POST /v1/generation/{engine_id}/image-to-image/upscale). "
                    "Returns the PNG; costs credits.",
                    UpscaleImageArguments,
                    GenerationResult,
                    self.upscale_image,
                    task=Task.UPSCALE,
                ),
                ToolSpec(
                    "inpaint_image",
                    "Inpaint an image",
                    "Regenerate the masked part of an image from a text prompt and keep the "
                    "rest (POST /v1/generation/{engine_id}/image-to-image/masking). mask_source "
                    "MASK_IMAGE_WHITE or MASK_IMAGE_BLACK: mask_image marks the part; "
                    "INIT_IMAGE_ALPHA: the transparent pixels of init_image. Returns PNGs with "
                    "seeds; costs credits.",
                    InpaintImageArguments,
                    GenerationResult,
                    self.inpaint_image,
                    task=Task.MASKING,
                ),
                ToolSpec(
                    "list_available_models",
                    "List the available models",
                    "The engines this server runs (GET /v1/engines/list), each with the tools "
                    "that take it as engine_id. Free.",
                    ListModelsArguments,
                    ModelList,
                    self.list_available_models,
                    read_only=True,
                ),
            )
        }

    def listing(self) -> list[Tool]:
        """The tools as tools/list shows them: input and output schemas from the models; the
        description names the engines this deployment serves for the tool's task."""
        tools = []
        for spec in self.specs.values():
            description = spec.description
            if spec.task is not None:
                engines = [e.id for e in self.context.generation.engines() if spec.task in e.tasks]
                description += f" Engines: {', '.join(engines) or 'none on this server'}."
            tools.append(
                Tool(
                    name=spec.name,
                    title=spec.title,
                    description=description,
                    input_schema=tool_schema(spec.arguments),
                    output_schema=tool_schema(spec.output),
                    annotations=ToolAnnotations(
                        title=spec.title,
                        read_only_hint=spec.read_only,
                        destructive_hint=False,
                        idempotent_hint=spec.read_only,
                        open_world_hint=False,
                    ),
                )
            )
        return tools

    async def call(
        self,
        name: str,
        arguments: dict[str, Any],
        principal: Callable[[], Awaitable[Principal]],
        progress: Reporter | None = None,
    ) -> CallToolResult:
        """Run tool `name` for the caller that `principal()` authenticates; a generation's
        steps (or an upscale's tiles) go to `progress` as they are done. Every failure becomes
        a tool error carrying the envelope that REST would answer."""
        spec = self.specs[name]
        started = time.perf_counter()
        reporting = _reporter.set(progress)
        outcome = "cancelled"  # unless the call ends otherwise (its client cancelled it)
        try:
            caller = await principal()
            engine_id = arguments.get("engine_id")
            engine = None
            if spec.task is not None and isinstance(engine_id, str):
                # As the REST routes: an unknown engine, or one without the task, comes
                # before anything else in the request.
                engine = self.context.generation.engine(engine_id, spec.task)
            args = validated(spec.arguments, arguments)
            if isinstance(args, EngineArguments) and engine is None:  # not a string: now it is
                engine = self.context.generation.engine(args.engine_id, spec.task)
            result = await spec.run(caller, engine, args)
            outcome = "ok"
        except errors.ApiError as exc:
            result, outcome = error_result(exc), exc.name
        except Exception as exc:
            known = errors.outage(exc)
            if known is not None:
                result, outcome = error_result(known), known.name
            else:
                error_id = report_unexpected(exc, tool=name)
                unexpected = errors.ServerError(UNEXPECTED_MESSAGE)
                result, outcome = error_result(unexpected, error_id), unexpected.name
        finally:
            _reporter.reset(reporting)
            log.info(
                "tool call",
                extra={
                    "tool": name,
                    "outcome": outcome,
                    "ms": round((time.perf_counter() - started) * 1000, 1),
                },
            )
        return result

    async def read_image(
        self, uri: str, principal: Callable[[], Awaitable[Principal]]
    ) -> ReadResourceResult:
        """The full PNG behind a result's resource link, for its organization's keys, while
        the generation's result is kept (the REST API's GET /v1/generation/{id}). A URI that
        names no image, or one no longer kept, is Invalid Params (-32602, as MCP asks of a
        resource not found); any other refusal is REFUSED; both carry the REST envelope."""
        parsed = parse_image_uri(uri)
        try:
            caller = await principal()
            if parsed is None:
                raise errors.NotFound(f"no such resource: {uri}")
            generation_id, index = parsed
            outcome = await self.context.generation.result(caller, generation_id, png=False)
            if outcome.artifacts is None:
                raise errors.NotFound(f"generation {generation_id} has no images yet")
            if index >= len(outcome.artifacts):
                raise errors.NotFound(
                    f"generation {generation_id} has {len(outcome.artifacts)} images"
                )
        except errors.ApiError as exc:
            gone = isinstance(exc, errors.NotFound | errors.ResultExpired)
            code = INVALID_PARAMS if gone else REFUSED
            log.info("resource read", extra={"uri": uri, "outcome": exc.name})
            raise protocol_error(exc, code) from None
        png = outcome.artifacts[index].png
        log.info("resource read", extra={"uri": uri, "outcome": "ok", "bytes": len(png)})
        return ReadResourceResult(
            contents=[BlobResourceContents(uri=uri, mime_type="image/png", blob=b64(png))]
        )

    # -- the tools: arguments in, the use case, content out --------------------------------

    async def generate_image_from_text(
        self, principal: Principal, engine: EngineSpec | None, args: TextToImageArguments
    ) -> CallToolResult:
        assert engine is not None
        body = request_body(args, TextToImageRequestBody)
        outcome = await self.context.generation.text_to_image(
            principal, engine, body, self._delivery()
        )
        return self._result(engine, outcome)

    async def transform_image(
        self, principal: Principal, engine: EngineSpec | None, args: TransformImageArguments
    ) -> CallToolResult:
        assert engine is not None
        body = request_body(args, ImageToImageRequestBody)
        files = self._files(init_image=args.init_image)
        outcome = await self.context.generation.image_to_image(
            principal, engine, body, files, self._delivery()
        )
        return self._result(engine, outcome)

    async def inpaint_image(
        self, principal: Principal, engine: EngineSpec | None, args: InpaintImageArguments
    ) -> CallToolResult:
        assert engine is not None
        body = request_body(args, MaskingRequestBody)
        files = self._files(init_image=args.init_image, mask_image=args.mask_image)
        outcome = await self.context.generation.masking(
            principal, engine, body, files, self._delivery()
        )
        return self._result(engine, outcome)

    async def upscale_image(
        self, principal: Principal, engine: EngineSpec | None, args: UpscaleImageArguments
    ) -> CallToolResult:
        assert engine is not None
        body = request_body(args, UpscaleRequestBody)
        files = self._files(image=args.image)
        outcome = await self.context.generation.upscale(
            principal, engine, body, files, self._delivery()
        )
        return self._result(engine, outcome)

    async def list_available_models(
        self, _principal: Principal, _engine: EngineSpec | None, _args: ListModelsArguments
    ) -> CallToolResult:
        models = ModelList(
            models=[
                ModelInfo(
                    **wire.model_dump(),
                    tools=[t.name for t in self.specs.values() if t.task in engine.tasks],
                )
                for engine, wire in zip(
                    self.context.generation.engines(),
                    self.context.generation.engine_list(),
                    strict=True,
                )
            ]
        )
        return CallToolResult(
            content=[TextContent(text=models.model_dump_json())],
            structured_content=models.model_dump(mode="json"),
        )

    # -- shared steps ----------------------------------------------------------------------

    def _files(self, **images: str | None) -> dict[str, bytes]:
        """The base64 image arguments as the file parts REST would have (None: not given)."""
        return {
            field: image_bytes(value, field, self.context.settings.max_upload_bytes)
            for field, value in images.items()
            if value is not None
        }

    @staticmethod
    def _delivery() -> Delivery:
        """The call waits for its images (a cancelled call cancels its job, which is
        refunded), and hears each step, or upscale tile, when its caller asked."""
        report = _reporter.get()
        if report is None:
            return Delivery()
        sent = 0

        async def progress(view: GenerationStatusBody) -> None:
            # MCP asks that progress grow with each notification: a unit is sent once.
            nonlocal sent
            if view.progress.step > sent:
                sent = view.progress.step
                await report(view.progress.step, view.progress.total or None, view.status)

        return Delivery(progress=progress)

    def _result(self, engine: EngineSpec, outcome: Outcome) -> CallToolResult:
        assert outcome.artifacts is not None
        return generation_result(
            outcome.generation_id,
            engine.id,
            outcome.artifacts,
            self.context.settings.mcp_inline_bytes,
        )
