"""Multipart bodies of the image endpoints: text fields to a wire model, file parts to bytes.

`text_prompts[<index>][text|weight]` may use any integer indexes, in any order; a later field
for the same index and key overrides an earlier one (the spec's rule). `extras[key]` fields
form the `extras` object. Our `loras` extension folds the same way as the prompts:
`loras[<index>][name|weight]`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from localstability import errors
from localstability.api.body import limited, media_type
from localstability.service.images import check_file_size

ModelT = TypeVar("ModelT", bound=BaseModel)

_LIST_FIELDS = {"text_prompts": ("text", "weight"), "loras": ("name", "weight")}
_LIST_FIELD = re.compile(r"(text_prompts|loras)\[(-?[0-9]+)\]\[([a-z]+)\]")
_EXTRAS_FIELD = re.compile(r"^extras\[([^\]]+)\]$")
_MAX_FIELDS = 200


@dataclass
class MultipartBody:
    """The text fields (already folded into a model's shape) and the raw file parts."""

    fields: dict[str, Any]
    files: dict[str, bytes]


def fold_fields(items: list[tuple[str, str]]) -> dict[str, Any]:
    """Turn flat multipart text fields into the nested shape of the JSON wire models."""
    lists: dict[str, dict[int, dict[str, str]]] = {}
    extras: dict[str, str] = {}
    fields: dict[str, Any] = {}
    for name, value in items:
        match = _LIST_FIELD.fullmatch(name)
        if match and match.group(3) in _LIST_FIELDS[match.group(1)]:
            entries = lists.setdefault(match.group(1), {})
            entries.setdefault(int(match.group(2)), {})[match.group(3)] = value
        elif match := _EXTRAS_FIELD.match(name):
            extras[match.group(1)] = value
        elif list_name := next((n for n in _LIST_FIELDS if name.startswith(n)), None):
            first, second = _LIST_FIELDS[list_name]
            raise errors.BadRequest(
                f"{name}: {list_name} are sent as {list_name}[<index>][{first}] and "
                f"{list_name}[<index>][{second}]"
            )
        else:
            fields[name] = value
    for list_name, entries in lists.items():
        fields[list_name] = [entries[index] for index in sorted(entries)]
    if extras:
        fields["extras"] = extras
    return fields


async def read_multipart(
    request: Request, file_fields: tuple[str, ...], max_file_bytes: int
) -> MultipartBody:
    """Read a multipart/form-data body; file parts over `max_file_bytes` are refused."""
    media = media_type(request)
    if media != "multipart/form-data":
        raise errors.BadRequest(
            "Content-Type must be multipart/form-data for this endpoint, "
            f"not {media or 'missing'!r}"
        )
    body_limit = len(file_fields) * max_file_bytes + 1024 * 1024

    def too_large(declared: int | None) -> errors.ApiError:
        size = f"{declared:,} bytes" if declared else f"over {body_limit:,} bytes"
        return errors.InvalidFileSize(
            f"the request body is {size}; each image may be at most {max_file_bytes:,} bytes"
        )

    request = limited(request, body_limit, too_large)
    form = await request.form(max_files=len(file_fields) + 2, max_fields=_MAX_FIELDS)
    texts: list[tuple[str, str]] = []
    files: dict[str, bytes] = {}
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name not in file_fields:
                    raise errors.BadRequest(f"{name}: unexpected file part")
                data = await value.read(max_file_bytes + 1)
                check_file_size(name, data, max_file_bytes)
                files[name] = data
            elif name in file_fields:
                raise errors.BadRequest(f"{name}: must be sent as a file part")
            else:
                texts.append((name, value))
    finally:
        await form.close()
    return MultipartBody(fold_fields(texts), files)


def parse_fields(body: MultipartBody, model: type[ModelT]) -> ModelT:
    """Validate the folded text fields as `model` (a pydantic ValidationError is a 400)."""
    return model.model_validate(body.fields)
