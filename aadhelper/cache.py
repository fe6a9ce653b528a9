"""Per-profile, per-scope-set token state in the daemon: single-flight fetches, background refresh ahead of
expiry, backoff after failures, and the last error for ``status``.

Rules (the issue's, and aws-vault's/azure-identity's practice):

* A served token always has at least the requested minimum validity left (``Token.valid_for``).
* Each entry has a keeper task that refreshes it *before* it gets there: at the authority's ``refresh_in``
  when sent, else at 75-80 % (random jitter, so many profiles do not refresh in lock-step) of the time
  the token is servable (lifetime minus the largest minimum validity asked of it). Requests meanwhile get
  the old token at once.
* Any number of concurrent requests for a missing or expired token share one authority request (single
  flight). The flight runs in the cache's own nursery, so a client that hangs up cannot cancel it halfway
  (which matters for refresh-token rotation).
* Failures: a still-valid token keeps being served. Retryable failures (network, 5xx, 429) back off
  exponentially with jitter (1 s doubling to 5 min, or ``Retry-After``), and requests inside that window
  fail fast with the last error instead of hammering the authority. Non-retryable ones (wrong secret,
  unknown client, login required) and configuration errors stick until the profile is reloaded (``secret
  set``, ``login``, a config change) or invalidated. Local failures (the keyring locked or unavailable, a
  secret missing, the fetcher process gone, a bug) are cheap to retry: the keeper backs off as for transient
  failures, but a request always tries again, so unlocking the keyring or storing the secret takes effect at
  once.
* Entries nobody asked for in :data:`KEEP_WARM` seconds stop being refreshed and are dropped at expiry.

Time: ``clock`` gives Unix seconds (``time.time`` in the daemon); waits are computed from it and slept with
trio, so tests can drive everything with trio's MockClock by passing ``clock=lambda: base + trio.current_time()``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from .config import Profile
from .errors import AadhelperError, AuthorityError, ConfigError
from .grants import TokenSource
from .tokens import Token

log = logging.getLogger("aadhelper.cache")

#: Stop refreshing an entry that has not been asked for in this long (seconds).
KEEP_WARM = 12 * 3600.0
#: First and largest backoff after a retryable failure (seconds).
BACKOFF_START = 1.0
BACKOFF_MAX = 300.0
#: Attempts inside one flight for retryable errors, and the longest wait between them that a waiting
#: request is worth (a longer Retry-After ends the flight; the keeper tries again later).
FLIGHT_ATTEMPTS = 3
FLIGHT_MAX_WAIT = 5.0

SourceFactory = Callable[[Profile], TokenSource]
Key = tuple[str, tuple[str, ...]]


def normalise_scopes(scopes: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Scope sets are keys: order and duplicates do not matter."""
    return tuple(sorted(set(scopes)))


@dataclass
class _Flight:
    """One authority request shared by everyone who needs its result."""

    done: trio.Event = field(default_factory=trio.Event)
    token: Token | None = None
    error: AadhelperError | None = None


@dataclass(eq=False)
class _Entry:
    profile: Profile
    scopes: tuple[str, ...]
    token: Token | None = None
    min_valid: int = 0
    last_used: float = 0.0
    flight: _Flight | None = None
    last_error: AadhelperError | None = None
    last_error_at: float | None = None
    failures: int = 0
    #: No authority request before this (backoff or Retry-After).
    blocked_until: float = 0.0
    #: A non-retryable error: no automatic attempts until reset.
    sticky: bool = False
    next_refresh: float | None = None
    dropped: bool = False
    #: Wakes the keeper when something changed its schedule.
    changed: trio.Event = field(default_factory=trio.Event)
    refreshes: int = 0

    def poke(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


class TokenCache:
    """All cached tokens of one daemon. Use as ``async with TokenCache(...) as cache``."""

    def __init__(self, source_factory: SourceFactory, *, clock: Callable[[], float],
                 rng: random.Random | None = None) -> None:
        self._source_factory = source_factory
        self._sources: dict[str, tuple[Profile, TokenSource]] = {}
        self._entries: dict[Key, _Entry] = {}
        self._clock = clock
        self._rng = rng or random.Random()
        self._nursery: trio.Nursery | None = None
        self._nursery_cm: Any = None
        #: Called with (profile name) after every successful fetch; the daemon updates systemd STATUS.
        self.on_change: Callable[[], None] | None = None

    async def __aenter__(self) -> TokenCache:
        self._nursery_cm = trio.open_nursery()
        self._nursery = await self._nursery_cm.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        result: bool | None = await self._nursery_cm.__aexit__(*exc_info)
        return result

    # -- requests ----------------------------------------------------------------------------------

    async def get(self, profile: Profile, scopes: tuple[str, ...] | None = None,
                  min_valid: int | None = None) -> Token:
        """A token for ``profile`` and ``scopes`` with at least ``min_valid`` seconds left."""
        want = profile.min_valid if min_valid is None else min_valid
        entry = self._entry(profile, normalise_scopes(scopes or profile.scopes))
        now = self._clock()
        entry.last_used = now
        if want > entry.min_valid:
            entry.min_valid = want
            self._schedule(entry, now)
        token = entry.token
        if token is not None and token.valid_for(want, now):
            return token
        if entry.flight is None:
            if entry.sticky and entry.last_error is not None:
                raise entry.last_error
            if now < entry.blocked_until and entry.last_error is not None:
                raise _with_retry_note(entry.last_error, entry.blocked_until - now)
        token = await self._fetch(entry)
        if not token.valid_for(want, self._clock()):
            raise ConfigError(
                f"the authority issues tokens valid for {token.lifetime:.0f} s, less than the requested minimum "
                f"validity of {want} s", profile=profile.name,
                hint="ask for a smaller --min-valid (or min_valid in the profile)")
        return token

    def invalidate(self, profile: str, scopes: tuple[str, ...] | None = None) -> int:
        """Drop cached tokens (and error state) of a profile; all its scope sets when ``scopes`` is None."""
        wanted = normalise_scopes(scopes) if scopes else None
        doomed = [key for key in self._entries if key[0] == profile and (wanted is None or key[1] == wanted)]
        for key in doomed:
            entry = self._entries.pop(key)
            entry.dropped = True
            entry.poke()
        if doomed:
            log.info("dropped %d cached token(s) of profile %r", len(doomed), profile)
        return len(doomed)

    def forget_profile(self, name: str) -> None:
        """The profile changed or went away: drop its tokens and its token source."""
        self.invalidate(name)
        self._sources.pop(name, None)

    def profiles_cached(self) -> set[str]:
        return {name for name, _ in self._entries}

    # -- status ------------------------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        """One record per cached scope set, for ``aadhelper status`` (no secret in it)."""
        now = self._clock()
        records = []
        for entry in self._entries.values():
            token = entry.token
            if token is None:
                state = "none"
            elif token.valid_for(entry.min_valid, now):
                state = "valid"
            elif token.valid_for(0, now):
                state = "expiring"
            else:
                state = "expired"
            if entry.sticky:
                state = "error" if entry.last_error is None or entry.last_error.code != "login_required" \
                    else "login_required"
            record: dict[str, Any] = {
                "profile": entry.profile.name,
                "credential": entry.profile.credential,
                "scopes": list(entry.scopes),
                "state": state,
                "expires_on": int(token.expires_on) if token else None,
                "next_refresh": int(entry.next_refresh) if entry.next_refresh and not entry.sticky else None,
                "refreshing": entry.flight is not None,
                "refreshes": entry.refreshes,
                "failures": entry.failures,
                "last_error": entry.last_error.to_wire() if entry.last_error else None,
                "last_error_at": int(entry.last_error_at) if entry.last_error_at else None,
            }
            records.append(record)
        return records

    def next_refresh(self) -> float | None:
        times = [e.next_refresh for e in self._entries.values() if e.next_refresh and not e.sticky]
        return min(times) if times else None

    # -- internals ---------------------------------------------------------------------------------

    def _entry(self, profile: Profile, scopes: tuple[str, ...]) -> _Entry:
        key = (profile.name, scopes)
        entry = self._entries.get(key)
        if entry is not None and entry.profile != profile:
            # The profile was edited under us without a reload: its tokens belong to the old definition.
            self.forget_profile(profile.name)
            entry = None
        if entry is None:
            entry = _Entry(profile=profile, scopes=scopes)
            self._entries[key] = entry
            assert self._nursery is not None, "TokenCache used outside `async with`"
            self._nursery.start_soon(self._keep_fresh, entry)
        return entry

    def _source(self, profile: Profile) -> TokenSource:
        known = self._sources.get(profile.name)
        if known is None or known[0] != profile:
            known = (profile, self._source_factory(profile))
            self._sources[profile.name] = known
        return known[1]

    async def _fetch(self, entry: _Entry) -> Token:
        """Join the entry's flight, starting one if none is under way."""
        if entry.flight is None:
            entry.flight = _Flight()
            assert self._nursery is not None
            self._nursery.start_soon(self._fly, entry, entry.flight)
        flight = entry.flight
        await flight.done.wait()
        if flight.error is not None:
            raise flight.error
        assert flight.token is not None
        return flight.token

    async def _fly(self, entry: _Entry, flight: _Flight) -> None:
        try:
            flight.token = await self._acquire_with_retries(entry)
        except AadhelperError as exc:
            flight.error = exc
            self._record_failure(entry, exc)
        except Exception as exc:  # a bug in a source must not kill the daemon: report it as an error
            log.exception("unexpected failure while fetching a token for profile %r", entry.profile.name)
            flight.error = AadhelperError(f"internal error while fetching a token: {type(exc).__name__}",
                                          profile=entry.profile.name, hint="see the daemon's log")
            self._record_failure(entry, flight.error)
        else:
            self._record_success(entry, flight.token)
        finally:
            entry.flight = None
            flight.done.set()
            if self.on_change is not None:
                self.on_change()

    async def _acquire_with_retries(self, entry: _Entry) -> Token:
        source = self._source(entry.profile)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await source.acquire(entry.scopes)
                return response.token
            except AuthorityError as exc:
                if not exc.retryable or attempt >= FLIGHT_ATTEMPTS:
                    raise
                delay = exc.retry_after if exc.retry_after is not None else self._backoff(attempt)
                if delay > FLIGHT_MAX_WAIT:
                    raise
                log.info("profile %r: %s; retrying in %.1f s", entry.profile.name, exc.one_line(), delay)
                await trio.sleep(delay)

    def _record_success(self, entry: _Entry, token: Token) -> None:
        now = self._clock()
        entry.token = token
        entry.failures = 0
        entry.last_error = None
        entry.last_error_at = None
        entry.sticky = False
        entry.blocked_until = 0.0
        entry.refreshes += 1
        self._schedule(entry, now)
        log.info("profile %r: new token for %s, valid for %.0f s, next refresh in %.0f s", entry.profile.name,
                 " ".join(entry.scopes), token.remaining(now), (entry.next_refresh or now) - now)

    def _record_failure(self, entry: _Entry, exc: AadhelperError) -> None:
        now = self._clock()
        entry.last_error = exc
        entry.last_error_at = now
        entry.failures += 1
        if isinstance(exc, AuthorityError) and exc.retryable:
            delay = exc.retry_after if exc.retry_after is not None else self._backoff(entry.failures)
            entry.blocked_until = now + delay
            entry.next_refresh = entry.blocked_until if entry.token is not None else None
            log.warning("%s; next attempt in %.0f s", exc.one_line(), delay)
        elif isinstance(exc, (AuthorityError, ConfigError)):
            entry.sticky = True
            entry.next_refresh = None
            log.warning("%s; not retrying until the profile changes", exc.one_line())
        else:
            # Local trouble (the keyring, the fetcher process, a bug): cheap to try again, and a request does.
            delay = self._backoff(entry.failures)
            entry.next_refresh = now + delay if entry.token is not None else None
            log.warning("%s; next attempt in %.0f s", exc.one_line(), delay)
        entry.poke()

    def _backoff(self, failures: int) -> float:
        """Exponential backoff with jitter: 1 s, 2 s, 4 s ... capped at 5 min, each scaled by 0.5-1.0."""
        base = min(BACKOFF_MAX, BACKOFF_START * math.pow(2, max(0, failures - 1)))
        return base * self._rng.uniform(0.5, 1.0)

    def _schedule(self, entry: _Entry, now: float) -> None:
        token = entry.token
        if token is None or entry.sticky:
            return
        servable = token.expires_on - entry.min_valid - token.obtained_at
        natural = token.obtained_at + max(0.0, servable) * self._rng.uniform(0.75, 0.80)
        if token.refresh_on is not None and token.refresh_on < natural:
            natural = token.refresh_on
        entry.next_refresh = max(natural, entry.blocked_until)
        entry.poke()

    async def _keep_fresh(self, entry: _Entry) -> None:
        """The entry's keeper: sleep until its refresh is due (or its schedule changes), then refresh."""
        while not entry.dropped:
            now = self._clock()
            changed = entry.changed
            if now - entry.last_used > KEEP_WARM and entry.flight is None:
                # Nobody wants it any more: serve it while it lasts, then let it go.
                expires = entry.token.expires_on if entry.token is not None else now
                if expires <= now:
                    self._drop_idle(entry)
                    return
                await self._wait(changed, expires - now)
                continue
            due = entry.next_refresh if not entry.sticky else None
            if due is None or due > now or entry.flight is not None or entry.token is None:
                await self._wait(changed, None if due is None or due <= now else due - now)
                continue
            # A failure is recorded in the entry; its schedule says when to try again.
            with contextlib.suppress(AadhelperError):
                await self._fetch(entry)

    @staticmethod
    async def _wait(changed: trio.Event, seconds: float | None) -> None:
        """Sleep until ``changed`` is set or ``seconds`` pass (forever when None)."""
        with trio.move_on_after(math.inf if seconds is None else seconds):
            await changed.wait()

    def _drop_idle(self, entry: _Entry) -> None:
        key = (entry.profile.name, entry.scopes)
        if self._entries.get(key) is entry:
            del self._entries[key]
        entry.dropped = True
        log.info("profile %r: dropped idle token for %s", entry.profile.name, " ".join(entry.scopes))


def _with_retry_note(exc: AadhelperError, wait: float) -> AadhelperError:
    """The last error again, saying when the next attempt is allowed (the original stays untouched)."""
    copy = type(exc)(f"{exc.message} (next attempt in {math.ceil(wait)} s)", hint=exc.hint, profile=exc.profile,
                     error=exc.error, aadsts=exc.aadsts)
    if isinstance(exc, AuthorityError) and isinstance(copy, AuthorityError):
        copy.retry_after = wait
        copy.claims = exc.claims
        copy.reason = exc.reason
    return copy
