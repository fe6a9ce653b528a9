"""What the interactive sign-in flows share: the request they make, the result they hand back, redeeming the final
token reply, and turning authority errors into :class:`~aadhelper.errors.LoginFailed`.

Every POST goes through :mod:`aadhelper.grants.http`, so transport failures and Entra error bodies are mapped in
one place; this module only re-labels the outcomes that mean "this login did not work" as ``LoginFailed``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from ..config import Profile
from ..errors import AuthorityError, LoginFailed, LoginRequired
from ..grants.http import parse_token_reply, post_form, raise_for_error, tenant_of
from ..grants.refresh_token import with_oidc_scopes
from ..tokens import Secret


@dataclass(frozen=True)
class LoginRequest:
    """One interactive sign-in of ``profile``: the scopes to consent to, a Conditional Access ``claims`` challenge."""

    profile: Profile
    #: The resource scopes (the OpenID scopes are added by :attr:`scope`); default: the profile's.
    scopes: tuple[str, ...] = ()
    claims: str | None = None

    @property
    def resource_scopes(self) -> tuple[str, ...]:
        return self.scopes or self.profile.scopes

    @property
    def scope(self) -> str:
        """The ``scope`` parameter: the resource's scopes plus ``openid profile offline_access``, as MSAL asks."""
        return " ".join(with_oidc_scopes(self.resource_scopes))

    def with_claims(self, params: dict[str, str]) -> dict[str, str]:
        if self.claims:
            params["claims"] = self.claims
        return params


@dataclass(frozen=True, repr=False)
class LoginResult:
    """A finished sign-in: the refresh token to store and, when the authority said, who signed in."""

    refresh_token: Secret
    account: str | None = None
    #: The tenant (``tid``) the account signed in to, when the id token says.
    tenant: str | None = None

    def __repr__(self) -> str:
        return (f"LoginResult(account={self.account!r}, tenant={self.tenant!r}, "
                f"refresh_token=<{len(self.refresh_token)} chars>)")


def finish(body: Mapping[str, Any] | None, request: LoginRequest, *, now: float) -> LoginResult:
    """The result of a successful token reply; one without a refresh token is a failed login."""
    name = request.profile.name
    response = parse_token_reply(body, scopes=request.resource_scopes, now=now, profile=name)
    if response.refresh_token is None:
        raise LoginFailed("the authority signed you in but issued no refresh token", profile=name,
                          hint="the app registration must allow the offline_access scope (and public client flows)")
    id_token = body.get("id_token") if body else None
    return LoginResult(response.refresh_token, response.token.account,
                       tenant_of(id_token) if isinstance(id_token, str) else None)


async def redeem(client: httpx.AsyncClient, request: LoginRequest, form: Mapping[str, str], *,
                 now: float) -> LoginResult:
    """POST the final grant of a flow (an authorization code) and return the sign-in, or raise the mapped error."""
    name = request.profile.name
    status, headers, body = await post_form(client, request.profile.token_endpoint, form, profile=name)
    with login_errors("the sign-in could not be completed", name):
        raise_for_error(status, headers, body, profile=name, action="sign-in")
    return finish(body, request, now=now)


@contextmanager
def login_errors(message: str, profile: str) -> Iterator[None]:
    """Inside an interactive login, "log in again" is no advice: such errors become :class:`LoginFailed`."""
    try:
        yield
    except LoginRequired as exc:
        raise failed(exc, message, profile) from None


def failed(exc: AuthorityError, message: str, profile: str, hint: str | None = None) -> LoginFailed:
    """A :class:`LoginFailed` saying ``message`` with the authority's reason, ``error`` and AADSTS code from ``exc``."""
    reason = exc.reason
    return LoginFailed(f"{message}: {reason}" if reason else message, profile=profile, error=exc.error,
                       aadsts=exc.aadsts, hint=hint or f"run `aadhelper login {profile}` again", claims=exc.claims)


def sole_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception inside nested groups (trio wraps everything a nursery raises), else the group itself."""
    current: BaseException = group
    while isinstance(current, BaseExceptionGroup) and len(current.exceptions) == 1:
        current = current.exceptions[0]
    return current


@contextmanager
def unwrapped() -> Iterator[None]:
    """Re-raise a lone exception out of trio's exception groups, so callers catch the class they expect."""
    try:
        yield
    except BaseExceptionGroup as group:
        inner = sole_error(group)
        if inner is group:
            raise
        raise inner from None
