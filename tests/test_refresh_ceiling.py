"""The ceiling on authority traffic holds for every input that ever made the daemon loop (issue 9 §1).

Each test drives the real token cache with a scripted source on trio's autojump clock over simulated hours,
with a client asking as often as a busy script would, and measures what the authority saw: the number of
requests and their spacing. The bound each test asserts is the policy's (:mod:`aadhelper.refresh_policy`),
not a figure tuned to pass.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from aadhelper import cache as cache_module
from aadhelper import refresh_policy
from aadhelper.config import Profile
from aadhelper.errors import AadhelperError, AuthorityUnavailable, ConfigError, KeyringLocked
from aadhelper.tokens import Secret, Token, TokenResponse

from .harness import PROFILE, ScriptedSource, open_cache, wall

HOUR = 3600.0


def most_in_any_window(times: list[float], window: float) -> int:
    """The largest number of authority requests inside any ``window`` seconds."""
    most = start = 0
    for end in range(len(times)):
        while times[end] - times[start] >= window:
            start += 1
        most = max(most, end - start + 1)
    return most


def budget_bound(seconds: float) -> int:
    """The most requests the per-profile budget lets through in ``seconds``."""
    return refresh_policy.BUDGET_BURST + 1 + math.ceil(seconds / refresh_policy.BUDGET_REFILL)


async def ask_every(cache_get: Callable[[], Awaitable[object]], interval: float, duration: float) -> int:
    """Ask every ``interval`` seconds for ``duration`` seconds (a request that waits delays the next); returns how
    many requests failed."""
    failed = 0
    end = trio.current_time() + duration
    while trio.current_time() < end:
        try:
            await cache_get()
        except AadhelperError:
            failed += 1
        await trio.sleep(interval)
    return failed


def with_min_valid(seconds: int) -> Profile:
    return Profile(**{**PROFILE.__dict__, "min_valid": seconds})


async def test_tokens_no_longer_than_min_valid_refresh_at_three_quarters_of_their_life(
        autojump_clock: trio.testing.MockClock) -> None:
    """If the authority issues 300 s tokens and the profile asks 300 s of validity, then over 12 simulated hours of a
    request every second the authority sees one request per 75-80 % of a lifetime, requests never wait, and status
    says the tokens are short (issue 9: 590 requests in 12 s)."""
    source = ScriptedSource(lifetime=300, latency=0.5)
    async with open_cache(source) as cache:
        await cache.get(PROFILE)
        failed = await ask_every(lambda: cache.get(PROFILE), 1.0, 12 * HOUR)
        record = cache.status()[0]
    assert failed == 0
    assert 12 * HOUR / (0.80 * 300) - 2 <= source.calls <= 12 * HOUR / (0.75 * 300) + 2
    gaps = [b - a for a, b in itertools.pairwise(source.times)]
    assert min(gaps) >= 0.75 * 300 - 1
    assert record["short_tokens"] is True
    assert record["min_valid"] == 30  # the short-token reserve: 10 % of the lifetime


@pytest.mark.parametrize(("lifetime", "first_ask"), [(300, 10), (200, None), (300, None), (31, None), (1, None)])
async def test_no_request_pattern_loops_on_short_tokens(autojump_clock: trio.testing.MockClock, lifetime: float,
                                                        first_ask: int | None) -> None:
    """If one client once asks --min-valid 10 and others use the profile's 300 s against tokens of 300 s, 200 s,
    31 s or 1 s, then no 60 s window sees more requests than the policy's spacing allows, over 6 simulated hours."""
    source = ScriptedSource(lifetime=lifetime, latency=0.1)
    async with open_cache(source) as cache:
        if first_ask is not None:
            await cache.get(PROFILE, min_valid=first_ask)
        await ask_every(lambda: cache.get(PROFILE), 0.5, 6 * HOUR)
    spacing = refresh_policy.spacing(lifetime)
    if lifetime > refresh_policy.MIN_SPACING:
        # Background refreshes are spacing apart; a request finding no servable token may add one flight between.
        assert most_in_any_window(source.times, 60.0) <= 2 * math.ceil(60.0 / spacing) + 1
        assert source.calls <= 2 * 6 * HOUR / spacing + 2
    else:
        # Tokens that expire before the next refresh may be: every request wants a new one; the budget holds.
        assert most_in_any_window(source.times[-100:], 60.0) <= math.ceil(60 / refresh_policy.BUDGET_REFILL) + 1
        assert source.calls <= budget_bound(6 * HOUR)


async def test_refused_min_valid_changes_nothing(autojump_clock: trio.testing.MockClock) -> None:
    """If a request asks --min-valid 600 against 600 s tokens, then it is refused with a ConfigError, the entry's
    schedule and effective min_valid do not change, and no authority request follows from it (issue 9: 475
    requests in 10 s)."""
    source = ScriptedSource(lifetime=600, latency=0.0)
    async with open_cache(source) as cache:
        await cache.get(PROFILE)
        await trio.sleep(100)
        before = cache.status()[0]
        with pytest.raises(ConfigError, match="too short to keep the requested minimum validity of 600 s"):
            await cache.get(PROFILE, min_valid=600)
        after = cache.status()[0]
        assert (after["next_refresh"], after["min_valid"]) == (before["next_refresh"], before["min_valid"])
        assert source.calls == 1
        await ask_every(lambda: cache.get(PROFILE, min_valid=600), 1.0, HOUR)
    assert source.calls <= HOUR / refresh_policy.spacing(600) + 1


async def test_explicit_ask_shortens_the_schedule_then_decays(autojump_clock: trio.testing.MockClock) -> None:
    """If one request asks --min-valid 2000 of 3600 s tokens, then the schedule keeps 2000 s until a refresh period
    passes without that ask, and then returns to the profile's 300 s."""
    source = ScriptedSource(lifetime=3600, latency=0.0)
    async with open_cache(source) as cache:
        await cache.get(PROFILE)
        assert cache.status()[0]["min_valid"] == 300
        await cache.get(PROFILE, min_valid=2000)
        assert cache.status()[0]["min_valid"] == 2000
        for _ in range(4):  # four refresh periods of default requests only
            calls = source.calls
            while source.calls == calls:
                await trio.sleep(60)
                await cache.get(PROFILE)
        assert cache.status()[0]["min_valid"] == 300


async def test_an_ask_above_the_cap_is_served_once_but_not_kept(autojump_clock: trio.testing.MockClock) -> None:
    """If a fresh 3600 s token is asked for 3000 s (more than the cap of 2700 s), then that request is served from the
    token it has, but the schedule keeps the profile's 300 s."""
    source = ScriptedSource(lifetime=3600, latency=0.0)
    async with open_cache(source) as cache:
        await cache.get(PROFILE)
        await cache.get(PROFILE, min_valid=3000)
        assert cache.status()[0]["min_valid"] == 300
        assert source.calls == 1


@pytest.mark.parametrize("expires_on", [math.nan, math.inf, -math.inf])
async def test_non_finite_lifetimes_back_off(autojump_clock: trio.testing.MockClock, expires_on: float) -> None:
    """If a source hands over a token whose expiry is NaN or infinite, then it is refused as a malformed reply and
    attempts back off (issue 9: ~75 requests/s), whatever clients ask meanwhile."""

    class Broken(ScriptedSource):
        async def acquire(self, scopes: tuple[str, ...]) -> TokenResponse:
            self.calls += 1
            self.times.append(wall())
            return TokenResponse(token=Token(access_token=Secret("x"), token_type="Bearer", expires_on=expires_on,
                                             scopes=scopes, obtained_at=wall()))

    source = Broken()
    async with open_cache(source) as cache:
        failed = await ask_every(lambda: cache.get(PROFILE), 0.1, HOUR)
        last_error = cache.status()[0]["last_error"]
        assert last_error is not None and last_error["code"] == "authority_unavailable"
    assert failed > 0.9 * HOUR / 0.1
    # Requests inside a backoff step fail fast; each step is one request (or three for a waiting flight).
    assert source.calls <= budget_bound(HOUR)
    assert most_in_any_window(source.times, 60.0) <= refresh_policy.BUDGET_BURST + 1 + 10


async def test_huge_lifetime_does_not_break_status(autojump_clock: trio.testing.MockClock) -> None:
    """If the authority issues a token valid for 10^18 s, then the cache serves it, its status can be formatted, and
    the systemd status line does not overflow (issue 9: the daemon died in time.localtime)."""
    from aadhelper.daemon import _status_line

    source = ScriptedSource(lifetime=1e18, latency=0.0)
    async with open_cache(source) as cache:
        await cache.get(PROFILE)
        assert cache.status()[0]["state"] == "valid"
        assert "next refresh" in _status_line(cache)


async def test_on_change_failure_does_not_escape_a_flight(autojump_clock: trio.testing.MockClock) -> None:
    """If reporting the cache's state raises, then the request still gets its token and the cache keeps working."""
    source = ScriptedSource(latency=0.0)
    async with open_cache(source) as cache:
        def broken() -> None:
            raise OverflowError("timestamp out of range for platform time_t")

        cache.on_change = broken
        assert (await cache.get(PROFILE)).access_token.reveal() == "token-1"
        await trio.sleep(HOUR)
        assert (await cache.get(PROFILE)).access_token.reveal() == "token-2"


async def test_failing_authority_sees_one_request_per_backoff_step(autojump_clock: trio.testing.MockClock) -> None:
    """If every refresh fails with a 503 while clients keep asking, then the authority sees at most one request per
    backoff step (1 s doubling to 5 min), not a 3-attempt flight per step (issue 9: 15-18 requests in 30 s)."""
    source = ScriptedSource(lifetime=3600, latency=0.0)
    async with open_cache(source) as cache:
        await cache.get(PROFILE)
        source.failures = [AuthorityUnavailable("the authority failed with HTTP 503", profile="graph")] * 10_000
        await trio.sleep(3600 - 300 - 5)  # the token is about to stop being servable
        await ask_every(lambda: cache.get(PROFILE), 0.2, 2 * HOUR)
    failing = source.times[1:]
    gaps = [b - a for a, b in itertools.pairwise(failing)]
    # Each step waits at least half its nominal backoff (jitter 0.5-1.0): 0.5 s, 1 s, 2 s ... then 150-300 s.
    assert len(failing) <= 30 + 2 * HOUR / (cache_module.BACKOFF_MAX / 2)
    assert sorted(gaps)[-10:] and min(sorted(gaps)[-10:]) >= cache_module.BACKOFF_MAX / 2
    assert max(gaps) <= cache_module.BACKOFF_MAX + 1


async def test_backoff_is_capped_at_five_minutes(autojump_clock: trio.testing.MockClock) -> None:
    """If the authority fails for two simulated hours and then recovers, then the token is refreshed again within
    five minutes of the recovery (the backoff cap holds)."""
    source = ScriptedSource(lifetime=3600, latency=0.0)
    async with open_cache(source) as cache:
        await cache.get(PROFILE)
        source.failures = [AuthorityUnavailable("HTTP 503", profile="graph")] * 10_000
        await trio.sleep(3 * HOUR)
        source.failures.clear()
        recovered = trio.current_time()
        while cache.status()[0]["last_error"] is not None:
            await trio.sleep(1)
        assert trio.current_time() - recovered <= cache_module.BACKOFF_MAX


async def test_local_failures_are_bounded_by_the_budget(autojump_clock: trio.testing.MockClock) -> None:
    """If the keyring stays locked while a script asks ten times a second, then fetch attempts stay within the
    profile's budget, the budget shows in status, and `erase` (invalidate) allows one attempt at once."""
    source = ScriptedSource(latency=0.0)
    source.failures = [KeyringLocked("the keyring is locked", profile="graph")] * 100_000
    async with open_cache(source) as cache:
        await ask_every(lambda: cache.get(PROFILE), 0.1, 600)
        assert source.calls <= budget_bound(600)
        assert cache.status()[0]["throttled_since"] is not None
        with pytest.raises(AuthorityUnavailable, match="limit of authority requests"):
            for _ in range(3):  # the budget may have one request left; then the next is over it
                with contextlib.suppress(KeyringLocked):
                    await cache.get(PROFILE)
        calls = source.calls
        cache.invalidate("graph")
        source.failures.clear()
        assert (await cache.get(PROFILE)).access_token.reveal().startswith("token-")
        assert source.calls == calls + 1
        assert cache.status()[0]["throttled_since"] is None


async def test_refused_scope_sets_do_not_accumulate(autojump_clock: trio.testing.MockClock) -> None:
    """If 3,000 distinct scope sets are refused by the authority, then the profile holds at most MAX_SCOPE_SETS
    entries, a scope set with a token is never evicted, status stays small, and all refused entries are gone once
    idle (issue 9: 47 MB that stayed, and a status reply over the client's limit)."""
    from aadhelper.errors import AuthenticationFailed
    from aadhelper.protocol import encode

    class RefusesResources(ScriptedSource):
        async def acquire(self, scopes: tuple[str, ...]) -> TokenResponse:
            if scopes[0].startswith("https://resource-"):
                self.calls += 1
                raise AuthenticationFailed("invalid scope", error="invalid_scope", aadsts=70011)
            return await super().acquire(scopes)

    source = RefusesResources(latency=0.0)
    async with open_cache(source) as cache:
        await cache.get(PROFILE)
        for i in range(3000):
            with pytest.raises(AadhelperError):
                await cache.get(PROFILE, (f"https://resource-{i}/.default",))
            await trio.sleep(1)
            assert len(cache.status()) <= cache_module.MAX_SCOPE_SETS
        assert len(encode({"tokens": cache.status()})) < 64 * 1024
        assert list(PROFILE.scopes) in [record["scopes"] for record in cache.status()]
        await trio.sleep(600)  # the flood spent the profile's budget; the good entry's keeper gets its turn back
        assert (await cache.get(PROFILE)).valid_for(PROFILE.min_valid, wall())
        await trio.sleep(cache_module.KEEP_WARM + 60)
        assert [record["scopes"] for record in cache.status()] == [list(PROFILE.scopes)]


async def test_full_profile_refuses_new_scope_sets_clearly(autojump_clock: trio.testing.MockClock) -> None:
    """If a profile already holds MAX_SCOPE_SETS valid tokens, then a new scope set is refused with a ConfigError
    naming the limit, and no authority request is made for it."""
    source = ScriptedSource(latency=0.0)
    async with open_cache(source) as cache:
        for i in range(cache_module.MAX_SCOPE_SETS):
            await cache.get(PROFILE, (f"https://r{i}/.default",))
            await trio.sleep(refresh_policy.BUDGET_REFILL)
        calls = source.calls
        with pytest.raises(ConfigError, match="already holds tokens for 32 scope sets"):
            await cache.get(PROFILE, ("https://one-more/.default",))
        assert source.calls == calls


async def test_status_shows_the_schedule_inputs(autojump_clock: trio.testing.MockClock) -> None:
    """If a token was fetched and refreshed, then status shows the effective min_valid, the requests of the last hour
    and the time of the last authority request."""
    source = ScriptedSource(lifetime=3600, latency=0.0)
    async with open_cache(source) as cache:
        await cache.get(PROFILE)
        await trio.sleep(3000)
        record = cache.status()[0]
        assert record["min_valid"] == 300
        assert record["requests_last_hour"] == 2
        assert record["last_request_at"] == int(source.times[-1])
        assert record["token_lifetime"] == 3600
        assert record["short_tokens"] is False
        await trio.sleep(2 * HOUR)
        assert cache.status()[0]["requests_last_hour"] <= 2


@pytest.mark.parametrize("retry_after", [0.0, 0.4])
async def test_a_retry_after_of_zero_still_backs_off(autojump_clock: trio.testing.MockClock,
                                                     retry_after: float) -> None:
    """If the authority keeps answering 429 with Retry-After 0 (or an HTTP-date already past), then attempts still
    back off exponentially instead of running until the request budget is spent (found by the fault suite)."""
    source = ScriptedSource(latency=0.0)
    source.failures = [AuthorityUnavailable("HTTP 429", retry_after=retry_after)] * 10_000
    async with open_cache(source) as cache:
        await ask_every(lambda: cache.get(PROFILE), 0.1, 600)
    assert source.calls <= 20
