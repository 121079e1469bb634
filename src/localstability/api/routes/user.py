"""GET /v1/user/account and /v1/user/balance."""

from __future__ import annotations

from fastapi import APIRouter

from localstability.api.deps import Context, CurrentPrincipal, CurrentUser
from localstability.protocol import AccountResponseBody, BalanceResponseBody

router = APIRouter(tags=["v1/user"])


@router.get(
    "/v1/user/account", response_model=AccountResponseBody, response_model_exclude_none=True
)
def user_account(context: Context, principal: CurrentUser) -> AccountResponseBody:
    """The caller's user and the organizations it belongs to."""
    return context.accounts.account(principal)


@router.get("/v1/user/balance", response_model=BalanceResponseBody)
def user_balance(context: Context, principal: CurrentPrincipal) -> BalanceResponseBody:
    """The credits of the organization named by the Organization header (else the default)."""
    return context.accounts.balance(principal)
