"""Per-profile, per-scope-set token state in the daemon: single-flight fetches, background refresh ahead of
expiry, backoff after failures, the request budget, and the last error for ``status``.

When to refresh and how much validity a request may ask are :mod:`aadhelper.refresh_policy`'s rules (the
schedule, its spacing floor, short tokens, the per-profile request budget); this module applies them:

* A served token has at least the requested minimum validity left (``Token.valid_for``), except with short
  tokens (see the policy), where a request without an explicit ``min_valid`` gets the short-token reserve.
* Each entry has a keeper task that refreshes it *before* requests need a new one; requests meanwhile get the
  old token at once. A request that asks more validity than the authority's tokens can give is refused without
  touching the entry's schedule.
* Any number of concurrent requests for a missing or expired token share one flight (single flight). The flight
  runs in the cache's own nursery, so a client that hangs up cannot cancel it halfway (which matters for
  refresh-token rotation). A request waits at most :data:`protocol.ANSWER_DEADLINE` for it, then hears why.
* Failures: a still-valid token keeps being served. Every authority request is one backoff step: retryable
  failures (network, 5xx, 429, malformed replies) back off exponentially with jitter (1 s doubling to 5 min, or
  ``Retry-After``), and requests inside that window fail fast with the last error. A flight with waiting
  requests may wait out a short step (at most :data:`FLIGHT_MAX_WAIT`) and try again: still one request per
  step. Non-retryable ones (wrong secret, unknown client, login required) and configuration errors stick until
  the profile is reloaded (``secret set``, ``login``, a config change) or invalidated. Local failures (the
  keyring locked or unavailable, a secret missing, the fetcher process gone, a bug) are cheap to retry: the
  keeper backs off as for transient failures, but a request tries again at once (within the budget), so
  unlocking the keyring or storing the secret takes effect at once.
* Entries nobody asked for in :data:`KEEP_WARM` seconds stop being refreshed and are dropped at expiry (at
  once when they hold no token). A profile holds at most :data:`MAX_SCOPE_SETS` entries.

Time: ``clock`` gives Unix seconds (``time.time`` in the daemon); waits are computed from it and slept with
trio, so tests can drive everything with trio's MockClock by passing ``clock=lambda: base + trio.current_time()``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict

import trio

from . import protocol, refresh_policy
from .config import Profile
from .errors import AadhelperError, AuthorityError, AuthorityUnavailable, ConfigError
from .refresh_policy import Plan, RequestBudget
from .tokens import Token, TokenResponse

log = logging.getLogger("aadhelper.cache")

#: Stop refreshing an entry that has not been asked for in this long (seconds).
KEEP_WARM = 12 * 3600.0
#: First and largest backoff after a retryable failure (seconds).
BACKOFF_START = 1.0
BACKOFF_MAX = 300.0
#: Authority requests one flight may make while requests wait for it, and the longest backoff step it waits out
#: (a longer one ends the flight; the keeper tries again when the step is over).
FLIGHT_ATTEMPTS = 3
FLIGHT_MAX_WAIT = 5.0
#: Scope sets one profile may hold: each is a keeper task and a status record (issue 9: 3,000 refused scope sets
#: once held 47 MB for good). Entries without a token make room for new ones; beyond that a request is refused.
MAX_SCOPE_SETS = 32
#: Window of the per-entry request count in ``status`` (seconds).
REQUEST_HISTORY = 3600.0

class TokenStatus(TypedDict):
    """One cached scope set in ``aadhelper status`` (``status --json``: ``profiles[].tokens[]``); no secret in it."""

    profile: str
    credential: str
    scopes: list[str]
    #: valid | expiring | expired | none | error | login_required
    state: str
    expires_on: int | None
    next_refresh: int | None
    refreshing: bool
    refreshes: int
    failures: int
    last_error: dict[str, Any] | None
    last_error_at: int | None
    #: The minimum validity the schedule keeps (the profile's, a recent larger ask, or the short-token reserve).
    min_valid: int
    short_tokens: bool
    token_lifetime: int | None
    requests_last_hour: int
    last_request_at: int | None
    throttled_since: int | None


def login_required_status(profile: Profile, error: AadhelperError) -> TokenStatus:
    """The record of a user profile that needs ``aadhelper login`` before anyone asked it for a token."""
    return TokenStatus(profile=profile.name, credential=profile.credential, scopes=list(profile.scopes),
                       state="login_required", expires_on=None, next_refresh=None, refreshing=False, refreshes=0,
                       failures=0, last_error=error.to_wire(), last_error_at=None, min_valid=profile.min_valid,
                       short_tokens=False, token_lifetime=None, requests_last_hour=0, last_request_at=None,
                       throttled_since=None)


class TokenSource(Protocol):
    """Obtains fresh access tokens for one profile (the grants in the fetcher, or the fetcher process's proxy)."""

    async def acquire(self, scopes: tuple[str, ...]) -> TokenResponse:
        """A new token for ``scopes`` from the authority (never from a cache)."""
        ...


SourceFactory = Callable[[Profile], TokenSource]
Key = tuple[str, tuple[str, ...]]


def normalise_scopes(scopes: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Scope sets are keys: order and duplicates do not matter."""
    return tuple(sorted(set(scopes)))


@dataclass(eq=False)
class _Flight:
    """One authority exchange (with its in-flight retries) shared by everyone who needs its result."""

    done: trio.Event = field(default_factory=trio.Event)
    token: Token | None = None
    error: AadhelperError | None = None
    #: Requests waiting for it (the keeper does not count): only they justify waiting out a backoff step.
    waiters: int = 0


@dataclass(eq=False)
class _Entry:
    profile: Profile
    scopes: tuple[str, ...]
    token: Token | None = None
    #: The schedule of the current token (None without one).
    plan: Plan | None = None
    #: The largest explicit min_valid served since the last fetch, and the one before (asks decay).
    asked: int = 0
    asked_before: int = 0
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
    #: When each authority request of the last REQUEST_HISTORY seconds went out.
    requests: deque[float] = field(default_factory=deque)
    #: The short-token notice was logged (once per entry).
    told_short: bool = False

    def poke(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def recent_ask(self) -> int:
        """The largest explicit min_valid asked since the fetch before last (0: none)."""
        return max(self.asked, self.asked_before)


class TokenCache:
    """All cached tokens of one daemon. Use as ``async with TokenCache(...) as cache``."""

    def __init__(self, source_factory: SourceFactory, *, clock: Callable[[], float],
                 rng: random.Random | None = None, budget: RequestBudget | None = None) -> None:
        self._source_factory = source_factory
        self._sources: dict[str, tuple[Profile, TokenSource]] = {}
        self._entries: dict[Key, _Entry] = {}
        self._clock = clock
        self._rng = rng or random.Random()
        self._budget = budget or RequestBudget()
        #: Profiles whose budget is spent, and since when (one warning per episode).
        self._throttled: dict[str, float] = {}
        self._nursery: trio.Nursery | None = None
        self._nursery_cm: Any = None
        #: Called after every fetch, successful or not; the daemon updates systemd STATUS.
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
        """A token for ``profile`` and ``scopes`` with at least ``min_valid`` seconds left (the profile's when
        None; with short tokens, the short-token reserve)."""
        entry = self._entry(profile, normalise_scopes(scopes or profile.scopes))
        now = self._clock()
        entry.last_used = now
        token = entry.token
        if token is not None:
            if token.valid_for(self._need(entry, min_valid), now):
                self._note_ask(entry, min_valid, token)
                return token
            if min_valid is not None and min_valid > refresh_policy.cap(token.lifetime):
                # A fresh token could not keep it either: refused without asking the authority or touching the entry.
                raise _too_long(entry, token, min_valid)
        if entry.flight is None:
            if entry.sticky and entry.last_error is not None:
                # A copy: each raise of the kept exception itself would add this request's frames to it.
                raise entry.last_error.copy()
            if now < entry.blocked_until and entry.last_error is not None:
                raise _with_retry_note(entry.last_error, entry.blocked_until - now)
        token = await self._fetch(entry)
        if not token.valid_for(self._need(entry, min_valid), self._clock()):
            raise _too_long(entry, token, min_valid or entry.profile.min_valid)
        self._note_ask(entry, min_valid, token)
        return token

    def served_min_valid(self, profile: Profile, scopes: tuple[str, ...] | None, min_valid: int | None) -> float:
        """The validity :meth:`get` just required for this request (its ``min_valid``, else the profile's, else the
        short-token reserve): a client holding the token should stop using it that long before it expires, when
        the daemon would no longer hand it out."""
        entry = self._entries.get((profile.name, normalise_scopes(scopes or profile.scopes)))
        if entry is None:  # dropped meanwhile: what an entry without a plan would need
            return min_valid if min_valid is not None else profile.min_valid
        return self._need(entry, min_valid)

    def _need(self, entry: _Entry, min_valid: int | None) -> float:
        """The validity a request needs: what it asked, else the profile's (the reserve when tokens are short)."""
        if min_valid is not None:
            return min_valid
        if entry.plan is not None and entry.plan.short:
            return entry.plan.min_valid
        return entry.profile.min_valid

    def _note_ask(self, entry: _Entry, min_valid: int | None, token: Token) -> None:
        """A served explicit ask above the schedule's shortens the schedule until it decays; one the authority's
        tokens cannot keep (above the policy's cap) was served this once and changes nothing."""
        if min_valid is None or min_valid <= entry.asked or min_valid > refresh_policy.cap(token.lifetime):
            return
        entry.asked = min_valid
        if entry.plan is None or min_valid > entry.plan.min_valid:
            self._schedule(entry)

    def invalidate(self, profile: str, scopes: tuple[str, ...] | None = None) -> int:
        """Drop cached tokens (and error state) of a profile; all its scope sets when ``scopes`` is None.

        An explicit user action: the profile may make one authority request beyond its budget.
        """
        self._budget.grant(profile, self._clock())
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

    def status(self) -> list[TokenStatus]:
        """One record per cached scope set, for ``aadhelper status`` (no secret in it)."""
        now = self._clock()
        records: list[TokenStatus] = []
        for entry in self._entries.values():
            token = entry.token
            min_valid = entry.plan.min_valid if entry.plan is not None else entry.profile.min_valid
            if token is None:
                state = "none"
            elif token.valid_for(min_valid, now):
                state = "valid"
            elif token.valid_for(0, now):
                state = "expiring"
            else:
                state = "expired"
            if entry.sticky:
                state = "error" if entry.last_error is None or entry.last_error.code != "login_required" \
                    else "login_required"
            self._forget_old_requests(entry, now)
            throttled = self._throttled.get(entry.profile.name)
            records.append(TokenStatus(
                profile=entry.profile.name,
                credential=entry.profile.credential,
                scopes=list(entry.scopes),
                state=state,
                expires_on=int(token.expires_on) if token else None,
                next_refresh=int(entry.next_refresh) if entry.next_refresh and not entry.sticky else None,
                refreshing=entry.flight is not None,
                refreshes=entry.refreshes,
                failures=entry.failures,
                last_error=entry.last_error.to_wire() if entry.last_error else None,
                last_error_at=int(entry.last_error_at) if entry.last_error_at else None,
                min_valid=int(min_valid),
                short_tokens=bool(entry.plan and entry.plan.short),
                token_lifetime=int(token.lifetime) if token else None,
                requests_last_hour=len(entry.requests),
                last_request_at=int(entry.requests[-1]) if entry.requests else None,
                throttled_since=int(throttled) if throttled is not None else None,
            ))
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
            self._make_room(profile.name)
            entry = _Entry(profile=profile, scopes=scopes)
            self._entries[key] = entry
            assert self._nursery is not None, "TokenCache used outside `async with`"
            self._nursery.start_soon(self._keep_fresh, entry)
        return entry

    def _make_room(self, profile: str) -> None:
        """Before a new scope set of ``profile``: at most MAX_SCOPE_SETS, making room by dropping the least recently
        used entry without a token (a refused or failed scope set); entries with tokens are never evicted."""
        mine = [entry for (name, _), entry in self._entries.items() if name == profile]
        if len(mine) < MAX_SCOPE_SETS:
            return
        spare = [entry for entry in mine if entry.token is None and entry.flight is None]
        if not spare:
            raise ConfigError(f"profile {profile!r} already holds tokens for {len(mine)} scope sets, the most one "
                              "profile may hold", profile=profile,
                              hint=f"drop some with `aadhelper erase {profile}`, or use another profile")
        self._drop(min(spare, key=lambda entry: entry.last_used), "to make room for another scope set")

    def _source(self, profile: Profile) -> TokenSource:
        known = self._sources.get(profile.name)
        if known is None or known[0] != profile:
            known = (profile, self._source_factory(profile))
            self._sources[profile.name] = known
        return known[1]

    def _start_flight(self, entry: _Entry) -> _Flight:
        if entry.flight is None:
            entry.flight = _Flight()
            assert self._nursery is not None
            self._nursery.start_soon(self._fly, entry, entry.flight)
        return entry.flight

    async def _fetch(self, entry: _Entry) -> Token:
        """Join the entry's flight (starting one if none is under way) for at most ANSWER_DEADLINE seconds."""
        flight = self._start_flight(entry)
        flight.waiters += 1
        try:
            with trio.move_on_after(protocol.ANSWER_DEADLINE):
                await flight.done.wait()
        finally:
            flight.waiters -= 1
        if not flight.done.is_set():
            # The flight goes on (its result is cached for the next request); this client hears why it waited.
            cause = f" (last error: {entry.last_error.one_line()})" if entry.last_error else ""
            raise AuthorityUnavailable(
                f"no token within {protocol.ANSWER_DEADLINE:.0f} s: the fetch is still under way{cause}",
                profile=entry.profile.name, hint="the authority or the keyring is slow; aadhelper keeps trying")
        if flight.error is not None:
            raise flight.error.copy()  # shared by every waiter: a copy per raise
        assert flight.token is not None
        return flight.token

    async def _fly(self, entry: _Entry, flight: _Flight) -> None:
        try:
            attempts = 0
            while True:
                attempts += 1
                try:
                    token = await self._attempt(entry)
                except AadhelperError as exc:
                    self._record_failure(entry, exc)
                    wait = entry.blocked_until - self._clock()
                    if not (exc.recovery == "backoff" and flight.waiters and attempts < FLIGHT_ATTEMPTS
                            and wait <= FLIGHT_MAX_WAIT):
                        flight.error = exc
                        return
                    log.info("profile %r: %s; retrying in %.1f s", entry.profile.name, exc.one_line(), wait)
                    await trio.sleep(max(0.0, wait))
                except Exception as exc:  # a bug in a source must not kill the daemon: report it as an error
                    log.exception("unexpected failure while fetching a token for profile %r", entry.profile.name)
                    flight.error = AadhelperError(f"internal error while fetching a token: {type(exc).__name__}",
                                                  profile=entry.profile.name, hint="see the daemon's log")
                    self._record_failure(entry, flight.error)
                    return
                else:
                    flight.token = token
                    self._record_success(entry, token)
                    return
        finally:
            entry.flight = None
            flight.done.set()
            self._report_change()

    async def _attempt(self, entry: _Entry) -> Token:
        """One authority request for the entry, within the profile's budget."""
        name = entry.profile.name
        now = self._clock()
        wait = self._budget.take(name, now)
        if wait:
            if name not in self._throttled:
                self._throttled[name] = now
                log.warning("profile %r: the limit of authority requests is reached; the next is allowed in "
                            "%.0f s (status shows it)", name, wait)
            raise AuthorityUnavailable(
                f"aadhelper's limit of authority requests for this profile is reached; next allowed in "
                f"{math.ceil(wait)} s", profile=name, retry_after=wait,
                hint=f"`aadhelper erase {name}` allows one request at once")
        if self._throttled.pop(name, None) is not None:
            log.info("profile %r: authority requests allowed again", name)
        entry.requests.append(now)
        self._forget_old_requests(entry, now)
        response = await self._source(entry.profile).acquire(entry.scopes)
        token = response.token
        if not (math.isfinite(token.expires_on) and math.isfinite(token.obtained_at) and token.lifetime > 0):
            # The grant layer rejects such replies; this keeps a bug there from reaching the schedule.
            raise AuthorityUnavailable("the authority sent a malformed token reply (bad lifetime)", profile=name)
        return token

    @staticmethod
    def _forget_old_requests(entry: _Entry, now: float) -> None:
        while entry.requests and entry.requests[0] < now - REQUEST_HISTORY:
            entry.requests.popleft()

    def _report_change(self) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change()
        except Exception:  # reporting (systemd STATUS) must never take a flight, or the daemon, down
            log.exception("could not report the cache's state")

    def _record_success(self, entry: _Entry, token: Token) -> None:
        now = self._clock()
        entry.token = token
        entry.failures = 0
        entry.last_error = None
        entry.last_error_at = None
        entry.sticky = False
        entry.blocked_until = 0.0
        entry.refreshes += 1
        entry.asked_before, entry.asked = entry.asked, 0
        self._schedule(entry)
        plan = entry.plan
        assert plan is not None
        if plan.short and not entry.told_short:
            entry.told_short = True
            log.warning("profile %r: the authority issues tokens valid for %.0f s, too short for the minimum "
                        "validity of %d s; refreshing at 75-80 %% of their lifetime, and serving tokens with at "
                        "least %.0f s left", entry.profile.name, token.lifetime, entry.profile.min_valid,
                        plan.min_valid)
        log.info("profile %r: new token for %s, valid for %.0f s, next refresh in %.0f s", entry.profile.name,
                 " ".join(entry.scopes), token.remaining(now), (entry.next_refresh or now) - now)

    def _record_failure(self, entry: _Entry, exc: AadhelperError) -> None:
        now = self._clock()
        entry.last_error = exc
        entry.last_error_at = now
        entry.failures += 1
        if exc.recovery == "backoff":
            # Never sooner than the authority asked, nor than our own backoff: a Retry-After of 0, or an HTTP-date
            # already past (clock skew), would otherwise mean no backoff at all (found by the fault suite).
            retry_after = getattr(exc, "retry_after", None)
            delay = max(retry_after or 0.0, self._backoff(entry.failures))
            entry.blocked_until = now + delay
            entry.next_refresh = entry.blocked_until if entry.token is not None else None
            log.warning("%s; next attempt in %.0f s", exc.one_line(), delay)
        elif exc.recovery == "sticky":
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
        # The exponent is bounded first: 2.0 ** 1024 overflows, and 1,025 failures in a row do happen.
        base = min(BACKOFF_MAX, BACKOFF_START * 2.0 ** min(max(0, failures - 1), 30))
        return base * self._rng.uniform(0.5, 1.0)

    def _schedule(self, entry: _Entry) -> None:
        token = entry.token
        if token is None or entry.sticky:
            return
        entry.plan = refresh_policy.plan(obtained_at=token.obtained_at, lifetime=token.lifetime,
                                         refresh_on=token.refresh_on, profile_min_valid=entry.profile.min_valid,
                                         asked=entry.recent_ask(),
                                         last_request=entry.requests[-1] if entry.requests else token.obtained_at,
                                         rng=self._rng)
        entry.next_refresh = max(entry.plan.refresh_at, entry.blocked_until)
        entry.poke()

    async def _keep_fresh(self, entry: _Entry) -> None:
        """The entry's keeper: sleep until its refresh is due (or its schedule changes), then refresh."""
        while not entry.dropped:
            now = self._clock()
            changed = entry.changed
            idle_at = entry.last_used + KEEP_WARM
            if now >= idle_at and entry.flight is None:
                # Nobody wants it any more: serve it while it lasts, then let it go.
                expires = entry.token.expires_on if entry.token is not None else now
                if expires <= now:
                    self._drop(entry, "idle")
                    return
                await self._wait(changed, expires - now)
                continue
            due = entry.next_refresh if not entry.sticky and entry.token is not None else None
            if due is None or due > now or entry.flight is not None:
                # Wake for the refresh, or when the entry turns idle (also when it has no token or an error).
                until = idle_at if due is None or entry.flight is not None else min(due, idle_at)
                await self._wait(changed, None if entry.flight is not None else until - now)
                continue
            if entry.requests and now - entry.requests[-1] < refresh_policy.MIN_WAIT:
                # Whatever computed ``due``, the keeper never asks twice in a row this fast.
                await self._wait(changed, entry.requests[-1] + refresh_policy.MIN_WAIT - now)
                continue
            # A failure is recorded in the entry; its schedule says when to try again.
            with contextlib.suppress(AadhelperError):
                await self._start_flight(entry).done.wait()

    @staticmethod
    async def _wait(changed: trio.Event, seconds: float | None) -> None:
        """Sleep until ``changed`` is set or ``seconds`` pass (forever when None)."""
        with trio.move_on_after(math.inf if seconds is None else seconds):
            await changed.wait()

    def _drop(self, entry: _Entry, why: str) -> None:
        key = (entry.profile.name, entry.scopes)
        if self._entries.get(key) is entry:
            del self._entries[key]
        entry.dropped = True
        entry.poke()
        log.info("profile %r: dropped the %s entry for %s", entry.profile.name, why, " ".join(entry.scopes))


def _too_long(entry: _Entry, token: Token, min_valid: float) -> ConfigError:
    most = max(0, int(refresh_policy.cap(token.lifetime)))
    return ConfigError(f"the authority issues tokens valid for {token.lifetime:.0f} s, too short to keep the requested "
                       f"minimum validity of {min_valid:.0f} s (at most {most} s)", profile=entry.profile.name,
                       hint="ask for a smaller --min-valid (or min_valid in the profile)")


def _with_retry_note(exc: AadhelperError, wait: float) -> AadhelperError:
    """The last error again, saying when the next attempt is allowed (the original stays untouched)."""
    copy = exc.copy(f"{exc.message} (next attempt in {math.ceil(wait)} s)")
    if isinstance(copy, AuthorityError):
        copy.retry_after = wait
    return copy
