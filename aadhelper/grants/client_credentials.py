"""Client-credentials grant with a client secret (``grant_type=client_credentials``).

The secret is read from the secret store on every acquisition rather than cached here, so that
``aadhelper secret set`` takes effect at the next refresh without restarting the daemon, and so that no copy of it
outlives the exchange (the README's "Secrets in memory").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx

from ..config import Profile
from ..errors import SecretMissing
from ..secret_chunks import CLIENT_SECRET
from ..tokens import TokenResponse
from .http import request_token

if TYPE_CHECKING:
    from . import SecretAccess

SECRET_KIND = CLIENT_SECRET


class ClientSecretSource:
    """Access tokens for an application identity (confidential client with a secret)."""

    def __init__(self, profile: Profile, *, client: httpx.AsyncClient, secrets: SecretAccess,
                 clock: Callable[[], float]) -> None:
        self._profile = profile
        self._client = client
        self._secrets = secrets
        self._clock = clock

    async def acquire(self, scopes: tuple[str, ...]) -> TokenResponse:
        profile = self._profile
        secret = await self._secrets.get(profile.name, SECRET_KIND)
        if secret is None:
            raise SecretMissing(f"no client secret is stored for profile {profile.name!r}", profile=profile.name,
                                hint=f"store it with `aadhelper secret set {profile.name}`")
        form = {
            "grant_type": "client_credentials",
            "client_id": profile.client_id,
            "client_secret": secret.reveal(),
            "scope": " ".join(scopes),
        }
        try:
            return await request_token(self._client, profile.token_endpoint, form, scopes=scopes,
                                       profile=profile.name, now=self._clock())
        finally:
            # An error raised here keeps this frame alive in its traceback (a cache's last error, a log record):
            # it must not keep the secret too.
            form.clear()
            del form, secret

    def __repr__(self) -> str:
        return f"ClientSecretSource(profile={self._profile.name!r})"
