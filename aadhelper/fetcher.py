"""The daemon's token fetcher: everything a fresh token costs (the keyring read, the authority's HTTPS
exchange, refresh-token rotation), behind one small interface the token cache uses.

Why a separate piece: the daemon answers requests on one trio thread, and a refresh done on that thread
stalls it for milliseconds at a time (the keyring read holds the GIL in a worker thread, TLS handshakes and
building the HTTP request run on the loop). :class:`~aadhelper.fetcher_process.ProcessFetcher` therefore
runs the fetcher in a child process, and the serving loop only sends one line and reads one back.
:class:`LocalFetcher` is the same work in-process: what the child runs, and what the demo and in-process
tests use.

A fetcher is an async context manager (its background duties: connecting the keyring early, retrying the
storage of a rotated refresh token, one last try at exit) that hands out one
:class:`~aadhelper.cache.TokenSource` per profile, says whether a user profile needs ``aadhelper login``, and
which profiles have a new sign-in the keyring has not taken yet. Every keyring call has a deadline
(:data:`KEYRING_DEADLINE`, :class:`AsyncSecrets`). The messages between daemon and child are JSON lines
(:mod:`aadhelper.protocol`'s encoding); the codecs for profiles, tokens and replies live here, next to
the interface they carry.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import trio

from . import protocol
from .config import Profile
from .errors import AadhelperError, KeyringUnavailable, LoginRequired, ProtocolError, error_from_wire
from .proxy import ProxySetting
from .tokens import Secret, Token, wipe

if TYPE_CHECKING:
    from types import TracebackType

    from .cache import TokenSource
    from .secret_store import SecretStore

log = logging.getLogger("aadhelper.fetcher")

#: Longest wait for one keyring call (seconds); a call normally takes milliseconds. Past it the call is abandoned
#: and fails as "keyring unavailable" (see :class:`AsyncSecrets`).
KEYRING_DEADLINE = 10.0
#: Longest the fetcher spends at exit on a last attempt to store rotated refresh tokens the keyring refused so far
#: (seconds; the daemon kills a fetcher that has not exited :data:`~aadhelper.fetcher_process.STOP_GRACE` seconds
#: after it asked it to stop).
EXIT_STORE_DEADLINE = 3.0


class Fetcher(Protocol):
    """Obtains tokens for the daemon's cache. Use as ``async with fetcher:``."""

    async def __aenter__(self) -> Fetcher: ...

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None: ...

    def source(self, profile: Profile) -> TokenSource:
        """The token source for ``profile`` (cheap: the cache asks again whenever the profile changes)."""
        ...

    async def login_required(self, profile: str) -> LoginRequired | None:
        """Why the user profile ``profile`` needs ``aadhelper login``; None when signed in or unknown."""
        ...

    async def unsaved_sign_ins(self) -> tuple[str, ...]:
        """The user profiles whose newest refresh token the keyring has refused so far (sorted): it lives only in
        the fetcher's memory, is retried with backoff, and is lost if the fetcher stops before a write succeeds."""
        ...


# -- in this process --------------------------------------------------------------------------------


class AsyncSecrets:
    """The blocking secret store seen from trio: every call in a worker thread, one at a time, each within
    :data:`KEYRING_DEADLINE`.

    One at a time because keyring backends are not documented as thread-safe (the store's own Secret Service
    connection carries one exchange at a time and locks itself too), and the calls are rare (a refresh, not
    a request).

    A keyring that does not answer (its D-Bus peer stopped or wedged) must not wedge the fetcher: a call that
    outlives the deadline is abandoned (its thread stays blocked in the store) and fails with
    :class:`~aadhelper.errors.KeyringUnavailable`. The abandoned thread still holds the one-at-a-time token
    until the store returns, so the calls made meanwhile could only queue behind it: they fail at once with
    the same error instead (a status naming several profiles would otherwise take one deadline each). The
    moment the store answers the abandoned call, the next call runs normally: the fetcher recovers by itself.
    """

    def __init__(self, store: SecretStore, *, deadline: float = KEYRING_DEADLINE) -> None:
        self._store = store
        self._deadline = deadline
        self._limiter = trio.CapacityLimiter(1)
        #: Set when the abandoned call that still blocks the store returns; None when none was abandoned.
        self._stuck: trio.Event | None = None
        self._stuck_since = 0.0

    async def prepare(self) -> None:
        """Let the store choose its backend and connect now, so that the first secret read does not wait for it."""
        prepare = getattr(self._store, "prepare", None)  # optional: a store may have nothing to get ready
        if prepare is None:
            return
        # Only a head start: the first read meets a failure again and reports it.
        try:
            await self._run(prepare, action="open", what="it", profile=None)
        except KeyringUnavailable as exc:  # did not answer in time
            log.warning("%s", exc.one_line())
        except Exception:
            log.exception("could not prepare the secret store")

    async def get(self, profile: str, kind: str) -> Secret | None:
        result: Secret | None = await self._run(self._store.get, profile, kind, action="read",
                                                what=f"the {kind} of profile {profile!r}", profile=profile)
        return result

    async def set(self, profile: str, kind: str, value: Secret) -> None:
        await self._run(self._store.set, profile, kind, value, action="store",
                        what=f"the {kind} of profile {profile!r}", profile=profile)

    async def answering(self) -> None:
        """Return once no abandoned call blocks the store (at once when none does)."""
        if self._stuck is not None:
            await self._stuck.wait()

    async def _run(self, function: Callable[..., Any], *args: Any, action: str, what: str,
                   profile: str | None) -> Any:
        if self._stuck is not None:
            if not self._stuck.is_set():
                waited = trio.current_time() - self._stuck_since
                raise self._unanswered(f"has not answered for {waited:.0f} s", action, what, profile)
            self._stuck = None
        answered, started = trio.Event(), threading.Event()
        token = trio.lowlevel.current_trio_token()
        began = trio.current_time()

        def finished() -> None:  # in trio
            answered.set()
            if self._stuck is answered:
                log.info("the OS keyring answered again, %.0f s after a call to it", trio.current_time() - began)

        def call() -> Any:
            started.set()
            try:
                return function(*args)
            finally:  # in the worker thread, also when trio no longer waits for it
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(finished)

        with trio.move_on_after(self._deadline):
            # Abandoned on cancellation too: a keyring that does not answer must not hold up the exit.
            return await trio.to_thread.run_sync(call, limiter=self._limiter, abandon_on_cancel=True)
        # A call still waiting for its turn was simply withdrawn; one whose thread runs now blocks the store.
        if started.is_set() and not answered.is_set():
            self._stuck, self._stuck_since = answered, began
        raise self._unanswered(f"did not answer within {self._deadline:.0f} s", action, what, profile)

    @staticmethod
    def _unanswered(how: str, action: str, what: str, profile: str | None) -> KeyringUnavailable:
        return KeyringUnavailable(
            f"the OS keyring {how}: cannot {action} {what}", profile=profile,
            hint="check the keyring daemon (e.g. gnome-keyring-daemon) of your session; aadhelper tries again "
                 "by itself once it answers")


class LocalFetcher:
    """Fetches in this process: one HTTP client per CA bundle, the secret store, the user profiles' sign-ins."""

    def __init__(self, store: SecretStore, *, clock: Callable[[], float] = time.time) -> None:
        from .grants import HttpClients
        from .grants.refresh import SignIns

        self._clock = clock
        self._http = HttpClients()
        self._secrets = AsyncSecrets(store)
        # One for the fetcher's lifetime, outliving the sources made per fetch: refreshes of a profile never
        # overlap.
        self._sign_ins = SignIns(self._secrets)
        self._nursery_cm: Any = None
        self._nursery: trio.Nursery | None = None

    async def __aenter__(self) -> LocalFetcher:
        self._nursery_cm = trio.open_nursery()
        self._nursery = nursery = await self._nursery_cm.__aenter__()
        nursery.start_soon(self._secrets.prepare)
        nursery.start_soon(self._sign_ins.keep_storing)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        assert self._nursery is not None
        try:
            self._nursery.cancel_scope.cancel()
            await self._nursery_cm.__aexit__(exc_type, exc, tb)
        finally:
            with trio.CancelScope(shield=True):
                await self._sign_ins.store_before_exit(EXIT_STORE_DEADLINE)
                await self._http.aclose()

    def source(self, profile: Profile) -> TokenSource:
        from .grants import make_source

        return make_source(profile, http=self._http, secrets=self._secrets, clock=self._clock,
                           sign_ins=self._sign_ins)

    async def login_required(self, profile: str) -> LoginRequired | None:
        return await self._sign_ins.login_required(profile)

    async def unsaved_sign_ins(self) -> tuple[str, ...]:
        return self._sign_ins.unsaved()


# -- messages between the daemon and a fetcher process ------------------------------------------------

#: The profile settings a fetch needs (scopes travel per request; min_valid and git URLs are the cache's).
_PROFILE_FIELDS = ("name", "tenant", "client_id", "authority", "credential", "ca_bundle")


def profile_to_wire(profile: Profile) -> dict[str, Any]:
    return {**{key: getattr(profile, key) for key in _PROFILE_FIELDS}, "proxy": profile.proxy.to_wire()}


def profile_from_wire(wire: object, scopes: tuple[str, ...]) -> Profile:
    if not isinstance(wire, dict):
        raise ProtocolError("fetch request without a profile")
    text = {key: wire.get(key) for key in _PROFILE_FIELDS if key != "ca_bundle"}
    ca_bundle = wire.get("ca_bundle")
    if not all(isinstance(value, str) for value in text.values()) or not isinstance(ca_bundle, (str, type(None))):
        raise ProtocolError("fetch request with a malformed profile")
    try:
        proxy = ProxySetting.from_wire(wire.get("proxy"))
    except ValueError:
        raise ProtocolError("fetch request with a malformed proxy setting") from None
    return Profile(name=str(text["name"]), tenant=str(text["tenant"]), client_id=str(text["client_id"]),
                   scopes=scopes, authority=str(text["authority"]), credential=str(text["credential"]),
                   ca_bundle=ca_bundle, proxy=proxy)


def scopes_from_wire(wire: object) -> tuple[str, ...]:
    return strings_from_wire(wire, "scopes")


def strings_from_wire(wire: object, what: str) -> tuple[str, ...]:
    """A list of strings (scopes, profile names) sent between daemon and fetcher."""
    if not isinstance(wire, list) or not all(isinstance(s, str) for s in wire):
        raise ProtocolError(f"malformed {what} between daemon and fetcher")
    return tuple(wire)


def token_to_wire(token: Token) -> dict[str, Any]:
    return {"access_token": token.access_token.reveal(), "token_type": token.token_type,
            "expires_on": token.expires_on, "refresh_on": token.refresh_on, "scopes": list(token.scopes),
            "obtained_at": token.obtained_at, "account": token.account}


def token_from_wire(wire: object) -> Token:
    if not isinstance(wire, dict):
        raise ProtocolError("fetch reply without a token")
    access_token, token_type, refresh_on = wire.get("access_token"), wire.get("token_type"), wire.get("refresh_on")
    account = wire.get("account")
    if not isinstance(access_token, str) or not isinstance(token_type, str) \
            or not isinstance(account, (str, type(None))):
        raise ProtocolError("fetch reply with a malformed token")
    return Token(access_token=Secret(access_token), token_type=token_type, expires_on=_seconds(wire, "expires_on"),
                 refresh_on=None if refresh_on is None else _seconds(wire, "refresh_on"),
                 scopes=scopes_from_wire(wire.get("scopes")), obtained_at=_seconds(wire, "obtained_at"),
                 account=account)


def error_of_reply(reply: dict[str, Any]) -> AadhelperError | None:
    """The error a reply carries (``{"error": {...}}``), else None."""
    wire = reply.get("error")
    return error_from_wire(wire) if isinstance(wire, dict) else None


def _seconds(wire: dict[str, Any], key: str) -> float:
    value = wire.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ProtocolError(f"fetch reply with a malformed token ({key})")
    return float(value)


class LineLink:
    """One end of the daemon-fetcher socket: whole JSON lines out (one writer at a time) and in.

    The lines carry access tokens (and the fetcher's replies nothing else secret), so neither end leaves a copy
    behind: a line sent is wiped once written, and received bytes go straight into the channel's
    :class:`~aadhelper.protocol.LineBuffer` (which zeroes what it hands out), each line wiped once decoded.
    """

    #: Largest line either side accepts: a token reply is a few KB.
    MAX_LINE = 1024 * 1024
    #: The receive buffer's first size: a token reply fits, so it normally never grows.
    _FIRST_BUFFER = 64 * 1024

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._sock = sock
        self._lines = protocol.LineBuffer(self.MAX_LINE, size=self._FIRST_BUFFER)
        self._send_lock = trio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        line = protocol.encode(message)
        try:
            with memoryview(line) as view:
                sent = 0
                async with self._send_lock:
                    while sent < len(line):
                        sent += await self._sock.send(view[sent:])
        finally:
            wipe(line)

    async def receive(self) -> dict[str, Any] | None:
        """The next message; None at end of stream. A malformed or oversized line raises ProtocolError."""
        try:
            while (line := self._lines.pop_line()) is None:
                with self._lines.space() as space:
                    received = await self._sock.recv_into(space)
                if not received:
                    return None
                self._lines.commit(received)
        except protocol.LineTooLong:
            raise ProtocolError(f"a line longer than {self.MAX_LINE} bytes between daemon and fetcher") from None
        try:
            return protocol.decode(line)
        finally:
            wipe(line)

    def finish(self) -> None:
        """No more messages from this end (the other end reads end of stream); replies can still arrive."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._sock.close()
