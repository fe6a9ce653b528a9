"""Client-credentials grant (``grant_type=client_credentials``): an application proves itself and gets a token.

One grant, several proofs. :class:`AppCredentialSource` posts the grant; a subclass supplies the proof: the client
secret (:class:`ClientSecretSource`), or a client assertion (``client_assertion_type`` = :data:`JWT_BEARER`, see
:func:`assertion_proof`) for certificate and federated credentials. The proof is produced afresh for every request
and wiped from the form afterwards, whatever the outcome.

The secret is read from the secret store on every acquisition rather than cached here, so that
``aadhelper secret set`` takes effect at the next refresh without restarting the daemon, and so that no copy of it
outlives the exchange (the README's "Secrets in memory").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx

from ..config import Profile
from ..errors import SecretMissing
from ..secret_chunks import CLIENT_SECRET
from ..tokens import TokenResponse
from .http import request_token

if TYPE_CHECKING:
    from . import SecretAccess

SECRET_KIND = CLIENT_SECRET
#: ``client_assertion_type`` of a signed JWT proving the client (RFC 7523), for certificates and federation alike.
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def assertion_proof(assertion: str) -> dict[str, str]:
    """The form fields that prove a client with ``assertion`` (a JWT)."""
    return {"client_assertion_type": JWT_BEARER, "client_assertion": assertion}


class AppCredentialSource:
    """Access tokens for an application identity (a confidential client): the grant, without the proof.

    Subclasses implement :meth:`proof` and ``__repr__`` (which must never show a secret)."""

    def __init__(self, profile: Profile, *, client: httpx.AsyncClient, clock: Callable[[], float]) -> None:
        self._profile = profile
        self._client = client
        self._clock = clock

    async def proof(self) -> dict[str, str]:
        """Fresh form fields proving the client (``client_secret``, or :func:`assertion_proof`)."""
        raise NotImplementedError

    async def state(self) -> dict[str, Any]:
        """What ``status`` shows of the credential (JSON-ready, nothing secret): none by default. A failure raises
        the error a fetch would meet."""
        return {}

    async def acquire(self, scopes: tuple[str, ...]) -> TokenResponse:
        profile = self._profile
        form = {
            "grant_type": "client_credentials",
            "client_id": profile.client_id,
            **await self.proof(),
            "scope": " ".join(scopes),
        }
        try:
            return await request_token(self._client, profile.token_endpoint, form, scopes=scopes,
                                       profile=profile.name, now=self._clock())
        finally:
            # An error raised here keeps this frame alive in its traceback (a cache's last error, a log record):
            # it must not keep the proof too.
            form.clear()
            del form


class ClientSecretSource(AppCredentialSource):
    """Proof by the client secret from the secret store."""

    def __init__(self, profile: Profile, *, client: httpx.AsyncClient, secrets: SecretAccess,
                 clock: Callable[[], float]) -> None:
        super().__init__(profile, client=client, clock=clock)
        self._secrets = secrets

    async def proof(self) -> dict[str, str]:
        profile = self._profile
        secret = await self._secrets.get(profile.name, SECRET_KIND)
        if secret is None:
            raise SecretMissing(f"no client secret is stored for profile {profile.name!r}", profile=profile.name,
                                hint=f"store it with `aadhelper secret set {profile.name}`")
        return {"client_secret": secret.reveal()}

    def __repr__(self) -> str:
        return f"ClientSecretSource(profile={self._profile.name!r})"
