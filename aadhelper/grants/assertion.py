"""The client assertion a certificate proves an app with: a JWT signed by the certificate's private key (RFC 7523).

What MSAL Python sends (``msal/application.py`` with ``oauth2cli/assertion.py``, msal 1.3x), matched here:

- header ``{"typ": "JWT", "alg": "PS256", "x5t#S256": <SHA-256 of the leaf's DER>}``; with ``assertion_alg =
  "RS256"`` (ADFS and authorities without PSS) ``{"alg": "RS256", "x5t": <SHA-1 of the leaf's DER>}`` instead;
- with ``x5c = true`` (subject name + issuer authentication) also ``"x5c": [<base64 DER>, ...]``;
- claims ``aud`` = the token endpoint, ``iss`` = ``sub`` = the client id, ``exp`` = now + :data:`LIFETIME`,
  ``iat`` = now, ``jti`` = a random UUID.

Where we differ, and why: the thumbprints are base64url *without* padding (RFC 7515 §4.1.7-8; MSAL keeps the ``=``,
Entra accepts both); ``x5c`` is the whole chain, leaf first, as plain base64 DER (RFC 7515 §4.1.6; MSAL sends the
PEM body with its line breaks, and only the leaf for a PFX); ``nbf`` = now is sent too (MSAL omits it; Entra's docs
list it); and every request gets a fresh assertion (MSAL reuses one for up to 10 minutes), which is never cached
or logged. The signature is cryptography's: RSASSA-PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt for PS256
(RFC 7518 §3.5), PKCS#1 v1.5 with SHA-256 for RS256.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Mapping

from ..certificates import SigningCertificate

#: Seconds an assertion is valid: a few minutes, like MSAL's 600 s (it is sent within milliseconds of signing).
LIFETIME = 600


def sign_assertion(certificate: SigningCertificate, *, client_id: str, audience: str, now: float,
                   algorithm: str = "PS256", x5c: bool = False, lifetime: int = LIFETIME) -> str:
    """A fresh client assertion for ``client_id`` at token endpoint ``audience``."""
    header: dict[str, object] = {"typ": "JWT", "alg": algorithm}
    if algorithm == "PS256":
        header["x5t#S256"] = b64url(certificate.leaf_digest("sha256"))
    elif algorithm == "RS256":
        header["x5t"] = b64url(certificate.leaf_digest("sha1"))
    else:
        raise ValueError(f"unsupported assertion algorithm {algorithm!r}")
    if x5c:
        header["x5c"] = [base64.b64encode(der).decode("ascii") for der in certificate.chain_der()]
    issued = int(now)
    claims = {"aud": audience, "iss": client_id, "sub": client_id, "jti": str(uuid.uuid4()),
              "iat": issued, "nbf": issued, "exp": issued + lifetime}
    signing_input = f"{_segment(header)}.{_segment(claims)}".encode("ascii")
    return f"{signing_input.decode('ascii')}.{b64url(_sign(certificate, algorithm, signing_input))}"


def _sign(certificate: SigningCertificate, algorithm: str, data: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    if algorithm == "PS256":
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
        return certificate.key.sign(data, pss, hashes.SHA256())
    return certificate.key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def b64url(data: bytes) -> str:
    """Base64url without padding (JWS)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _segment(value: Mapping[str, object]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())
