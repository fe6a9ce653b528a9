"""Compact HS256 JSON Web Tokens: sign claims, and decode a token checking signature, times and audience.

Stdlib only. The simulated authority signs with a per-instance random key, so only it can validate its tokens.
:class:`InvalidToken` messages say what is wrong, never the token itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping


class InvalidToken(Exception):
    """A token failed validation; the message gives the reason and never contains the token."""


def b64url_encode(data: bytes) -> str:
    """Base64url without padding, as JWT and PKCE use it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Inverse of :func:`b64url_encode`; raises :class:`InvalidToken` on anything that is not base64url."""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidToken("not base64url") from exc


def encode(claims: Mapping[str, object], key: bytes, *, kid: str | None = None) -> str:
    """Sign ``claims`` with HMAC-SHA256 and return ``header.payload.signature``."""
    header: dict[str, object] = {"typ": "JWT", "alg": "HS256"}
    if kid is not None:
        header["kid"] = kid
    signing_input = f"{_segment(header)}.{_segment(claims)}"
    return f"{signing_input}.{b64url_encode(_sign(signing_input, key))}"


def decode(token: str, key: bytes, *, now: float, audience: str | None = None) -> dict[str, object]:
    """The claims of a token signed with ``key``, valid at ``now`` and (when given) issued for ``audience``."""
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidToken("malformed token: expected three dot-separated parts")
    header, claims = (_json_object(part) for part in parts[:2])
    if header.get("alg") != "HS256":
        raise InvalidToken(f"unexpected signing algorithm {header.get('alg')!r}")
    if not hmac.compare_digest(b64url_decode(parts[2]), _sign(f"{parts[0]}.{parts[1]}", key)):
        raise InvalidToken("bad signature")
    exp, nbf = _number(claims, "exp"), _number(claims, "nbf", default=0.0)
    if now >= exp:
        raise InvalidToken(f"expired {now - exp:.0f} s ago")
    if now < nbf:
        raise InvalidToken(f"not valid for another {nbf - now:.0f} s")
    if audience is not None and _normal_audience(claims.get("aud")) != _normal_audience(audience):
        raise InvalidToken(f"wrong audience {claims.get('aud')!r}, expected {audience!r}")
    return claims


def _segment(value: Mapping[str, object]) -> str:
    return b64url_encode(json.dumps(value, separators=(",", ":")).encode())


def _sign(signing_input: str, key: bytes) -> bytes:
    return hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()


def _json_object(segment: str) -> dict[str, object]:
    try:
        value = json.loads(b64url_decode(segment))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidToken("malformed token: a part is not JSON") from exc
    if not isinstance(value, dict):
        raise InvalidToken("malformed token: a part is not a JSON object")
    return value


def _number(claims: Mapping[str, object], name: str, default: float | None = None) -> float:
    value = claims.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidToken(f"claim {name!r} missing or not a number")
    return float(value)


def _normal_audience(value: object) -> object:
    # Entra resource URIs compare equal with or without a trailing slash.
    return value.rstrip("/") if isinstance(value, str) else value
