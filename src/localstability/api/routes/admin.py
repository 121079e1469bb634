"""The admin HTTP API (/admin/v1): an extension, off unless `admin_key` is set.

It serves the AdminService that the CLI uses: users, organizations, members, credit grants,
the ledger, generation records and API keys. Errors come in the v1 envelope.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query
from pydantic import BaseModel, Field

from localstability import errors
from localstability.api.deps import Context
from localstability.jobs.base import ClusterInfo
from localstability.protocol import AccountResponseBody, WireModel
from localstability.safety.settings import PromptFilterMode
from localstability.service.accounts import bearer_token
from localstability.service.admin import (
    AdminService,
    GenerationInfo,
    KeyInfo,
    LedgerEntryInfo,
    LedgerInfo,
    MemberInfo,
    NewKey,
    OrganizationInfo,
)
from localstability.store.ledger import MAX_MICROS, credits

router = APIRouter(prefix="/admin/v1", tags=["admin (extension)"])


def admin_service(
    context: Context, authorization: Annotated[str | None, Header()] = None
) -> AdminService:
    """The AdminService, for a request that carries the admin key."""
    admin_key = context.settings.admin_key
    if admin_key is None:
        raise errors.NotFound("the admin API is off: set admin_key (LOCALSTABILITY_ADMIN_KEY)")
    key = bearer_token(authorization)
    if not hmac.compare_digest(key.encode(), admin_key.get_secret_value().encode()):
        raise errors.Unauthorized("invalid admin key")
    return context.admin


Admin = Annotated[AdminService, Depends(admin_service)]
MAX_CREDITS = credits(MAX_MICROS)
Limit = Annotated[int, Query(ge=1, le=10_000)]


class NewUser(WireModel):
    email: str
    organization_id: str | None = Field(
        None, description="Join this organization; unset: a new organization of their own."
    )
    role: str = "MEMBER"
    profile_picture: str | None = None


class NewOrganization(WireModel):
    name: str = Field(min_length=1, max_length=200)
    credits: float = Field(0.0, ge=0, le=MAX_CREDITS)


class OrganizationUpdate(WireModel):
    prompt_filter: PromptFilterMode | None = Field(
        description="The organization's own prompt filter: off, warn or block; null: the "
        "deployment's (safety.prompt_filter)."
    )


class NewMember(WireModel):
    email: str
    role: str = "MEMBER"
    is_default: bool = False


class Grant(WireModel):
    credits: float = Field(
        ge=-MAX_CREDITS, le=MAX_CREDITS, description="Credits to add; negative takes them away."
    )
    note: str | None = Field(None, max_length=500)


class KeyRequest(WireModel):
    email: str
    credits: float = Field(
        0.0, ge=0, le=MAX_CREDITS, description="Granted to a new user's own organization."
    )


class Revoked(BaseModel):
    revoked: int


@router.get("/users")
def list_users(admin: Admin) -> list[AccountResponseBody]:
    return admin.users()


@router.post("/users", status_code=201)
def create_user(admin: Admin, body: NewUser) -> AccountResponseBody:
    return admin.create_user(body.email, body.organization_id, body.role, body.profile_picture)


@router.get("/organizations")
def list_organizations(admin: Admin) -> list[OrganizationInfo]:
    return admin.organizations()


@router.post("/organizations", status_code=201)
def create_organization(admin: Admin, body: NewOrganization) -> OrganizationInfo:
    return admin.create_organization(body.name, body.credits)


@router.patch("/organizations/{organization_id}")
def update_organization(
    admin: Admin, organization_id: str, body: OrganizationUpdate
) -> OrganizationInfo:
    return admin.set_prompt_filter(organization_id, body.prompt_filter)


@router.post("/organizations/{organization_id}/members")
def add_member(admin: Admin, organization_id: str, body: NewMember) -> MemberInfo:
    return admin.add_member(organization_id, body.email, body.role, body.is_default)


@router.post("/organizations/{organization_id}/grants", status_code=201)
def grant(admin: Admin, organization_id: str, body: Grant) -> LedgerEntryInfo:
    return admin.grant(organization_id, body.credits, body.note)


@router.get("/organizations/{organization_id}/ledger")
def show_ledger(admin: Admin, organization_id: str, limit: Limit = 50) -> LedgerInfo:
    return admin.ledger(organization_id, limit)


@router.get("/organizations/{organization_id}/generations")
def list_generations(admin: Admin, organization_id: str, limit: Limit = 20) -> list[GenerationInfo]:
    return admin.generations(organization_id, limit)


@router.get("/cluster")
async def cluster(_admin: Admin, context: Context) -> ClusterInfo:
    """The processes that run generations (workers, with their engines and the generations
    they run) and each engine's queue."""
    return await context.generation.cluster()


@router.get("/keys")
def list_keys(admin: Admin, email: str | None = None) -> list[KeyInfo]:
    return admin.keys(email)


@router.post("/keys", status_code=201)
def create_key(admin: Admin, body: KeyRequest) -> NewKey:
    return admin.create_key(body.email, body.credits)


@router.delete("/keys/{prefix}")
def revoke_key(admin: Admin, prefix: str) -> Revoked:
    count = admin.revoke_key(prefix)
    if not count:
        raise errors.NotFound(f"no active key with prefix {prefix}")
    return Revoked(revoked=count)
