"""Wire format between the thin client and the daemon: one JSON object per line, each way.

A connection carries one request line and one reply line (the client may send several requests in turn on
one connection; the daemon answers each in order). Every message carries the protocol version ``v``.

Request::

    {"v": 1, "op": "token", "profile": "graph", "scopes": ["https://graph.microsoft.com/.default"], "min_valid": 300}

Reply, success / failure::

    {"v": 1, "ok": true, "access_token": "...", "token_type": "Bearer", "expires_on": 1764400000, ...}
    {"v": 1, "ok": false, "error": {"code": "auth_failed", "message": "...", "hint": "...", "aadsts": 7000215}}

Operations:

=============  ===============================================  ===========================================
op             request fields                                   reply fields
=============  ===============================================  ===========================================
``ping``       --                                               ``pid``, ``version``
``token``      ``profile``?, ``scopes``?, ``min_valid``?,         ``access_token``, ``token_type``,
               ``url``?                                         ``expires_on``, ``profile``, ``scopes``,
                                                                ``username`` (with ``url``)
``invalidate`` ``profile``?, ``scopes``?, ``url``?              ``dropped`` (number of cached tokens dropped)
``status``     --                                               ``daemon`` {pid, uptime, socket, ...},
                                                                ``profiles`` [...]
``reload``     ``profile``?                                     ``profiles`` (names now configured)
=============  ===============================================  ===========================================

A missing ``profile`` means the configuration's default profile. ``url`` (the git credential helper's
remote URL) asks the daemon to pick the profile by the configured git URL prefixes instead; when no prefix
matches, the error code is ``no_profile_for_url``. Stdlib-only and cheap to import: the thin
client loads it on every call.
"""

from __future__ import annotations

import json

from .errors import ProtocolError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

VERSION = 1
#: Largest request line the daemon accepts, newline included. Real requests are ~100 bytes.
MAX_REQUEST_BYTES = 64 * 1024
#: Largest reply line the client accepts: access tokens run to a few KB, a status of many profiles more.
MAX_REPLY_BYTES = 4 * 1024 * 1024
#: Seconds the daemon waits for a complete request line before closing the connection.
READ_TIMEOUT = 5.0

OPS = frozenset({"ping", "token", "invalidate", "status", "reload"})


def encode(message: dict[str, Any]) -> bytes:
    """One message as one line of compact UTF-8 JSON, newline-terminated."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """Parse one line into a JSON object; anything else is a :class:`ProtocolError`."""
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed message: not JSON ({type(exc).__name__})") from None
    if not isinstance(message, dict):
        raise ProtocolError("malformed message: not a JSON object")
    version = message.get("v")
    if version != VERSION:
        raise ProtocolError(
            f"protocol version {version!r} is not supported (this side speaks {VERSION})",
            hint="restart the daemon after upgrading aadhelper",
        )
    return message


def request(op: str, **fields: Any) -> dict[str, Any]:
    """A request message; fields that are ``None`` are left out."""
    message: dict[str, Any] = {"v": VERSION, "op": op}
    message.update((key, value) for key, value in fields.items() if value is not None)
    return message


def ok_reply(**fields: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"v": VERSION, "ok": True}
    message.update(fields)
    return message


def error_reply(error: dict[str, Any]) -> dict[str, Any]:
    return {"v": VERSION, "ok": False, "error": error}


class TokenRequest:
    """A validated ``token`` or ``invalidate`` request (frozen)."""

    __slots__ = ("min_valid", "profile", "scopes", "url")

    profile: str | None
    scopes: tuple[str, ...] | None
    min_valid: int | None
    url: str | None

    def __init__(self, profile: str | None, scopes: tuple[str, ...] | None, min_valid: int | None,
                 url: str | None = None) -> None:
        object.__setattr__(self, "profile", profile)
        object.__setattr__(self, "scopes", scopes)
        object.__setattr__(self, "min_valid", min_valid)
        object.__setattr__(self, "url", url)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("TokenRequest is frozen")

    def __repr__(self) -> str:
        return (f"TokenRequest(profile={self.profile!r}, scopes={self.scopes!r}, min_valid={self.min_valid!r}, "
                f"url={self.url!r})")

    def _key(self) -> tuple[object, ...]:
        return (self.profile, self.scopes, self.min_valid, self.url)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TokenRequest) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> TokenRequest:
        """Validate the fields of a request; a wrong type is a :class:`ProtocolError` naming the field."""
        profile = message.get("profile")
        if profile is not None and (not isinstance(profile, str) or not profile or len(profile) > 200):
            raise ProtocolError("field 'profile' must be a non-empty string")
        scopes = message.get("scopes")
        if scopes is not None:
            if (not isinstance(scopes, list) or not scopes
                    or not all(isinstance(s, str) and s and len(s) <= 2000 for s in scopes)):
                raise ProtocolError("field 'scopes' must be a non-empty list of strings")
            scopes = tuple(scopes)
        min_valid = message.get("min_valid")
        if min_valid is not None and (
                not isinstance(min_valid, int) or isinstance(min_valid, bool) or not 0 <= min_valid <= 86400):
            raise ProtocolError("field 'min_valid' must be an integer number of seconds between 0 and 86400")
        url = message.get("url")
        if url is not None and (not isinstance(url, str) or not url or len(url) > 65535):
            raise ProtocolError("field 'url' must be a non-empty string")
        return cls(profile, scopes, min_valid, url)
