"""POST /v1/generation/{engine_id}/text-to-image, image-to-image and image-to-image/masking."""

from __future__ import annotations

import base64
import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from localstability import errors
from localstability.api.deps import (
    AppContext,
    Context,
    CurrentPrincipal,
    parse_json_body,
    wants_png,
)
from localstability.api.errors import GENERATION_ID
from localstability.api.multipart import parse_fields, read_multipart
from localstability.engines import Task
from localstability.jobs.artifacts import Artifact
from localstability.protocol import (
    GenerationResponse,
    GenerationStatusBody,
    Image,
    ImageToImageRequestBody,
    MaskingRequestBody,
    TextToImageRequestBody,
    UpscaleRequestBody,
)
from localstability.service.generation import Delivery, Outcome
from localstability.store.accounts import Principal

router = APIRouter(tags=["v1/generation"])

BodyT = TypeVar("BodyT", bound=BaseModel)

GENERATION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "One artifact per sample (JSON), or the raw PNG with Accept: image/png",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/GenerationResponse"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    202: {
        "description": "Accepted (extension): with Prefer: respond-async, or while the "
        "generation is queued or running (GET /v1/generation/{id})",
        "model": GenerationStatusBody,
    },
}


def _json_body_schema(name: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
        }
    }


def _multipart_body_schema(
    name: str, files: tuple[str, ...], required: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """A multipart body: the model's fields as text parts, plus binary file parts (all
    required unless `required` names fewer)."""
    binary = {"type": "string", "format": "binary"}
    parts = {
        "type": "object",
        "properties": dict.fromkeys(files, binary),
        "required": list(files if required is None else required),
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"allOf": [{"$ref": f"#/components/schemas/{name}"}, parts]}
                }
            },
        }
    }


def artifacts_response(
    artifacts: list[Artifact], png: bool, headers: dict[str, str] | None = None
) -> Response:
    """JSON {"artifacts": [...]} or, for Accept: image/png, the PNG with Seed and Finish-Reason
    (the service has made sure that there is one image)."""
    if png:
        artifact = artifacts[0]
        return Response(
            content=artifact.png,
            media_type="image/png",
            headers={
                **(headers or {}),
                "Finish-Reason": artifact.finish_reason.value,
                "Seed": str(artifact.seed),
            },
        )
    body = GenerationResponse(
        artifacts=[
            Image(
                base64=base64.b64encode(a.png).decode("ascii"),
                seed=a.seed,
                finishReason=a.finish_reason,
            )
            for a in artifacts
        ]
    )
    return JSONResponse(body.model_dump(mode="json"), headers=headers)


def status_response(status: GenerationStatusBody, headers: dict[str, str]) -> JSONResponse:
    """202 and the generation's status body, while it is queued or running."""
    return JSONResponse(status.model_dump(exclude_none=True), status_code=202, headers=headers)


def outcome_response(outcome: Outcome, png: bool, asked_async: bool = False) -> Response:
    """The answer for a generation: its status (202) or its images."""
    headers = {GENERATION_ID: outcome.generation_id}
    if outcome.status is not None:
        if asked_async:
            headers |= {
                "Location": f"/v1/generation/{outcome.generation_id}",
                "Preference-Applied": "respond-async",
            }
        return status_response(outcome.status, headers)
    assert outcome.artifacts is not None
    return artifacts_response(outcome.artifacts, png, headers)


_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{7,63}")


def requested_id(request: Request) -> str | None:
    """The client's own id for the generation (Generation-Id request header), if any."""
    value = request.headers.get(GENERATION_ID)
    if value is None:
        return None
    if not _ID.fullmatch(value):
        raise errors.BadRequest(
            f"{GENERATION_ID}: 8 to 64 characters of letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return value


def prefers_async(request: Request) -> bool:
    """Prefer: respond-async (RFC 7240), among any other preferences."""
    for header in request.headers.getlist("prefer"):
        for preference in header.split(","):
            if preference.split(";")[0].strip().lower() == "respond-async":
                return True
    return False


def delivery(request: Request, png: bool) -> Delivery:
    """How this request takes its generation: the headers' choices."""

    async def client_gone() -> None:
        # The body has been read by now, so the server's next message is the disconnect:
        # no polling.
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return Delivery(
        png=png,
        respond_async=prefers_async(request),
        generation_id=requested_id(request),
        disconnected=client_gone,
    )


@router.post(
    "/v1/generation/{engine_id}/text-to-image",
    responses=GENERATION_RESPONSES,
    openapi_extra=_json_body_schema("TextToImageRequestBody"),
    response_class=Response,
)
async def text_to_image(
    engine_id: str,
    request: Request,
    context: Context,
    principal: CurrentPrincipal,
    accept: Annotated[str | None, Header()] = None,
) -> Response:
    """Generate images from text prompts."""
    png = wants_png(accept)
    # An unknown engine, or one that can't do the task, is refused before the body is read.
    engine = context.generation.engine(engine_id, Task.TEXT_TO_IMAGE)
    body = _noted(request, context, await parse_json_body(request, TextToImageRequestBody))
    how = delivery(request, png)
    outcome = await context.generation.text_to_image(principal, engine, body, how)
    return outcome_response(_logged(request, outcome), png, how.respond_async)


def _noted(request: Request, context: AppContext, body: BodyT) -> BodyT:
    """With `log_prompts` on, the access log carries the request's text prompts."""
    prompts = getattr(body, "text_prompts", None)
    if context.settings.log_prompts and prompts:
        request.state.prompts = [{"text": p.text, "weight": p.weight} for p in prompts]
    return body


def _logged(request: Request, outcome: Outcome) -> Outcome:
    """Tell the access log (api/app.py RequestLog) how long the generation waited and ran."""
    request.state.queue_wait_s = outcome.queue_wait_s
    request.state.inference_s = outcome.inference_s
    return outcome


async def _multipart_generation(
    principal: Principal,
    request: Request,
    engine_id: str,
    accept: str | None,
    task: Task,
    model: type[BaseModel],
    file_fields: tuple[str, ...],
    generate: Callable[..., Awaitable[Outcome]],
    context: AppContext,
) -> Response:
    """The shape every multipart endpoint shares: engine check, form, fields, use case."""
    png = wants_png(accept)
    # An unknown engine, or one that can't do the task, is refused before the body is read.
    engine = context.generation.engine(engine_id, task)
    form = await read_multipart(request, file_fields, context.settings.max_upload_bytes)
    body = _noted(request, context, parse_fields(form, model))
    how = delivery(request, png)
    outcome = await generate(principal, engine, body, form.files, how)
    return outcome_response(_logged(request, outcome), png, how.respond_async)


@router.post(
    "/v1/generation/{engine_id}/image-to-image",
    responses=GENERATION_RESPONSES,
    openapi_extra=_multipart_body_schema("ImageToImageRequestBody", ("init_image",)),
    response_class=Response,
)
async def image_to_image(
    engine_id: str,
    request: Request,
    context: Context,
    principal: CurrentPrincipal,
    accept: Annotated[str | None, Header()] = None,
) -> Response:
    """Generate images from an init image and text prompts (multipart/form-data)."""
    return await _multipart_generation(
        principal,
        request,
        engine_id,
        accept,
        Task.IMAGE_TO_IMAGE,
        ImageToImageRequestBody,
        ("init_image",),
        context.generation.image_to_image,
        context,
    )


@router.post(
    "/v1/generation/{engine_id}/image-to-image/masking",
    responses=GENERATION_RESPONSES,
    # mask_image is required unless mask_source is INIT_IMAGE_ALPHA.
    openapi_extra=_multipart_body_schema(
        "MaskingRequestBody", ("init_image", "mask_image"), required=("init_image",)
    ),
    response_class=Response,
)
async def masking(
    engine_id: str,
    request: Request,
    context: Context,
    principal: CurrentPrincipal,
    accept: Annotated[str | None, Header()] = None,
) -> Response:
    """Regenerate the masked part of an init image (multipart/form-data)."""
    return await _multipart_generation(
        principal,
        request,
        engine_id,
        accept,
        Task.MASKING,
        MaskingRequestBody,
        ("init_image", "mask_image"),
        context.generation.masking,
        context,
    )


@router.post(
    "/v1/generation/{engine_id}/image-to-image/upscale",
    responses=GENERATION_RESPONSES,
    openapi_extra=_multipart_body_schema("UpscaleRequestBody", ("image",)),
    response_class=Response,
)
async def upscale(
    engine_id: str,
    request: Request,
    context: Context,
    principal: CurrentPrincipal,
    accept: Annotated[str | None, Header()] = None,
) -> Response:
    """Upscale an image with Real-ESRGAN or the x4 latent upscaler (multipart/form-data)."""
    return await _multipart_generation(
        principal,
        request,
        engine_id,
        accept,
        Task.UPSCALE,
        UpscaleRequestBody,
        ("image",),
        context.generation.upscale,
        context,
    )
