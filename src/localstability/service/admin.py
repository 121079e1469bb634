"""Administration use cases, shared by the CLI and the admin HTTP API (/admin/v1).

Users, organizations and their members, credit grants, the ledger, generation records and
API keys. Each call is one transaction; results are pydantic models, so the CLI's --json and
the HTTP API print the same shapes.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field
from sqlalchemy import select

from localstability.protocol import AccountResponseBody
from localstability.safety.settings import PromptFilterMode
from localstability.service.accounts import account_of
from localstability.service.billing import Billing
from localstability.store import accounts, ledger
from localstability.store.db import Database
from localstability.store.models import Generation, LedgerEntry, Organization


class MemberInfo(BaseModel):
    user_id: str
    email: str
    role: str
    is_default: bool


class OrganizationInfo(BaseModel):
    id: str
    name: str
    credits: float = Field(description="What the organization may spend now.")
    reserved: float = Field(description="What its running generations hold.")
    members: list[MemberInfo]
    prompt_filter: PromptFilterMode | None = Field(
        None, description="Its own prompt filter (off, warn, block); null: the deployment's."
    )


class LedgerEntryInfo(BaseModel):
    id: int
    created_at: datetime
    kind: str
    credits: float
    balance_after: float
    generation_id: str | None
    actor: str | None
    note: str | None


class LedgerInfo(BaseModel):
    organization_id: str
    credits: float
    reserved: float
    adds_up: bool = Field(description="The balances equal the sums of the ledger entries.")
    entries: list[LedgerEntryInfo]


class GenerationInfo(BaseModel):
    id: str
    created_at: datetime
    engine_id: str
    task: str
    status: str
    credits: float
    seconds: float | None = Field(description="Run time, from start to end.")
    finish_reasons: list[str] | None
    error: str | None = Field(description="How it failed: the error's name, then its message.")
    error_name: str | None = Field(description="The error envelope's name, e.g. server_error.")
    batch_size: int | None = Field(
        description="Generations that ran in one pipeline call with it, itself included."
    )
    content_filter: list[str | None] | None = Field(
        None,
        description="For each image the output filter blurred, what it found (e.g. "
        "'nudenet: FACE_FEMALE 0.72'); null for the others, and when it blurred none.",
    )


class KeyInfo(BaseModel):
    """What an administrator may see of a key: never the key itself."""

    prefix: str
    email: str
    created_at: str
    last_used_at: str | None
    revoked: bool


class NewKey(BaseModel):
    key: str = Field(description="Shown this once; only its hash is stored.")
    user_id: str
    organization_id: str


def _organization_info(org: Organization) -> OrganizationInfo:
    return OrganizationInfo(
        id=org.id,
        name=org.name,
        credits=ledger.credits(org.balance),
        reserved=ledger.credits(org.reserved),
        members=[
            MemberInfo(user_id=m.user_id, email=m.user.email, role=m.role, is_default=m.is_default)
            for m in org.memberships
        ],
        prompt_filter=org.prompt_filter,
    )


def _entry_info(entry: LedgerEntry) -> LedgerEntryInfo:
    return LedgerEntryInfo(
        id=entry.id,
        created_at=entry.created_at,
        kind=entry.kind.value,
        credits=ledger.credits(entry.amount),
        balance_after=ledger.credits(entry.balance_after),
        generation_id=entry.generation_id,
        actor=entry.actor,
        note=entry.note,
    )


class AdminService:
    def __init__(self, database: Database, actor: str) -> None:
        self.database = database
        self.actor = actor  # who the ledger names for grants: "cli", "admin-api"

    def create_user(
        self,
        email: str,
        organization_id: str | None = None,
        role: str = "MEMBER",
        profile_picture: str | None = None,
    ) -> AccountResponseBody:
        """A user without a key; with no organization given, one of their own (as OWNER)."""
        with self.database.session.begin() as session:
            user, _ = accounts.add_user_with_organization(
                session,
                email,
                organization_id=organization_id,
                role=role,
                profile_picture=profile_picture,
            )
            session.refresh(user)
            return account_of(user)

    def users(self) -> list[AccountResponseBody]:
        with self.database.session() as session:
            return [account_of(user) for user in accounts.list_users(session)]

    def create_organization(self, name: str, credits: float = 0.0) -> OrganizationInfo:
        with self.database.session.begin() as session:
            org = accounts.create_organization(session, name)
            if credits:
                ledger.grant(
                    session, org.id, ledger.micros(credits), actor=self.actor, note="created"
                )
            session.refresh(org)
            return _organization_info(org)

    def organizations(self) -> list[OrganizationInfo]:
        with self.database.session() as session:
            return [_organization_info(org) for org in accounts.list_organizations(session)]

    def set_prompt_filter(
        self, organization_id: str, mode: PromptFilterMode | None
    ) -> OrganizationInfo:
        """The organization's own prompt filter mode (None: the deployment's). Servers see
        it at the organization's next request."""
        with self.database.session.begin() as session:
            org = ledger.organization(session, organization_id)
            org.prompt_filter = mode.value if mode else None
            session.flush()
            return _organization_info(org)

    def add_member(
        self, organization_id: str, email: str, role: str = "MEMBER", default: bool = False
    ) -> MemberInfo:
        with self.database.session.begin() as session:
            membership = accounts.add_member(session, email, organization_id, role, default)
            return MemberInfo(
                user_id=membership.user_id,
                email=email,
                role=membership.role,
                is_default=membership.is_default,
            )

    def grant(self, organization_id: str, credits: float, note: str | None) -> LedgerEntryInfo:
        with self.database.session.begin() as session:
            entry = ledger.grant(
                session, organization_id, ledger.micros(credits), actor=self.actor, note=note
            )
            session.flush()
            return _entry_info(entry)

    def ledger(self, organization_id: str, limit: int = 50) -> LedgerInfo:
        with self.database.session() as session:
            check = ledger.audit(session, organization_id)
            return LedgerInfo(
                organization_id=organization_id,
                credits=ledger.credits(check.balance),
                reserved=ledger.credits(check.reserved),
                adds_up=check.adds_up,
                entries=[_entry_info(e) for e in ledger.entries(session, organization_id, limit)],
            )

    def generations(self, organization_id: str, limit: int = 20) -> list[GenerationInfo]:
        with self.database.session() as session:
            ledger.organization(session, organization_id)
            records = session.scalars(
                select(Generation)
                .where(Generation.organization_id == organization_id)
                .order_by(Generation.created_at.desc())
                .limit(limit)
            ).all()
            return [
                GenerationInfo(
                    id=g.id,
                    created_at=g.created_at,
                    engine_id=g.engine_id,
                    task=g.task,
                    status=g.status.value,
                    credits=ledger.credits(g.cost),
                    seconds=round((g.finished_at - g.started_at).total_seconds(), 3)
                    if g.finished_at and g.started_at
                    else None,
                    finish_reasons=g.finish_reasons,
                    error=f"{g.error_name}: {g.error}" if g.error_name else g.error,
                    error_name=g.error_name,
                    batch_size=g.batch_size,
                    content_filter=g.content_filter,
                )
                for g in records
            ]

    def purge(self, charged_days: float, refunded_hours: float) -> int:
        """Remove generation records past their retention now (servers do it as they run)."""
        return Billing(self.database).purge(charged_days, refunded_hours)

    def create_key(self, email: str, credits: float = 0.0) -> NewKey:
        """A key for `email` (a new user gets their own organization holding `credits`)."""
        with self.database.session.begin() as session:
            created = accounts.create_user(session, email, credits, actor=self.actor)
            return NewKey(
                key=created.key, user_id=created.user_id, organization_id=created.organization_id
            )

    def keys(self, email: str | None = None) -> list[KeyInfo]:
        with self.database.session() as session:
            return [
                KeyInfo(
                    prefix=key.prefix,
                    email=user_email,
                    created_at=key.created_at.isoformat(timespec="seconds"),
                    last_used_at=key.last_used_at.isoformat(timespec="seconds")
                    if key.last_used_at
                    else None,
                    revoked=key.revoked_at is not None,
                )
                for key, user_email in accounts.list_keys(session, email)
            ]

    def revoke_key(self, prefix: str) -> int:
        with self.database.session.begin() as session:
            return accounts.revoke_key(session, prefix.removesuffix("..."))
