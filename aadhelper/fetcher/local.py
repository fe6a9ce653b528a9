"""The fetcher interface, and the fetcher in this process: what the child process runs, and what the demo and
in-process tests use.

A fetcher is an async context manager (its background duties: connecting the keyring early, retrying the
storage of a rotated refresh token, one last try at exit) that hands out one
:class:`~aadhelper.cache.TokenSource` per profile and tells, for a set of user profiles at once, which need
``aadhelper login`` and which have a new sign-in the keyring has not taken yet. Every keyring call has a
deadline (:data:`KEYRING_DEADLINE`, :class:`AsyncSecrets`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import trio

from ..config import Profile
from ..errors import KeyringUnavailable, LoginRequired
from ..tokens import Secret

if TYPE_CHECKING:
    from types import TracebackType

    from ..cache import TokenSource
    from ..secret_store import SecretStore

log = logging.getLogger("aadhelper.fetcher")

#: Longest wait for one keyring call (seconds); a call normally takes milliseconds. Past it the call is abandoned
#: and fails as "keyring unavailable" (see :class:`AsyncSecrets`).
KEYRING_DEADLINE = 10.0
#: Longest the fetcher spends at exit on a last attempt to store rotated refresh tokens the keyring refused so far
#: (seconds; the daemon kills a fetcher that has not exited :data:`~aadhelper.fetcher.parent.STOP_GRACE` seconds
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

    async def sign_in_states(self, profiles: Sequence[str]) -> SignInStates:
        """For the user profiles ``profiles``: why each needs ``aadhelper login`` (None when signed in or unknown),
        and which profiles' newest refresh token the keyring has refused so far (sorted: it lives only in the
        fetcher's memory, is retried with backoff, and is lost if the fetcher stops before a write succeeds).
        One question for all of them: ``status`` asks it once, whatever the number of profiles."""
        ...


    async def credential_states(self, profiles: Sequence[Profile]) -> dict[str, dict[str, Any]]:
        """For app profiles: what ``status`` shows of each credential (e.g. a certificate's thumbprint and expiry),
        with ``error`` (a wire error) when a fetch would fail on it. One question for all of them."""
        ...


#: (profile -> why it needs a login, or None; profiles with a sign-in not yet in the keyring)
SignInStates = tuple[dict[str, LoginRequired | None], tuple[str, ...]]


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
        from ..grants import HttpClients
        from ..grants.refresh_token import SignIns

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
        from ..grants import make_source

        return make_source(profile, http=self._http, secrets=self._secrets, clock=self._clock,
                           sign_ins=self._sign_ins)

    async def sign_in_states(self, profiles: Sequence[str]) -> SignInStates:
        logins = {name: await self._sign_ins.login_required(name) for name in profiles}
        return logins, self._sign_ins.unsaved()

    async def credential_states(self, profiles: Sequence[Profile]) -> dict[str, dict[str, Any]]:
        from ..errors import AadhelperError

        states: dict[str, dict[str, Any]] = {}
        for profile in profiles:
            source = self.source(profile)
            try:
                states[profile.name] = await source.state() if hasattr(source, "state") else {}
            except AadhelperError as exc:
                states[profile.name] = {"error": exc.to_wire()}
        return states

    async def login_required(self, profile: str) -> LoginRequired | None:
        return (await self.sign_in_states([profile]))[0][profile]

    async def unsaved_sign_ins(self) -> tuple[str, ...]:
        return (await self.sign_in_states([]))[1]
