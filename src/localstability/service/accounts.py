"""Account use cases: authenticate a key, read the account and the balance, bootstrap."""

from __future__ import annotations

from localstability import errors
from localstability.protocol import (
    AccountResponseBody,
    BalanceResponseBody,
    OrganizationMembership,
)
from localstability.service.ratelimit import Limiter
from localstability.store import accounts, ledger
from localstability.store.accounts import CreatedKey, Principal
from localstability.store.db import Database
from localstability.store.models import User


def bearer_token(authorization: str | None) -> str:
    """The key of an Authorization header: "Bearer KEY" or a bare key (as the hosted API)."""
    if not authorization or not authorization.strip():
        raise errors.Unauthorized("missing authorization header")
    scheme, _, rest = authorization.strip().partition(" ")
    key = rest.strip() if scheme.lower() == "bearer" else authorization.strip()
    if not key:
        raise errors.Unauthorized("missing API key in the authorization header")
    return key


def account_of(user: User) -> AccountResponseBody:
    """A user as /v1/user/account shows it (memberships loaded)."""
    return AccountResponseBody(
        id=user.id,
        email=user.email,
        profile_picture=user.profile_picture,
        organizations=[
            OrganizationMembership(
                id=m.organization.id,
                name=m.organization.name,
                role=m.role,
                is_default=m.is_default,
            )
            for m in user.memberships
        ],
    )


class AccountService:
    def __init__(self, database: Database, limiter: Limiter | None = None) -> None:
        self.database = database
        self.limiter = limiter

    def authenticate(self, authorization: str | None, organization_id: str | None) -> Principal:
        """Check an Authorization header ("Bearer KEY" or a bare key)."""
        key = bearer_token(authorization)
        with self.database.session.begin() as session:
            principal = accounts.authenticate(session, key, organization_id or None)
        if self.limiter is not None:
            self.limiter.check(principal.key_id)
        return principal

    def account(self, principal: Principal) -> AccountResponseBody:
        with self.database.session() as session:
            return account_of(accounts.get_user(session, principal.user_id))

    def balance(self, principal: Principal) -> BalanceResponseBody:
        with self.database.session() as session:
            org = ledger.organization(session, principal.organization_id)
            return BalanceResponseBody(credits=ledger.credits(org.balance))

    def create_user(self, email: str, credits: float) -> CreatedKey:
        with self.database.session.begin() as session:
            return accounts.create_user(session, email, credits)

    def bootstrap(self, credits: float) -> CreatedKey | None:
        """On an empty database, a first user and key; None when keys exist already."""
        with self.database.session() as session:
            if accounts.count_keys(session):
                return None
        return self.create_user("admin@localstability.dev", credits)
