"""POST /v1/generation/{engine_id}/text-to-image, image-to-image and image-to-image/masking."""

from __future__ import annotations

import base64
import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

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
from localstability.api.multipart import parse_fields, read_multipart
from localstability.engines import Task
from localstability.jobs.base import JobSpec
from localstability.protocol import (
    GenerationResponse,
    GenerationStatusBody,
    Image,
    ImageToImageRequestBody,
    MaskingRequestBody,
    TextToImageRequestBody,
    UpscaleRequestBody,
)
from localstability.service.artifacts import Artifact
from localstability.store.accounts import Principal

router = APIRouter(tags=["v1/generation"])

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
    """JSON {"artifacts": [...]} or, for Accept: image/png, the PNG with Seed and Finish-Reason."""
    if png:
        if len(artifacts) > 1:
            raise errors.InvalidSamples(
                f"this generation made {len(artifacts)} images; use Accept: application/json"
            )
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


GENERATION_ID = "Generation-Id"
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


async def run_generation(
    request: Request, context: AppContext, spec: JobSpec, png: bool
) -> Response:
    """Submit the job; answer 202 at once (Prefer: respond-async) or wait for its images."""
    spec.id = requested_id(request)
    job = await context.jobs.submit(spec)
    headers = {GENERATION_ID: job.id}
    if prefers_async(request):
        return JSONResponse(
            context.jobs.view(job).as_json(),
            status_code=202,
            headers={
                **headers,
                "Location": f"/v1/generation/{job.id}",
                "Preference-Applied": "respond-async",
            },
        )
    try:
        artifacts = await context.jobs.wait(job, lambda: client_gone(request))
    except errors.ApiError as exc:
        exc.headers = {**exc.headers, **headers}
        raise
    return artifacts_response(artifacts, png, headers)


async def client_gone(request: Request) -> None:
    """Return when the client disconnects. The body has been read by now, so the server's
    next message is the disconnect: no polling."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


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
    context.generation.engine(engine_id, Task.TEXT_TO_IMAGE)
    body = await parse_json_body(request, TextToImageRequestBody)
    spec = await context.generation.text_to_image(principal, engine_id, body, png_response=png)
    return await run_generation(request, context, spec, png)


async def _multipart_generation(
    principal: Principal,
    request: Request,
    engine_id: str,
    accept: str | None,
    task: Task,
    model: type[BaseModel],
    file_fields: tuple[str, ...],
    prepare: Callable[..., Awaitable[JobSpec]],
    context: AppContext,
) -> Response:
    """The shape every multipart endpoint shares: engine check, form, fields, run, response."""
    png = wants_png(accept)
    # An unknown engine, or one that can't do the task, is refused before the body is read.
    context.generation.engine(engine_id, task)
    form = await read_multipart(request, file_fields, context.settings.max_upload_bytes)
    body = parse_fields(form, model)
    spec = await prepare(principal, engine_id, body, form.files, png_response=png)
    return await run_generation(request, context, spec, png)


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
