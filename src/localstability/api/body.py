"""Request bodies read up to a byte limit, whether they declare their length or come chunked."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request
from starlette.types import Message

from localstability import errors

# Builds the refusal: given the declared Content-Length, or None when the body came chunked and
# went past the limit while it was read.
Refusal = Callable[[int | None], errors.ApiError]


def media_type(request: Request, default: str = "") -> str:
    """The request's Content-Type without its parameters, lower case (`default` if absent)."""
    return request.headers.get("content-type", default).split(";")[0].strip().lower()


def limited(request: Request, limit: int, refusal: Refusal) -> Request:
    """`request` whose body may be at most `limit` bytes.

    A body that declares more is refused before it is read; a chunked one (no Content-Length)
    as soon as more than `limit` bytes have arrived, so nothing past the limit is parsed, or
    spooled to disk by the multipart parser. The refusal closes the connection
    (`Connection: close`), so the server does not take in the rest either.
    """
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _closing(refusal(int(declared)))
    received = 0
    upstream = request.receive

    async def receive() -> Message:
        nonlocal received
        message = await upstream()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _closing(refusal(None))
        return message

    return Request(request.scope, receive)


def _closing(exc: errors.ApiError) -> errors.ApiError:
    exc.headers = {**exc.headers, "Connection": "close"}
    return exc
