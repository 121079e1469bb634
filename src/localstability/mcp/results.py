"""A generation's images as MCP content: inline PNGs while they fit, else previews and links.

MCP clients take a tool result as one message, and some refuse large ones: the Python SDK's
2.x clients drop any server-sent event over 1 MiB by default, and a 1024x1024 PNG is often
three times that. So a result carries its PNGs inline only while their base64 fits the
deployment's `mcp_inline_bytes`; past it, each image comes as a small JPEG preview and a
`resource_link` to the full PNG, which `resources/read` answers (as one JSON body over HTTP,
which no client limits) for as long as the generation's results are kept.
"""

from __future__ import annotations

import base64
import io
import re

from mcp_types import CallToolResult, ContentBlock, ImageContent, ResourceLink, TextContent
from PIL import Image

from localstability.jobs.artifacts import Artifact
from localstability.mcp.protocol import ArtifactInfo, GenerationResult

# The full PNG of a generation's image `index` (from 0, in the order of the artifacts).
URI_TEMPLATE = "localstability://generations/{generation_id}/images/{index}.png"
_URI = re.compile(r"localstability://generations/([0-9A-Za-z_-]{1,64})/images/(\d{1,2})\.png")

# A preview's longest side at most, and the least worth sending.
PREVIEW_SIDE = 512
SMALLEST_PREVIEW_SIDE = 64
PREVIEW_QUALITY = 80


def image_uri(generation_id: str, index: int) -> str:
    """The resource URI of the full PNG of image `index` of a generation."""
    return URI_TEMPLATE.format(generation_id=generation_id, index=index)


def parse_image_uri(uri: str) -> tuple[str, int] | None:
    """The generation id and image index of a URI that `image_uri` makes, else None."""
    match = _URI.fullmatch(uri)
    return (match.group(1), int(match.group(2))) if match else None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def preview(png: bytes, budget: int) -> str | None:
    """A JPEG of the image whose base64 fits `budget` characters, as large as allows (its
    longest side at most PREVIEW_SIDE); None when even a thumbnail would not fit."""
    with Image.open(io.BytesIO(png)) as opened:
        image = opened.convert("RGB")
    side = min(PREVIEW_SIDE, max(image.size))
    while side >= SMALLEST_PREVIEW_SIDE:
        small = image.copy()
        small.thumbnail((side, side), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        small.save(out, "JPEG", quality=PREVIEW_QUALITY)
        encoded = b64(out.getvalue())
        if len(encoded) <= budget:
            return encoded
        side = side * 3 // 4
    return None


def generation_result(
    generation_id: str, engine_id: str, artifacts: list[Artifact], inline_bytes: int
) -> CallToolResult:
    """The images (inline PNGs, or previews and links), then their seeds, finish reasons and
    URIs as structured content (and the same JSON as text)."""
    encoded = [b64(artifact.png) for artifact in artifacts]
    inline = sum(len(data) for data in encoded) <= inline_bytes
    content: list[ContentBlock] = []
    infos = []
    for index, (artifact, data) in enumerate(zip(artifacts, encoded, strict=True)):
        uri = image_uri(generation_id, index)
        if inline:
            content.append(ImageContent(data=data, mime_type="image/png"))
        else:
            small = preview(artifact.png, inline_bytes // len(artifacts))
            if small is not None:
                content.append(ImageContent(data=small, mime_type="image/jpeg"))
            content.append(
                ResourceLink(
                    uri=uri,
                    name=f"{generation_id}-{index}.png",
                    title=f"Image {index + 1} of generation {generation_id}, full size",
                    description="The full-size PNG: read it with resources/read while the "
                    "generation's results are kept.",
                    mime_type="image/png",
                    size=len(artifact.png),
                )
            )
        infos.append(
            ArtifactInfo(
                seed=artifact.seed,
                finishReason=artifact.finish_reason,
                uri=uri,
                preview=not inline,
            )
        )
    result = GenerationResult(generation_id=generation_id, engine_id=engine_id, artifacts=infos)
    content.append(TextContent(text=result.model_dump_json()))
    return CallToolResult(content=content, structured_content=result.model_dump(mode="json"))
