"""The daemon's validated view of a ``token`` or ``invalidate`` request (see :mod:`aadhelper.protocol` for the
wire format). Only the daemon reads requests, so this lives on its side: the thin client never loads it, and
dataclasses (~2 ms to import) are fine here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ProtocolError
from .protocol import MAX_MIN_VALID

#: Longest profile name, scope and remote URL a request may carry (the git helper's URL limit is git's line limit).
MAX_PROFILE = 200
MAX_SCOPE = 2000
MAX_URL = 65535


@dataclass(frozen=True)
class TokenRequest:
    """A validated ``token`` or ``invalidate`` request."""

    profile: str | None
    scopes: tuple[str, ...] | None
    min_valid: int | None
    url: str | None = None

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> TokenRequest:
        """Validate the fields of a request; a wrong type is a :class:`ProtocolError` naming the field."""
        profile = message.get("profile")
        if profile is not None and (not isinstance(profile, str) or not profile or len(profile) > MAX_PROFILE):
            raise ProtocolError("field 'profile' must be a non-empty string")
        scopes = message.get("scopes")
        if scopes is not None:
            if (not isinstance(scopes, list) or not scopes
                    or not all(isinstance(s, str) and s and len(s) <= MAX_SCOPE for s in scopes)):
                raise ProtocolError("field 'scopes' must be a non-empty list of strings")
            scopes = tuple(scopes)
        min_valid = message.get("min_valid")
        if min_valid is not None and (
                not isinstance(min_valid, int) or isinstance(min_valid, bool) or not 0 <= min_valid <= MAX_MIN_VALID):
            raise ProtocolError(f"field 'min_valid' must be an integer number of seconds between 0 and {MAX_MIN_VALID}")
        url = message.get("url")
        if url is not None and (not isinstance(url, str) or not url or len(url) > MAX_URL):
            raise ProtocolError("field 'url' must be a non-empty string")
        return cls(profile, scopes, min_valid, url)
