"""Certificate credentials of the simulated authority: apps' registered certificates, and the check of the client
assertions signed with them, made for real and answered with Entra's codes.

An app gets certificates with :meth:`CertificateCredentials.add` (PEM or DER of the public certificate, as uploaded
in the Entra portal). :meth:`CertificateCredentials.verify` checks a ``client_assertion`` as Entra does, in this
order, each failure with its code:

=====================================================================  ===============================================
the form has ``client_assertion_type`` = jwt-bearer                    AADSTS900144 (missing) / 9002313 (other value)
the assertion is a JWT (three base64url JSON parts)                    AADSTS50027
``alg`` is PS256 or RS256; ``x5t#S256`` (or ``x5t``) names a           AADSTS700027 (unknown key, bad signature)
registered certificate; the signature verifies with its public key
(cryptography); ``x5c``, when sent, starts with that certificate
``iss`` = ``sub`` = the client id                                      AADSTS700021
``aud`` = the token endpoint (v2.0 or v1 form) the request came to     AADSTS50013
``nbf`` <= now < ``exp`` (5 minutes' clock skew, as Entra allows)      AADSTS700024
``jti`` present and never seen before (within its lifetime)            AADSTS50013 (replay: the simulator's choice)
=====================================================================  ===============================================

Every assertion presented is kept in :attr:`CertificateCredentials.presented` so that tests can check no log or
output shows one. cryptography is imported only here, when a certificate is registered or an assertion arrives,
so the rest of the authority stays stdlib-only.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .entra import entra_error

if TYPE_CHECKING:
    from cryptography import x509

    from .directory import Client

#: ``client_assertion_type`` of a JWT client assertion (RFC 7523).
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Entra's tolerance for clocks that disagree (seconds).
CLOCK_SKEW = 300


@dataclass(frozen=True)
class RegisteredCertificate:
    """A certificate uploaded to an app registration."""

    certificate: x509.Certificate
    sha256: bytes
    sha1: bytes

    @property
    def thumbprint(self) -> str:
        """SHA-1, upper-case hex: what the Entra portal lists (and what Entra's error messages quote)."""
        return self.sha1.hex().upper()


class CertificateCredentials:
    """Registered certificates per app, and the ``jti`` values already used. Not thread-safe by itself: the
    authority calls it under its lock."""

    def __init__(self) -> None:
        self._by_client: dict[str, list[RegisteredCertificate]] = {}
        self._seen_jti: dict[str, float] = {}
        #: Every client assertion presented, in order (test-only record: they are secrets to the leak checks).
        self.presented: list[str] = []

    def add(self, client_id: str, certificate: bytes) -> RegisteredCertificate:
        """Register a public certificate (PEM or DER) for app ``client_id``."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes

        cert = (x509.load_pem_x509_certificate(certificate) if b"-----BEGIN" in certificate
                else x509.load_der_x509_certificate(certificate))
        registered = RegisteredCertificate(cert, cert.fingerprint(hashes.SHA256()),
                                           cert.fingerprint(hashes.SHA1()))
        self._by_client.setdefault(client_id.lower(), []).append(registered)
        return registered

    def remove(self, client_id: str) -> None:
        """Delete every certificate of app ``client_id`` (as removing them in the portal does)."""
        self._by_client.pop(client_id.lower(), None)

    def verify(self, client: Client, form: Mapping[str, str], *, audiences: Iterable[str], now: float) -> None:
        """Accept the form's client assertion for ``client``, else raise the EntraError Entra would answer."""
        assertion = form.get("client_assertion", "")
        self.presented.append(assertion)
        kind = form.get("client_assertion_type")
        if not kind:
            raise entra_error(900144, name="client_assertion_type")
        if kind != JWT_BEARER:
            raise entra_error(9002313, detail=f"client_assertion_type '{kind}' is not supported.")
        header, claims, signing_input, signature = _parse(assertion)
        registered = self._signing_certificate(client, header)
        _check_signature(registered, str(header.get("alg")), signing_input, signature)
        if claims.get("iss") != client.client_id or claims.get("sub") != client.client_id:
            raise entra_error(700021)
        wanted = list(audiences)
        if claims.get("aud") not in wanted:
            raise entra_error(50013, reason=f"The audience in the assertion was '{claims.get('aud')}' and the "
                                            f"expected audience is '{wanted[0]}'.")
        exp, nbf = _time(claims, "exp"), _time(claims, "nbf", default=_time(claims, "iat", default=now))
        if not nbf - CLOCK_SKEW <= now < exp + CLOCK_SKEW:
            raise entra_error(700024, now=_iso(now), nbf=_iso(nbf), exp=_iso(exp))
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise entra_error(50013, reason="The assertion has no 'jti' claim.")
        self._seen_jti = {seen: until for seen, until in self._seen_jti.items() if until > now}
        if jti in self._seen_jti:
            raise entra_error(50013, reason=f"The assertion with jti '{jti}' was already used (replay).")
        self._seen_jti[jti] = exp + CLOCK_SKEW

    def _signing_certificate(self, client: Client, header: Mapping[str, object]) -> RegisteredCertificate:
        registered = self._by_client.get(client.client_id.lower(), [])
        if "x5t#S256" in header:
            digest, sha256 = _thumbprint(header["x5t#S256"]), True
        elif "x5t" in header:
            digest, sha256 = _thumbprint(header["x5t"]), False
        else:
            raise entra_error(700027, reason="The assertion's header has neither 'x5t#S256' nor 'x5t'.")
        found = next((r for r in registered if (r.sha256 if sha256 else r.sha1) == digest), None)
        if found is None:
            raise entra_error(700027, reason=f"The key was not found., Thumbprint of key used by client: "
                                             f"'{digest.hex().upper()}'")
        x5c = header.get("x5c")
        if x5c is not None:
            from cryptography.hazmat.primitives.serialization import Encoding

            first = x5c[0] if isinstance(x5c, list) and x5c and isinstance(x5c[0], str) else ""
            try:
                # MSAL sends the PEM body with its line breaks (Entra accepts it); RFC 7515 has none.
                leaf = base64.b64decode("".join(first.split()), validate=True)
            except (binascii.Error, ValueError):
                leaf = b""
            if leaf != found.certificate.public_bytes(Encoding.DER):
                raise entra_error(700027, reason="The first certificate of 'x5c' is not the signing certificate.")
        return found


def _parse(assertion: str) -> tuple[dict[str, object], dict[str, object], bytes, bytes]:
    parts = assertion.split(".")
    try:
        if len(parts) != 3:
            raise ValueError("not three parts")
        header, claims = (json.loads(_b64url(part)) for part in parts[:2])
        signature = _b64url(parts[2])
    except (ValueError, UnicodeDecodeError):
        raise entra_error(50027) from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise entra_error(50027)
    return header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), signature


def _check_signature(registered: RegisteredCertificate, alg: str, signing_input: bytes, signature: bytes) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = registered.certificate.public_key()
    if alg not in ("PS256", "RS256") or not isinstance(key, rsa.RSAPublicKey):
        raise entra_error(700027, reason=f"The signing algorithm '{alg}' is not supported.")
    scheme = (padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
              if alg == "PS256" else padding.PKCS1v15())
    try:
        key.verify(signature, signing_input, scheme, hashes.SHA256())
    except InvalidSignature:
        raise entra_error(700027, reason="The signature does not verify with the key of certificate "
                                         f"'{registered.thumbprint}'.") from None


def _b64url(text: str) -> bytes:
    # Padding is optional (MSAL sends it in thumbprints, the JWS spec leaves it out).
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:
        raise ValueError("not base64url") from exc


def _thumbprint(value: object) -> bytes:
    try:
        return _b64url(value) if isinstance(value, str) else b""
    except ValueError:
        return b""


def _time(claims: Mapping[str, object], name: str, default: float | None = None) -> float:
    value = claims.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise entra_error(50027)
    return float(value)


def _iso(epoch: float) -> str:
    from .entra import timestamp

    return timestamp(epoch)
