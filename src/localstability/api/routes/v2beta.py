"""POST /v2beta/stable-image/generate/ultra, core, sd3 and upscale/fast: the v2beta front door.

What it translates (stability-v2beta.md sections 1, 4 and 6): a multipart body only (anything
else is `400 content-type: must be multipart/form-data`), at most 10 MiB (`413
payload_too_large`); unknown fields and file parts (the samples' empty `none`) ignored; the
fields validated before the key is looked at (a bad field with a bad key is a 400, as the
hosted API answers); the key with or without `Bearer`. The answer: with `accept: image/*`,
`*/*` or none, the image's bytes in `output_format` with the `finish-reason`, `seed` and
`x-request-id` headers; with `application/json` first, `{image, seed, finish_reason}`. Errors
come in v2beta's `{id, name, errors}` (api/errors.py). The use case is StableImageService's.
"""

from __future__ import annotations

import base64
import io
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from localstability import errors
from localstability.api.body import limited, media_type
from localstability.api.deps import Context, authenticate
from localstability.api.errors import GENERATION_ID
from localstability.api.routes.generation import delivery
from localstability.protocol_v2beta import (
    GenerateRequest,
    ImageBody,
    OutputFormat,
    Sd3Request,
    UltraRequest,
    UpscaleFastRequest,
    V2betaFinishReason,
)
from localstability.service.generation import Outcome

router = APIRouter(prefix="/v2beta/stable-image", tags=["v2beta/stable-image"])

MAX_BODY_BYTES = 10 * 1024 * 1024
FILE_FIELDS = ("image",)
_MAX_FIELDS = 100


async def read_form(request: Request) -> tuple[dict[str, str], dict[str, bytes]]:
    """The text fields and the known file parts of a v2beta multipart body."""
    if media_type(request) != "multipart/form-data":
        raise errors.BadRequest("content-type: must be multipart/form-data")

    def too_large(_declared: int | None) -> errors.ApiError:
        return errors.PayloadTooLarge("body: payloads cannot be larger than 10MiB in size")

    form = await limited(request, MAX_BODY_BYTES, too_large).form(
        max_files=len(FILE_FIELDS) + 4, max_fields=_MAX_FIELDS
    )
    texts: dict[str, str] = {}
    files: dict[str, bytes] = {}
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name in FILE_FIELDS:
                    files[name] = await value.read()
            elif name in FILE_FIELDS:
                raise errors.BadRequest(f"{name}: must be sent as a file")
            else:
                texts[name] = value
    finally:
        await form.close()
    return texts, files


def wants_json(accept: str | None) -> bool:
    """JSON when the first media range is application/json (with any parameters)."""
    first = (accept or "").split(",")[0].split(";")[0].strip().lower()
    return first == "application/json"


def encoded(png: bytes, output_format: OutputFormat) -> bytes:
    """The image in the asked format (our artifacts are PNG)."""
    if output_format == OutputFormat.PNG:
        return png
    from PIL import Image

    image = Image.open(io.BytesIO(png))
    buffer = io.BytesIO()
    if output_format == OutputFormat.JPEG:
        image.convert("RGB").save(buffer, format="JPEG", quality=92)
    else:
        image.save(buffer, format="WEBP", quality=92)
    return buffer.getvalue()


def image_response(outcome: Outcome, output_format: OutputFormat, as_json: bool) -> Response:
    assert outcome.artifacts is not None
    [artifact] = outcome.artifacts
    data = encoded(artifact.png, output_format)
    reason = V2betaFinishReason(artifact.finish_reason.value)
    headers = {"x-request-id": outcome.generation_id, GENERATION_ID: outcome.generation_id}
    if as_json:
        body = ImageBody(
            image=base64.b64encode(data).decode("ascii"), seed=artifact.seed, finish_reason=reason
        )
        return JSONResponse(
            body.model_dump(mode="json"),
            media_type=f"application/json; type=image/{output_format.value}",
            headers=headers,
        )
    headers |= {"finish-reason": reason.value, "seed": str(artifact.seed)}
    return Response(data, media_type=f"image/{output_format.value}", headers=headers)


Body = GenerateRequest | UpscaleFastRequest


async def _generate(
    route: str,
    model: type[Body],
    request: Request,
    context: Context,
    authorization: str | None,
    organization: str | None,
    accept: str | None,
) -> Response:
    texts, files = await read_form(request)
    body = model.model_validate(texts)  # 400 before 401, as the hosted API answers
    image = files.get("image")
    if isinstance(body, UpscaleFastRequest) and image is None:
        raise errors.BadRequest("image: required")
    principal = authenticate(request, context, authorization, organization)
    how, max_pixels = delivery(request, png=True), context.settings.max_upload_pixels
    service = context.stable_image
    if isinstance(body, UpscaleFastRequest):
        assert image is not None
        outcome = await service.upscale_fast(principal, image, how, max_pixels)
    else:
        assert isinstance(body, GenerateRequest)
        outcome = await service.generate(principal, route, body, image, how, max_pixels)
    return image_response(outcome, body.output_format, wants_json(accept))


def _schema(model: type[BaseModel], files: tuple[str, ...] = ()) -> dict[str, Any]:
    binary = {"type": "string", "format": "binary"}
    parts = {"type": "object", "properties": dict.fromkeys(files, binary)}
    schema = {"allOf": [{"$ref": f"#/components/schemas/{model.__name__}"}, parts]}
    return {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    }


RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The image (accept: image/* or none) or {image, seed, finish_reason}",
        "content": {
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/webp": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": {"$ref": "#/components/schemas/ImageBody"}},
        },
    }
}
Optional = Annotated[str | None, Header()]


def _endpoint(path: str, model: type[Body], summary: str) -> None:
    """POST /v2beta/stable-image/<path>, its body `model`."""
    route = path.rsplit("/", 1)[-1]

    async def generate(
        request: Request,
        context: Context,
        authorization: Optional = None,
        organization: Optional = None,
        accept: Optional = None,
    ) -> Response:
        args = (request, context, authorization, organization, accept)
        return await _generate(route, model, *args)

    files = () if model is GenerateRequest else FILE_FIELDS  # core takes no image
    router.add_api_route(
        f"/{path}",
        generate,
        methods=["POST"],
        name=path.replace("/", "_"),
        summary=summary,
        response_class=Response,
        responses=RESPONSES,
        openapi_extra=_schema(model, files),
    )


_endpoint(
    "generate/ultra",
    UltraRequest,
    "Ultra: served by SD 3.5 Large (no open Ultra); with image and strength, image-to-image",
)
_endpoint(
    "generate/core", GenerateRequest, "Core: served by SDXL 1.0 at Core's sizes (no open Core)"
)
_endpoint(
    "generate/sd3",
    Sd3Request,
    "Stable Diffusion 3.5 (Large, Large Turbo, Medium; Flash and the sd3-* names mapped)",
)
_endpoint("upscale/fast", UpscaleFastRequest, "Fast upscale: Real-ESRGAN, 4x the input")
