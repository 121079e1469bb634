"""Users, organizations, memberships and API keys."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from localstability import errors
from localstability.store import ledger
from localstability.store.models import ApiKey, Membership, Organization, User, utcnow

KEY_PREFIX = "sk-"
_LOOKUP_CHARS = 8  # characters after "sk-" kept in clear to find the row
# last_used_at is written at most this often per key: not one write on every request.
LAST_USED_RESOLUTION = timedelta(minutes=1)
ROLES = ("OWNER", "ADMIN", "MEMBER")


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
    prompt_filter: str | None = None  # the organization's own prompt filter mode, if it has one


@dataclass(frozen=True)
class CreatedKey:
    user_id: str
    organization_id: str
    key: str


def create_user(
    session: Session,
    email: str,
    credits: float = 0.0,
    organization_name: str | None = None,
    *,
    actor: str | None = None,
) -> CreatedKey:
    """A new key for the user with `email`.

    A new user gets a default organization granted `credits`; an existing user gets another
    key and `credits` more in its default organization.
    """
    existing = session.scalar(select(User).where(User.email == email))
    if existing is not None:
        membership = next((m for m in existing.memberships if m.is_default), None)
        if membership is None:
            raise errors.BadRequest(f"user {email} has no default organization")
        if credits:
            ledger.grant(session, membership.organization_id, ledger.micros(credits), actor=actor)
        key = create_key(session, existing.id)
        return CreatedKey(existing.id, membership.organization_id, key)
    user, organization_id = add_user_with_organization(
        session, email, organization_name=organization_name
    )
    if credits:
        ledger.grant(session, organization_id, ledger.micros(credits), actor=actor, note="new user")
    key = create_key(session, user.id)
    return CreatedKey(user_id=user.id, organization_id=organization_id, key=key)


def add_user_with_organization(
    session: Session,
    email: str,
    *,
    organization_id: str | None = None,
    role: str = "MEMBER",
    profile_picture: str | None = None,
    organization_name: str | None = None,
) -> tuple[User, str]:
    """A new user, a member (as `role`) of `organization_id`, billed there by default; with no
    organization given, the OWNER of a new one of their own. Returns the user and the
    organization's id."""
    user = add_user(session, email, profile_picture)
    if organization_id is None:
        name = organization_name or f"{email}'s organization"
        organization_id = create_organization(session, name).id
        role = "OWNER"
    add_member(session, email, organization_id, role, default=True)
    return user, organization_id


def add_user(session: Session, email: str, profile_picture: str | None = None) -> User:
    if "@" not in email:
        raise errors.BadRequest(f"not an email address: {email!r}")
    if session.scalar(select(User).where(User.email == email)) is not None:
        raise errors.BadRequest(f"a user with email {email} exists already")
    user = User(id=_new_id("user"), email=email, profile_picture=profile_picture)
    session.add(user)
    session.flush()
    return user


def create_organization(session: Session, name: str) -> Organization:
    org = Organization(id=_new_id("org"), name=name, balance=0, reserved=0)
    session.add(org)
    session.flush()
    return org


def find_user(session: Session, email: str) -> User:
    user = session.scalar(select(User).where(User.email == email))
    if user is None:
        raise errors.NotFound(f"no user with email {email}")
    return user


def add_member(
    session: Session, email: str, organization_id: str, role: str = "MEMBER", default: bool = False
) -> Membership:
    """Make the user a member of the organization (or change its role); `default` makes it
    the organization billed when a request names none."""
    role = role.upper()
    if role not in ROLES:
        raise errors.BadRequest(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    user = find_user(session, email)
    ledger.organization(session, organization_id)
    memberships = session.scalars(select(Membership).where(Membership.user_id == user.id)).all()
    membership = next((m for m in memberships if m.organization_id == organization_id), None)
    if membership is None:
        membership = Membership(
            user_id=user.id, organization_id=organization_id, role=role, is_default=False
        )
        session.add(membership)
    membership.role = role
    if default or not memberships:
        for other in memberships:
            other.is_default = False
        membership.is_default = True
    session.flush()
    return membership


def list_users(session: Session) -> list[User]:
    return list(
        session.scalars(
            select(User)
            .order_by(User.created_at, User.email)
            .options(selectinload(User.memberships).selectinload(Membership.organization))
        ).all()
    )


def list_organizations(session: Session) -> list[Organization]:
    return list(
        session.scalars(
            select(Organization)
            .order_by(Organization.created_at, Organization.name)
            .options(selectinload(Organization.memberships).selectinload(Membership.user))
        ).all()
    )


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
    now = utcnow()
    if match.last_used_at is None or now - match.last_used_at >= LAST_USED_RESOLUTION:
        match.last_used_at = now
    memberships = session.execute(
        select(Membership, Organization.prompt_filter)
        .join(Organization, Membership.organization_id == Organization.id)
        .where(Membership.user_id == match.user_id)
    ).all()
    if organization_id:
        chosen = next((m for m in memberships if m[0].organization_id == organization_id), None)
        if chosen is None:
            raise errors.PermissionDenied("You do not have permission to access this resource")
    else:
        chosen = next((m for m in memberships if m[0].is_default), None) or (
            memberships[0] if memberships else None
        )
        if chosen is None:
            raise errors.PermissionDenied("this API key's user belongs to no organization")
    membership, prompt_filter = chosen
    return Principal(match.user_id, membership.organization_id, match.id, prompt_filter)


def get_user(session: Session, user_id: str) -> User:
    user = session.scalar(
        select(User)
        .where(User.id == user_id)
        .options(selectinload(User.memberships).selectinload(Membership.organization))
    )
    if user is None:
        raise errors.Unauthorized("invalid API key")
    return user


def list_keys(session: Session, email: str | None = None) -> list[tuple[ApiKey, str]]:
    """Every key (its row, never the key itself) with its user's email, oldest first."""
    query = select(ApiKey, User.email).join(User, ApiKey.user_id == User.id).order_by(ApiKey.id)
    if email:
        query = query.where(User.email == email)
    return [(key, user_email) for key, user_email in session.execute(query).all()]


def revoke_key(session: Session, prefix: str) -> int:
    """Revoke every live key whose lookup prefix is `prefix`; returns how many."""
    keys = session.scalars(
        select(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
    ).all()
    for key in keys:
        key.revoked_at = utcnow()
    return len(keys)
