"""What the authority remembers between requests: user grants and their refresh tokens, device codes, auth codes.

A *grant* is one user sign-in to one app; every refresh token issued under it belongs to its family. Redeeming a
refresh token marks it used; presenting a used one again is a replay, which (when ``revoke_on_reuse``) revokes
the whole family, as strict OAuth servers do (Entra itself lets old refresh tokens live). A ``grace`` window models
what rotating authorities offer for lost replies (Okta's grace period, Auth0's reuse interval): the family's most
recently redeemed token may be presented again for ``grace`` seconds after its first use. Every failure raises the
:class:`~aadhelper.testing.entra.EntraError` Entra answers with. Not thread-safe: the authority holds its lock.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from typing import Literal

from .directory import Client, User
from .entra import entra_error, timestamp
from .jwt import b64url_encode
from .scopes import UserScope

DeviceCodeState = Literal["pending", "approved", "denied", "redeemed"]
_USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ23456789"
_PKCE_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")


@dataclass
class Grant:
    user: User
    client: Client
    scope: UserScope
    issued_at: float
    #: Why the family was revoked, or None while it lives.
    revoked: str | None = None
    #: The family's most recently redeemed refresh token (the only one a grace window covers).
    last_redeemed: str | None = field(default=None, repr=False)


@dataclass
class _RefreshToken:
    grant: Grant
    issued_at: float
    used: bool = False
    #: When it was first redeemed.
    used_at: float | None = None


@dataclass
class DeviceCode:
    """A device-code sign-in waiting for the user; tests read ``user_code`` and call approve/deny/expire."""

    user_code: str
    client: Client
    scope: UserScope
    expires_at: float
    interval: int
    state: DeviceCodeState = "pending"
    user: User | None = None
    last_poll: float | None = None
    device_code: str = field(default="", repr=False)

    def approve(self, user: User) -> User:
        self.user, self.state = user, "approved"
        return user


@dataclass
class _AuthCode:
    client: Client
    user: User
    scope: UserScope
    redirect_uri: str
    challenge: str | None
    challenge_method: str
    nonce: str | None
    expires_at: float
    used: bool = False


class Sessions:
    def __init__(self) -> None:
        self._refresh: dict[str, _RefreshToken] = {}
        self._devices: dict[str, DeviceCode] = {}
        self._codes: dict[str, _AuthCode] = {}

    # refresh tokens -------------------------------------------------------------------------------------------

    def issue_refresh_token(self, grant: Grant, now: float, length: int) -> str:
        token = _opaque(length)
        self._refresh[token] = _RefreshToken(grant, now)
        return token

    def redeem_refresh_token(self, token: str, client: Client, now: float, *, lifetime: float,
                             revoke_on_reuse: bool, grace: float = 0.0) -> Grant:
        record = self._refresh.get(token)
        if record is None or record.grant.client is not client:
            raise entra_error(70000, param="refresh_token")
        grant = record.grant
        if grant.revoked is not None:
            raise entra_error(50173, reason=grant.revoked, issued=timestamp(grant.issued_at))
        if now >= record.issued_at + lifetime:
            raise entra_error(700082, issued=timestamp(record.issued_at),
                              inactive=f"{(now - record.issued_at) / 86400:.2f} days")
        if record.used and revoke_on_reuse and not _within_grace(record, token, now, grace):
            grant.revoked = "A refresh token of this grant was presented a second time (replay)."
            raise entra_error(50173, reason=grant.revoked, issued=timestamp(grant.issued_at))
        if record.used_at is None:
            record.used, record.used_at = True, now
        grant.last_redeemed = token
        return grant

    def revoke(self, *, username: str | None = None, client_id: str | None = None) -> int:
        """Revoke every live grant of the user and/or app (all when both are None); returns how many."""
        grants = {id(r.grant): r.grant for r in self._refresh.values() if r.grant.revoked is None
                  and (username is None or r.grant.user.username.lower() == username.lower())
                  and (client_id is None or r.grant.client.client_id.lower() == client_id.lower())}
        for grant in grants.values():
            grant.revoked = "The user might have changed or reset their password."
        return len(grants)

    # device codes ---------------------------------------------------------------------------------------------

    def new_device_code(self, client: Client, scope: UserScope, now: float, *, lifetime: int,
                        interval: int) -> DeviceCode:
        user_code = "".join(secrets.choice(_USER_CODE_ALPHABET) for _ in range(9))
        code = DeviceCode(user_code, client, scope, now + lifetime, interval, device_code=_opaque(180))
        self._devices[code.device_code] = code
        return code

    def device_code(self, user_code: str) -> DeviceCode:
        """The code a user would type; raises ValueError when there is none."""
        for code in self._devices.values():
            if code.user_code == user_code.strip().upper():
                return code
        raise ValueError(f"no device code has the user code {user_code!r}")

    def pending_device_codes(self, now: float) -> list[DeviceCode]:
        return [c for c in self._devices.values() if c.state == "pending" and now < c.expires_at]

    def poll_device_code(self, device_code: str, client: Client, now: float) -> DeviceCode:
        """The approved code (now redeemed), or the error a poll gets: pending, slow_down, declined, expired."""
        code = self._devices.get(device_code)
        if code is None or code.client is not client or code.state == "redeemed":
            raise entra_error(70018)
        if now >= code.expires_at:
            raise entra_error(70019)
        if code.state == "denied":
            # The device flow's own name for what the browser flow calls access_denied.
            raise entra_error(65004, error="authorization_declined")
        if code.state == "pending":
            too_soon = code.last_poll is not None and now - code.last_poll < code.interval
            code.last_poll = now
            if too_soon:
                # RFC 8628 3.5: the interval grows by 5 s for this and every later poll.
                code.interval += 5
                raise entra_error(50196, interval=code.interval)
            raise entra_error(70016)
        code.state = "redeemed"
        return code

    # authorization codes --------------------------------------------------------------------------------------

    def new_auth_code(self, client: Client, user: User, scope: UserScope, *, redirect_uri: str,
                      challenge: str | None, challenge_method: str, nonce: str | None, expires_at: float) -> str:
        code = _opaque(700)
        self._codes[code] = _AuthCode(client, user, scope, redirect_uri, challenge, challenge_method, nonce,
                                      expires_at)
        return code

    def redeem_auth_code(self, code: str, client: Client, now: float, *, redirect_uri: str | None,
                         verifier: str | None) -> tuple[User, UserScope, str | None]:
        """The user, scope and nonce of a valid code, which is then used up."""
        record = self._codes.get(code)
        if record is None or record.client is not client:
            raise entra_error(70000, param="code")
        if record.used:
            raise entra_error(54005)
        if now >= record.expires_at:
            raise entra_error(70008)
        if redirect_uri != record.redirect_uri:
            raise entra_error(500112, got=redirect_uri or "", expected=record.redirect_uri)
        if record.challenge is not None and not _pkce_matches(record.challenge, record.challenge_method, verifier):
            raise entra_error(501481)
        record.used = True
        return record.user, record.scope, record.nonce


def _within_grace(record: _RefreshToken, token: str, now: float, grace: float) -> bool:
    """A retry of the family's latest redemption inside the grace window (its reply was lost), not a replay."""
    return (grace > 0 and record.grant.last_redeemed == token and record.used_at is not None
            and now - record.used_at <= grace)


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge of a PKCE verifier (RFC 7636 4.2)."""
    return b64url_encode(hashlib.sha256(verifier.encode("ascii")).digest())


def _pkce_matches(challenge: str, method: str, verifier: str | None) -> bool:
    if verifier is None or not _PKCE_VERIFIER.fullmatch(verifier):
        return False
    expected = pkce_challenge(verifier) if method == "S256" else verifier
    return hmac.compare_digest(expected, challenge)


def _opaque(length: int) -> str:
    # Entra's refresh tokens and codes are opaque base64url blobs starting "0.A", often over 1000 characters.
    return ("0.A" + secrets.token_urlsafe(length))[:max(length, 8)]
