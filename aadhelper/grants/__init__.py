"""Token sources, one per credential kind, and the factory that picks one for a profile.

A source (a :class:`aadhelper.cache.TokenSource`: the cache owns that protocol, so that importing the cache does not
import httpx) turns a profile's long-lived credential into access tokens for a set of scopes.
Sources get their ``httpx.AsyncClient`` and their secret store passed in (no globals), and report every
failure as an :mod:`aadhelper.errors` class via :mod:`aadhelper.grants.http`. This package is the only
user of httpx.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from ..config import Profile
from ..errors import ConfigError
from ..tokens import Secret
from .http import HttpClients

if TYPE_CHECKING:
    from .client_credentials import AppCredentialSource
    from .refresh_token import RefreshTokenSource, SignIns


class SecretAccess(Protocol):
    """The fetcher's async view of the secret store."""

    async def get(self, profile: str, kind: str) -> Secret | None: ...

    async def set(self, profile: str, kind: str, value: Secret) -> None: ...


def make_source(profile: Profile, *, http: HttpClients, secrets: SecretAccess, clock: Callable[[], float],
                sign_ins: SignIns | None = None) -> AppCredentialSource | RefreshTokenSource:
    """The token source for a profile's credential kind.

    ``sign_ins`` is the fetcher's per-profile refresh state for user profiles; it must outlive the sources (one
    per fetcher), or refreshes of one profile could overlap. None gives the source its own (tests, one-off use).
    """
    client = http.get(profile.ca_bundle, profile.proxy)
    if profile.credential == "client_secret":
        from .client_credentials import ClientSecretSource

        return ClientSecretSource(profile, client=client, secrets=secrets, clock=clock)
    if profile.credential == "federated":
        from .federated import FederatedSource

        return FederatedSource(profile, client=client, clock=clock)
    if profile.credential == "certificate":
        from .certificate import CertificateSource

        return CertificateSource(profile, client=client, secrets=secrets, clock=clock)
    if profile.credential == "user":
        from .refresh_token import RefreshTokenSource, SignIns

        return RefreshTokenSource(profile, client=client, sign_ins=sign_ins or SignIns(secrets), clock=clock)
    raise ConfigError(f"profile {profile.name!r}: credential kind {profile.credential!r} is not supported",
                      profile=profile.name)


__all__ = ["HttpClients", "SecretAccess", "make_source"]
