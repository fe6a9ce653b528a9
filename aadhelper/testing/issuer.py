"""The authority's signing key, and the claims of the access and id tokens it issues.

Access tokens carry the claims of Entra's v1.0 access tokens (``iss`` ``https://sts.windows.net/{tid}/``, ``aud``
the resource, ``appid``, ``oid``/``sub``, ``tid``, ``roles`` or ``scp``, and a unique ``uti`` so that no two
tokens are equal); id tokens those of v2.0 id tokens. Both are HS256-signed with a random per-authority key, so
:meth:`TokenIssuer.validate` accepts exactly the tokens this authority issued.
"""

from __future__ import annotations

import secrets

from . import jwt
from .directory import Client, User


class TokenIssuer:
    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._kid = secrets.token_hex(8)

    def access_token(self, client: Client, resource: str, *, now: float, lifetime: int, user: User | None = None,
                     scp: str | None = None) -> str:
        """An access token for ``resource``: app-only when ``user`` is None, else delegated with ``scp``."""
        issuer = f"https://sts.windows.net/{client.tenant_id}/"
        claims: dict[str, object] = {
            "aud": resource, "iss": issuer, "idp": issuer, "iat": int(now), "nbf": int(now),
            "exp": int(now) + lifetime, "appid": client.client_id, "appidacr": "0" if client.public else "1",
            "tid": client.tenant_id, "uti": secrets.token_urlsafe(16), "ver": "1.0",
        }
        if user is None:
            claims.update(oid=client.object_id, sub=client.object_id, idtyp="app")
            if client.roles:
                claims["roles"] = list(client.roles)
        else:
            claims.update(oid=user.object_id, sub=user.object_id, idtyp="user", scp=scp or "user_impersonation",
                          upn=user.username, unique_name=user.username, name=user.display_name)
        return jwt.encode(claims, self._key, kid=self._kid)

    def id_token(self, client: Client, user: User, *, now: float, lifetime: int, nonce: str | None = None) -> str:
        """The OpenID Connect id token of a user sign-in, for the app ``client``."""
        claims: dict[str, object] = {
            "aud": client.client_id, "iss": f"https://login.microsoftonline.com/{user.tenant_id}/v2.0",
            "iat": int(now), "nbf": int(now), "exp": int(now) + lifetime, "name": user.display_name,
            "oid": user.object_id, "preferred_username": user.username, "sub": user.object_id,
            "tid": user.tenant_id, "uti": secrets.token_urlsafe(16), "ver": "2.0",
        }
        if nonce is not None:
            claims["nonce"] = nonce
        return jwt.encode(claims, self._key, kid=self._kid)

    def validate(self, token: str, *, now: float, audience: str | None = None) -> dict[str, object]:
        """The claims of a token this issuer signed, valid at ``now``; raises :class:`~.jwt.InvalidToken`."""
        return jwt.decode(token, self._key, now=now, audience=audience)
