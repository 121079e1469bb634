"""Dependencies of the routes: the application context, authentication, Accept parsing."""

from __future__ import annotations

import json
from typing import Annotated, TypeVar

from fastapi import Depends, Header, Request
from pydantic import BaseModel

from localstability import errors
from localstability.api.body import limited, media_type
from localstability.context import AppContext
from localstability.store.accounts import Principal

ModelT = TypeVar("ModelT", bound=BaseModel)


def get_context(request: Request) -> AppContext:
    context: AppContext = request.app.state.context
    return context


Context = Annotated[AppContext, Depends(get_context)]


def authenticate(
    request: Request,
    context: Context,
    authorization: Annotated[str | None, Header()] = None,
    organization: Annotated[str | None, Header()] = None,
) -> Principal:
    """The caller, from a Bearer (or bare) API key; Organization picks who is billed."""
    principal = context.accounts.authenticate(authorization, organization)
    request.state.organization_id = principal.organization_id  # for the access log
    return principal


def authenticate_user(
    request: Request, context: Context, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    """For /v1/user/account, which takes no Organization header."""
    principal = context.accounts.authenticate(authorization, None)
    request.state.organization_id = principal.organization_id
    return principal


CurrentPrincipal = Annotated[Principal, Depends(authenticate)]
CurrentUser = Annotated[Principal, Depends(authenticate_user)]


def wants_png(accept: str | None) -> bool:
    """image/png when the client prefers it; a missing Accept, */* or JSON give JSON."""
    if not accept:
        return False
    ranked = []
    for position, part in enumerate(accept.split(",")):
        media, *params = (item.strip() for item in part.split(";"))
        quality = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    quality = float(param[2:])
                except ValueError:
                    quality = 0.0
        if quality > 0:  # q=0 means "not acceptable" (RFC 9110)
            ranked.append((-quality, position, media.lower()))
    ranked.sort()
    for _, _, media in ranked:
        if media == "image/png":
            return True
        if media in ("application/json", "*/*", "application/*"):
            return False
    return False


# The largest JSON body read: ample for prompts of 2,000 characters, like the 1 MiB that
# multipart bodies allow their text parts.
MAX_JSON_BODY_BYTES = 1024 * 1024


def _json_body_too_large(_declared: int | None) -> errors.BadRequest:
    return errors.BadRequest(
        f"the request body is larger than the limit of {MAX_JSON_BODY_BYTES:,} bytes "
        "for a JSON body"
    )


async def parse_json_body(request: Request, model: type[ModelT]) -> ModelT:
    """The body as `model`, read after authentication so a bad key is told first."""
    media = media_type(request, "application/json")
    if media != "application/json":
        raise errors.BadRequest(
            f"Content-Type must be application/json for this endpoint, not {media!r}"
        )
    raw = await limited(request, MAX_JSON_BODY_BYTES, _json_body_too_large).body()
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise errors.BadRequest(f"the request body is not valid JSON: {exc}") from None
    except (ValueError, RecursionError):
        # Python's own limits: an integer of over 4,300 digits, nesting deeper than the stack.
        raise errors.BadRequest(
            "the request body is JSON this server does not read: a number with too many "
            "digits or arrays and objects nested too deep"
        ) from None
    if not isinstance(payload, dict):
        raise errors.BadRequest("the request body must be a JSON object")
    return model.model_validate(payload)
