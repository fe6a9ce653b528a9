"""Workload identity federation in the simulated authority: external OIDC issuers, federated identity credentials
on app registrations, and the check Entra makes of a federated client assertion.

An :class:`OidcIssuer` plays the other identity provider (a Kubernetes cluster's service-account issuer, GitHub
Actions): an RSA key, its JWKS (what its ``jwks_uri`` serves) and RS256 tokens for a subject and audience. The
authority's :class:`Federation` holds what Entra knows: the JWKS of each issuer it can reach (what it would fetch
through the issuer's discovery document) and each app's federated identity credentials (issuer, subject,
audiences). :meth:`Federation.verify` checks an assertion as Entra does, in Entra's order and with its codes:

* no credential of the app names the assertion's issuer: AADSTS70021 (no matching federated identity record,
  naming issuer, subject and audience); the issuer matches but not the subject: AADSTS700213; nor the audience
  (default ``api://AzureADTokenExchange``): AADSTS700212; the token is no JWT: AADSTS50027;
* the issuer's keys cannot be had (never published here): AADSTS50166; no key with the token's ``kid``, another
  algorithm than RS256, or a signature that does not verify against the JWKS (with ``cryptography``, for real):
  AADSTS700027;
* outside ``nbf``..``exp``: AADSTS700024.

A client assertion is federated when its (unverified) ``iss`` is not the app's own client id: an app's own
certificate assertion is self-issued (``iss`` = ``sub`` = client id). :func:`is_federated` tells the grant handler.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

from ..config import FEDERATION_AUDIENCE
from .entra import entra_error
from .jwt import InvalidToken, b64url_decode, b64url_encode

_JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class OidcIssuer:
    """Another identity provider: an RSA key pair, its JWKS, and the RS256 tokens it issues (stdlib plus
    ``cryptography``, imported here only: the rest of the kit stays stdlib)."""

    def __init__(self, url: str, *, key_size: int = 2048) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.url = url
        self.kid = secrets.token_hex(8)
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)

    def jwks(self) -> dict[str, object]:
        """The JSON Web Key Set its ``jwks_uri`` would serve."""
        numbers = self._key.public_key().public_numbers()
        return {"keys": [{"kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
                          "n": b64url_encode(_unsigned(numbers.n)), "e": b64url_encode(_unsigned(numbers.e))}]}

    def token(self, subject: str, *, audience: str = FEDERATION_AUDIENCE, lifetime: float = 3600.0,
              now: float | None = None, issuer: str | None = None, **claims: object) -> str:
        """A signed token for ``subject``, as the issuer's token endpoint or a projected volume would give it."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        issued = time.time() if now is None else now
        body: dict[str, object] = {"iss": issuer or self.url, "sub": subject, "aud": audience, "iat": int(issued),
                                   "nbf": int(issued), "exp": int(issued + lifetime),
                                   "jti": secrets.token_urlsafe(12), **claims}
        header = {"alg": "RS256", "typ": "JWT", "kid": self.kid}
        signing_input = f"{_segment(header)}.{_segment(body)}"
        signature = self._key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64url_encode(signature)}"


@dataclass(frozen=True)
class FederatedCredential:
    """A federated identity credential on an app registration: which external tokens stand for the app."""

    issuer: str
    subject: str
    audiences: tuple[str, ...] = (FEDERATION_AUDIENCE,)


class Federation:
    """What the simulated Entra knows about federation; the authority calls it under its lock."""

    def __init__(self) -> None:
        self._jwks: dict[str, Mapping[str, object]] = {}
        self._credentials: dict[str, list[FederatedCredential]] = {}

    def publish(self, issuer: str, jwks: Mapping[str, object]) -> None:
        """Make ``issuer``'s JWKS reachable (as its discovery document and ``jwks_uri`` would be)."""
        self._jwks[issuer] = jwks

    def add(self, client_id: str, credential: FederatedCredential) -> None:
        self._credentials.setdefault(client_id.lower(), []).append(credential)

    def remove(self, client_id: str) -> None:
        self._credentials.pop(client_id.lower(), None)

    def verify(self, client_id: str, form: Mapping[str, str], now: float) -> None:
        """Accept the federated ``client_assertion`` of ``form`` for ``client_id``, or raise Entra's error."""
        assertion = form.get("client_assertion", "")
        try:
            header, claims, parts = _decode(assertion)
        except InvalidToken:
            raise entra_error(50027) from None
        issuer, subject, audiences = str(claims.get("iss")), str(claims.get("sub")), _audiences(claims.get("aud"))
        known = self._credentials.get(client_id.lower(), [])
        same_issuer = [c for c in known if c.issuer == issuer]
        shown_audience = audiences[0] if audiences else ""
        if not same_issuer:
            raise entra_error(70021, issuer=issuer, subject=subject, audience=shown_audience)
        # Matching is case-sensitive (Entra's rule since 2025).
        same_subject = [c for c in same_issuer if c.subject == subject]
        if not same_subject:
            raise entra_error(700213, subject=subject)
        if not any(audience in c.audiences for c in same_subject for audience in audiences):
            raise entra_error(700212, audience=shown_audience)
        jwks = self._jwks.get(issuer)
        if jwks is None:
            raise entra_error(50166, issuer=issuer)
        if header.get("alg") != "RS256" or not _verifies(jwks, header.get("kid"), parts):
            raise entra_error(700027, reason="The signature does not verify with any key of the issuer's JWKS.")
        exp, nbf = claims.get("exp"), claims.get("nbf", 0)
        if not isinstance(exp, (int, float)) or not isinstance(nbf, (int, float)) or not nbf <= now < exp:
            raise entra_error(700024, now=_when(now), nbf=_when(nbf), exp=_when(exp))


def is_federated(form: Mapping[str, str]) -> bool:
    """Whether the request presents a federated assertion: a jwt-bearer client assertion whose issuer is not the
    client itself. Unreadable assertions are not (the certificate check refuses them)."""
    if form.get("client_assertion_type") != _JWT_BEARER or "client_assertion" not in form:
        return False
    try:
        claims = _decode(form["client_assertion"])[1]
    except InvalidToken:
        return False
    issuer = claims.get("iss")
    return isinstance(issuer, str) and issuer.lower() != form.get("client_id", "").lower()


def _decode(token: str) -> tuple[dict[str, object], dict[str, object], list[str]]:
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidToken("malformed token: expected three dot-separated parts")
    try:
        header, claims = (json.loads(b64url_decode(part)) for part in parts[:2])
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidToken("malformed token: a part is not JSON") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise InvalidToken("malformed token: a part is not a JSON object")
    return header, claims, parts


def _verifies(jwks: Mapping[str, object], kid: object, parts: list[str]) -> bool:
    """Whether the RS256 signature verifies with the JWKS key ``kid``."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    keys = jwks.get("keys")
    for jwk in keys if isinstance(keys, list) else []:
        if not isinstance(jwk, dict) or jwk.get("kid") != kid or jwk.get("kty") != "RSA":
            continue
        try:
            numbers = rsa.RSAPublicNumbers(int.from_bytes(b64url_decode(str(jwk["e"])), "big"),
                                           int.from_bytes(b64url_decode(str(jwk["n"])), "big"))
            numbers.public_key().verify(b64url_decode(parts[2]), f"{parts[0]}.{parts[1]}".encode("ascii"),
                                        padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, InvalidToken, KeyError, ValueError):
            return False
        return True
    return False


def _audiences(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def _segment(value: Mapping[str, object]) -> str:
    return b64url_encode(json.dumps(value, separators=(",", ":")).encode())


def _unsigned(number: int) -> bytes:
    return number.to_bytes((number.bit_length() + 7) // 8 or 1, "big")


def _when(value: object) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(float(value))) if isinstance(value, (int, float)) else "?"

