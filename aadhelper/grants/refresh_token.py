"""Refresh-token grant for user profiles (``credential = "user"``), with rotation that never loses the sign-in.

One refresh token, from the keyring, serves access tokens for every scope set of its profile. Each use may return
a new one (rotation); this module decides which token to present, stores the new one, and keeps one profile's
refreshes strictly one at a time.

Rules, and why:

* **One refresh at a time per profile**, across token-source instances. A strict authority revokes the whole grant
  when a used refresh token is presented again; two concurrent refreshes would both present the same token. The
  daemon's token fetcher creates a profile's source per fetch, and several may run at once, so the lock lives in
  :class:`SignIns`, which the fetcher owns for its lifetime, keyed by profile name.
* **Persist before serving.** The reply's refresh token is written to the keyring before its access token is
  returned, and before anything else can fail (the access token is parsed after the write). The exchange is
  shielded from cancellation: once the old token is on its way, the authority may already have rotated it, and a
  daemon shutting down must not drop the only copy of the new one.
* **Never fall back to a used token while the new one is known.** If the keyring refuses the write, the new token
  stays in memory (in :class:`SignIns`, so a reloaded source sees it too), is the one presented next, and
  :meth:`SignIns.keep_storing` retries the write with backoff. :meth:`SignIns.unsaved` names such profiles (for
  ``status``); when the fetcher stops, :meth:`SignIns.store_before_exit` tries once more and logs at ERROR level
  each new token that is lost. A write given up on because the keyring did not answer in time may land later: a
  keyring that then holds the new token counts as saved.
* **A login or logout wins.** The write is a compare-and-swap: it happens only if the keyring still holds the token
  this refresh replaced. Otherwise ``aadhelper login``/``logout`` changed it meanwhile and the user's newer decision
  stands (the CLI runs in another process, so the compare and the write are not one atomic step; the gap is a
  keyring round trip).
* **No retry storm.** When the authority refuses the refresh token itself (``invalid_grant``, or the sign-in
  policies of AADSTS 70008, 700082, 50173, 70043, 50076, 50079), that token is marked dead for the whole profile:
  every scope set fails at once with the same :class:`~aadhelper.errors.LoginRequired` (naming ``aadhelper login
  NAME`` and carrying the authority's ``claims``) until the keyring holds another token.

SIGKILL at any point of a refresh, honestly (of the process doing it: the daemon's fetcher, see
:mod:`aadhelper.fetcher.child`; a SIGKILL of the daemon alone lets the fetcher finish the exchange and the write):
killed before the request reaches the authority, nothing changed.
Killed while the keyring write runs, the secret store's replacement is crash-safe (old or new value, never a mix).
Killed after the authority rotated but before the write finished, the keyring holds a token the authority has
already seen used. No client-side order can close that window, because the authority's commit and the keyring
write are two systems. Entra does not revoke used refresh tokens, so there it is harmless; strict rotating
authorities offer a reuse grace period for exactly this case (Okta's grace period, Auth0's reuse interval), and
the restarted fetcher's retry falls inside it. The simulated authority models both (``refresh_token_reuse`` and
``refresh_token_reuse_grace``). What aadhelper guarantees is that the window is as short as it can be: one
keyring write after the reply arrives, with nothing in between.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import trio

from ..config import Profile
from ..errors import LoginRequired, SecretStoreError
from ..secret_chunks import REFRESH_TOKEN
from ..tokens import Secret, TokenResponse
from .http import parse_token_reply, post_form, raise_for_error

if TYPE_CHECKING:
    from . import SecretAccess

log = logging.getLogger("aadhelper.grants")

SECRET_KIND = REFRESH_TOKEN
#: Asked for with every user sign-in and refresh besides the resource's scopes, as MSAL does: a refresh token
#: (``offline_access``) and an id token naming the account (``openid profile``).
OIDC_SCOPES = ("openid", "profile", "offline_access")
#: AADSTS codes after which the refresh token is dead for every resource, not just the scope set asked for.
_DEAD_TOKEN_CODES = frozenset({70008, 700082, 50173, 70043, 50076, 50079})
#: Backoff for storing a rotated refresh token the keyring refused (seconds).
STORE_RETRY_START = 1.0
STORE_RETRY_MAX = 60.0


def with_oidc_scopes(scopes: tuple[str, ...]) -> tuple[str, ...]:
    """``scopes`` plus the OpenID scopes a user sign-in asks for, without repeats."""
    return scopes + tuple(s for s in OIDC_SCOPES if s not in scopes)


def not_signed_in(profile: str) -> LoginRequired:
    return LoginRequired(f"profile {profile!r} is not signed in", profile=profile,
                         hint=f"run `aadhelper login {profile}`")


def _digest(value: Secret | None) -> str | None:
    # Dead and replaced tokens are remembered by digest: no need to keep a secret around to compare with it.
    return hashlib.sha256(value.reveal().encode()).hexdigest() if value else None


@dataclass(eq=False)
class _Chain:
    """What the fetcher knows about one profile's refresh-token chain beyond the keyring."""

    lock: trio.Lock = field(default_factory=trio.Lock)
    #: The newest refresh token when the keyring has not taken it yet ...
    unsaved: Secret | None = None
    #: ... and the digest of the keyring value it replaces.
    replaces: str | None = None
    #: The digest of a refresh token the authority refused for good, and its error.
    dead: str | None = None
    dead_error: LoginRequired | None = None


class SignIns:
    """Per-profile refresh state of the user profiles, shared by every token source the fetcher creates."""

    def __init__(self, secrets: SecretAccess) -> None:
        self._secrets = secrets
        self._chains: dict[str, _Chain] = {}
        self._unsaved = trio.Event()

    def _chain(self, profile: str) -> _Chain:
        return self._chains.setdefault(profile, _Chain())

    @asynccontextmanager
    async def turn(self, profile: str) -> AsyncIterator[Turn]:
        """The profile's refresh lock, and the refresh token to present while holding it.

        Raises :class:`LoginRequired` when there is none (or it is dead), :class:`SecretStoreError` when the keyring
        cannot be read and no newer token is in memory.
        """
        chain = self._chain(profile)
        async with chain.lock:
            yield await self._begin(profile, chain)

    async def _begin(self, profile: str, chain: _Chain) -> Turn:
        current: Secret | None
        try:
            stored: Secret | None = await self._secrets.get(profile, SECRET_KIND)
        except SecretStoreError:
            if chain.unsaved is None:
                raise
            # The keyring cannot say whether a login happened; the newest token known is still ours to use.
            current, base = chain.unsaved, chain.replaces
        else:
            if chain.unsaved is not None and stored == chain.unsaved:
                # A write given up on (the keyring did not answer in time) landed after all.
                chain.unsaved = chain.replaces = None
            if chain.unsaved is not None and _digest(stored) != chain.replaces:
                log.info("profile %r: the stored refresh token changed (login or logout); dropping the unsaved one",
                         profile)
                chain.unsaved = chain.replaces = None
            current, base = _newest(chain, stored)
        if current is None:
            raise not_signed_in(profile)
        dead = _dead_error(chain, current)
        if dead is not None:
            raise dead
        return Turn(self, profile, chain, current, base)

    async def _store(self, profile: str, chain: _Chain, *, retrying: bool = False) -> None:
        """Write ``chain.unsaved`` if the keyring still holds what it replaces (lock held)."""
        assert chain.unsaved is not None
        try:
            stored = await self._secrets.get(profile, SECRET_KIND)
            if stored == chain.unsaved:
                pass  # a write given up on (the keyring did not answer in time) landed after all
            elif _digest(stored) == chain.replaces:
                await self._secrets.set(profile, SECRET_KIND, chain.unsaved)
                if retrying:
                    log.info("profile %r: stored the rotated refresh token in the keyring", profile)
            else:
                log.info("profile %r: the stored refresh token changed during the refresh (login or logout); "
                         "keeping that one", profile)
        except SecretStoreError as exc:
            log.warning("profile %r: could not store the rotated refresh token (%s); keeping it in memory and "
                        "retrying", profile, exc.one_line())
            self._unsaved.set()
            return
        chain.unsaved = chain.replaces = None

    async def keep_storing(self, *, start: float = STORE_RETRY_START, largest: float = STORE_RETRY_MAX) -> None:
        """Run for the fetcher's lifetime: store rotated refresh tokens the keyring refused, with backoff."""
        delay = start
        while True:
            await self._unsaved.wait()
            await trio.sleep(delay)
            self._unsaved = trio.Event()
            for name, chain in list(self._chains.items()):
                if chain.unsaved is not None:
                    async with chain.lock:
                        if chain.unsaved is not None:
                            await self._store(name, chain, retrying=True)
            delay = min(delay * 2, largest) if self._unsaved.is_set() else start

    def unsaved(self) -> tuple[str, ...]:
        """The profiles whose newest refresh token is only in this process's memory (the keyring refused it)."""
        return tuple(sorted(name for name, chain in self._chains.items() if chain.unsaved is not None))

    async def store_before_exit(self, within: float) -> None:
        """The process is about to exit: try once more (for at most ``within`` seconds) to store each unsaved
        refresh token, and log loudly each one that is lost (at an authority that revokes used refresh tokens, the
        sign-in cannot be refreshed without it)."""
        with trio.CancelScope(shield=True), trio.move_on_after(within):
            for name in self.unsaved():
                chain = self._chains[name]
                async with chain.lock:
                    if chain.unsaved is not None:
                        await self._store(name, chain, retrying=True)
        for name in self.unsaved():
            log.error("profile %r: the new refresh token could not be stored in the keyring and is lost with this "
                      "process; run `aadhelper login %s`", name, name)

    async def login_required(self, profile: str) -> LoginRequired | None:
        """Why ``profile`` needs ``aadhelper login`` (no or a dead refresh token); None when it is signed in or the
        keyring cannot tell."""
        chain = self._chains.get(profile) or _Chain()
        if chain.unsaved is not None:
            current: Secret | None = chain.unsaved
        else:
            try:
                stored: Secret | None = await self._secrets.get(profile, SECRET_KIND)
            except SecretStoreError:
                return None
            current, _ = _newest(chain, stored)
        if current is None:
            return not_signed_in(profile)
        return _dead_error(chain, current)


def _newest(chain: _Chain, stored: Secret | None) -> tuple[Secret | None, str | None]:
    """The refresh token to present given the keyring's value, and the digest of the keyring value it replaces."""
    if chain.unsaved is not None and _digest(stored) == chain.replaces:
        return chain.unsaved, chain.replaces
    return stored, _digest(stored)


def _dead_error(chain: _Chain, current: Secret) -> LoginRequired | None:
    if chain.dead is None or chain.dead != _digest(current):
        return None
    assert chain.dead_error is not None
    return chain.dead_error.copy()


class Turn:
    """One refresh under the profile's lock: the token to present, and what to do with the authority's answer."""

    def __init__(self, sign_ins: SignIns, profile: str, chain: _Chain, current: Secret, base: str | None) -> None:
        self._sign_ins = sign_ins
        self._profile = profile
        self._chain = chain
        #: The refresh token to present.
        self.current = current
        self._base = base

    async def replace(self, new: Secret | None) -> None:
        """The authority returned ``new``: keep it in memory at once, then store it (compare-and-swap)."""
        if new is None or new == self.current:
            return
        self._chain.unsaved, self._chain.replaces = new, self._base
        self.current = new
        await self._sign_ins._store(self._profile, self._chain)

    def refused(self, exc: LoginRequired) -> None:
        """The authority refused the token: remember it dead when no scope set can use it any more."""
        if exc.error == "invalid_grant" or exc.aadsts in _DEAD_TOKEN_CODES:
            self._chain.dead, self._chain.dead_error = _digest(self.current), exc

    def __repr__(self) -> str:
        return f"Turn(profile={self._profile!r}, current={self.current!r})"


class RefreshTokenSource:
    """Access tokens for a signed-in user (public client, no secret) from the refresh token in the keyring."""

    def __init__(self, profile: Profile, *, client: httpx.AsyncClient, sign_ins: SignIns,
                 clock: Callable[[], float]) -> None:
        self._profile = profile
        self._client = client
        self._sign_ins = sign_ins
        self._clock = clock

    async def acquire(self, scopes: tuple[str, ...]) -> TokenResponse:
        profile = self._profile
        async with self._sign_ins.turn(profile.name) as turn:
            now = self._clock()
            form = {
                "grant_type": "refresh_token",
                "client_id": profile.client_id,
                "refresh_token": turn.current.reveal(),
                "scope": " ".join(with_oidc_scopes(scopes)),
            }
            # From here the authority may rotate the token at any moment: see the module docstring.
            with trio.CancelScope(shield=True):
                try:
                    status, headers, body = await post_form(self._client, profile.token_endpoint, form,
                                                            profile=profile.name)
                finally:
                    form.clear()  # a traceback that keeps this frame must not keep the refresh token
                try:
                    raise_for_error(status, headers, body, profile=profile.name, action="sign-in refresh")
                except LoginRequired as exc:
                    turn.refused(exc)
                    raise
                await turn.replace(_refresh_token_of(body))
        return parse_token_reply(body, scopes=scopes, now=now, profile=profile.name)

    def __repr__(self) -> str:
        return f"RefreshTokenSource(profile={self._profile.name!r})"


def _refresh_token_of(body: dict[str, Any] | None) -> Secret | None:
    value = body.get("refresh_token") if body else None
    return Secret(value) if isinstance(value, str) and value else None


__all__ = ["OIDC_SCOPES", "SECRET_KIND", "RefreshTokenSource", "SignIns", "Turn", "not_signed_in",
           "with_oidc_scopes"]
