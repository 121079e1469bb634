"""Users, organizations, memberships and API keys."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from localstability import errors
from localstability.store.models import ApiKey, Membership, Organization, User, utcnow

KEY_PREFIX = "sk-"
_LOOKUP_CHARS = 8  # characters after "sk-" kept in clear to find the row


def _hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _lookup_prefix(key: str) -> str:
    return key[: len(KEY_PREFIX) + _LOOKUP_CHARS]


def _new_id(kind: str) -> str:
    return f"{kind}-{secrets.token_hex(8)}"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the user behind the API key and the organization billed."""

    user_id: str
    organization_id: str
    key_id: int = 0


@dataclass(frozen=True)
class CreatedKey:
    user_id: str
    organization_id: str
    key: str


def create_user(
    session: Session, email: str, credits: float, organization_name: str | None = None
) -> CreatedKey:
    """A new key for the user with `email`.

    A new user gets a default organization holding `credits`; an existing user gets another
    key and `credits` more in its default organization.
    """
    existing = session.scalar(select(User).where(User.email == email))
    if existing is not None:
        membership = next((m for m in existing.memberships if m.is_default), None)
        if membership is None:
            raise errors.BadRequest(f"user {email} has no default organization")
        membership.organization.credits += credits
        key = create_key(session, existing.id)
        return CreatedKey(existing.id, membership.organization_id, key)
    user = User(id=_new_id("user"), email=email)
    org = Organization(
        id=_new_id("org"), name=organization_name or f"{email}'s organization", credits=credits
    )
    session.add_all([user, org])
    session.add(Membership(user=user, organization=org, role="OWNER", is_default=True))
    key = create_key(session, user.id)
    return CreatedKey(user_id=user.id, organization_id=org.id, key=key)


def create_key(session: Session, user_id: str) -> str:
    """Store a new key's hash and return the key itself: the only time it is seen in clear."""
    key = KEY_PREFIX + secrets.token_urlsafe(36)
    session.add(ApiKey(prefix=_lookup_prefix(key), key_hash=_hash_key(key), user_id=user_id))
    return key


def count_keys(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(ApiKey)) or 0


def authenticate(session: Session, key: str, organization_id: str | None) -> Principal:
    """The principal for an API key, billed to `organization_id` or the user's default."""
    digest = _hash_key(key)
    candidates = session.scalars(
        select(ApiKey).where(ApiKey.prefix == _lookup_prefix(key), ApiKey.revoked_at.is_(None))
    ).all()
    match = next((c for c in candidates if hmac.compare_digest(c.key_hash, digest)), None)
    if match is None:
        raise errors.Unauthorized("invalid API key")
    match.last_used_at = utcnow()
    memberships = session.scalars(
        select(Membership).where(Membership.user_id == match.user_id)
    ).all()
    if organization_id:
        if not any(m.organization_id == organization_id for m in memberships):
            raise errors.PermissionDenied("You do not have permission to access this resource")
        return Principal(match.user_id, organization_id, match.id)
    default = next((m for m in memberships if m.is_default), None) or (
        memberships[0] if memberships else None
    )
    if default is None:
        raise errors.PermissionDenied("this API key's user belongs to no organization")
    return Principal(match.user_id, default.organization_id, match.id)


def get_user(session: Session, user_id: str) -> User:
    user = session.scalar(
        select(User)
        .where(User.id == user_id)
        .options(selectinload(User.memberships).selectinload(Membership.organization))
    )
    if user is None:
        raise errors.Unauthorized("invalid API key")
    return user


def get_organization(session: Session, organization_id: str) -> Organization:
    org = session.get(Organization, organization_id)
    if org is None:
        raise errors.PermissionDenied("You do not have permission to access this resource")
    return org


@dataclass(frozen=True)
class KeyInfo:
    """What an administrator may see of a key: never the key itself."""

    prefix: str
    email: str
    created_at: str
    last_used_at: str | None
    revoked: bool


def list_keys(session: Session, email: str | None = None) -> list[KeyInfo]:
    query = select(ApiKey, User.email).join(User, ApiKey.user_id == User.id).order_by(ApiKey.id)
    if email:
        query = query.where(User.email == email)
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
        for key, user_email in session.execute(query).all()
    ]


def revoke_key(session: Session, prefix: str) -> int:
    """Revoke every live key whose lookup prefix is `prefix`; returns how many."""
    keys = session.scalars(
        select(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
    ).all()
    for key in keys:
        key.revoked_at = utcnow()
    return len(keys)
