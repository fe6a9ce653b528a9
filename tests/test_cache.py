"""Unit tests of the token cache's timing rules with a scripted token source and trio's autojump clock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from aadhelper import cache as cache_module
from aadhelper.config import Profile
from aadhelper.errors import (
    AadhelperError,
    AuthenticationFailed,
    AuthorityUnavailable,
    ConfigError,
    KeyringLocked,
    LoginRequired,
)

from .harness import BASE, PROFILE, ScriptedSource, open_cache, wall


async def test_concurrent_cold_requests_share_one_fetch(autojump_clock: trio.testing.MockClock) -> None:
    """If 100 requests arrive for a cold profile at once, then the source is asked once and all get its token."""
    source = ScriptedSource()
    got: list[str] = []
    async with open_cache(source) as cache:
        async def one() -> None:
            got.append((await cache.get(PROFILE)).access_token.reveal())

        async with trio.open_nursery() as nursery:
            for _ in range(100):
                nursery.start_soon(one)
    assert source.calls == 1
    assert got == ["token-1"] * 100


async def test_token_is_refreshed_ahead_and_old_one_served_during_refresh(
        autojump_clock: trio.testing.MockClock) -> None:
    """If time passes towards expiry, then the keeper refreshes before the token drops below the minimum validity,
    and requests during that refresh are answered at once with the old token."""
    source = ScriptedSource(lifetime=3600, latency=30.0)
    async with open_cache(source) as cache:
        first = await cache.get(PROFILE)
        next_refresh = cache.status()[0]["next_refresh"]
        assert next_refresh is not None  # a cached token has a refresh planned
        # Natural refresh point: 75-80 % of the servable time (3600 - 300 s) after issue.
        assert 0.75 * 3300 <= next_refresh - first.obtained_at <= 0.80 * 3300 + 1
        await trio.sleep(next_refresh + 2 - wall())
        # The refresh is now under way (it takes 30 s): a request gets the old token without waiting.
        assert cache.status()[0]["refreshing"] is True
        before = trio.current_time()
        during = await cache.get(PROFILE)
        assert trio.current_time() == before
        assert during.access_token.reveal() == "token-1"
        await trio.sleep(60)
        after = await cache.get(PROFILE)
        assert after.access_token.reveal() == "token-2"
        assert source.calls == 2
        # Every token served kept at least the minimum validity.
        for token in (first, during, after):
            assert token.expires_on - wall() >= 0  # sanity
        assert first.expires_on - (BASE + before) >= PROFILE.min_valid


async def test_refresh_never_lets_served_tokens_drop_below_min_valid(autojump_clock: trio.testing.MockClock) -> None:
    """If a client asks every 10 s for a whole day of short-lived tokens, then every token it gets has at least the
    minimum validity left and it never waits for the authority after the first fetch."""
    source = ScriptedSource(lifetime=120, latency=2.0)
    profile = Profile(**{**PROFILE.__dict__, "min_valid": 30})
    waits = []
    async with open_cache(source) as cache:
        await cache.get(profile)
        for _ in range(24 * 360):
            await trio.sleep(10)
            before = trio.current_time()
            token = await cache.get(profile)
            waits.append(trio.current_time() - before)
            assert token.remaining(wall()) >= 30
    assert max(waits) == 0
    assert source.calls > 24 * 3600 / 120  # it kept refreshing


async def test_refresh_in_from_authority_is_honoured(autojump_clock: trio.testing.MockClock) -> None:
    """If the authority advises refresh_in (Entra: half the lifetime), then the keeper refreshes at that time rather
    than at ~75 %."""
    source = ScriptedSource(lifetime=3600, latency=0.0, refresh_in=1800)
    async with open_cache(source) as cache:
        await cache.get(PROFILE)
        await trio.sleep(1799)
        assert source.calls == 1
        await trio.sleep(2)
        assert source.calls == 2


async def test_refresh_in_below_the_spacing_floor_is_floored(autojump_clock: trio.testing.MockClock) -> None:
    """If the authority advises a refresh_in shorter than a quarter of the lifetime (or 0 s), then the keeper still
    refreshes at most once per quarter lifetime."""
    source = ScriptedSource(lifetime=3600, latency=0.0, refresh_in=1)
    async with open_cache(source) as cache:
        await cache.get(PROFILE)
        await trio.sleep(899)
        assert source.calls == 1
        await trio.sleep(2)
        assert source.calls == 2
        await trio.sleep(24 * 3600)
        assert source.calls <= 2 + 24 * 4


async def test_background_failure_keeps_serving_old_token_and_backs_off(autojump_clock: trio.testing.MockClock) -> None:
    """If background refreshes fail with retryable errors, then the old token is still served, attempts back off
    exponentially, and the status shows the last error until a refresh succeeds."""
    source = ScriptedSource(lifetime=3600, latency=0.0)
    async with open_cache(source) as cache:
        first = await cache.get(PROFILE)
        source.failures = [AuthorityUnavailable("the authority failed with HTTP 503", profile="graph")] * 1000
        await trio.sleep(0.8 * 3300 + 120)
        assert (await cache.get(PROFILE)) is first
        status = cache.status()[0]
        assert status["last_error"] is not None and status["last_error"]["code"] == "authority_unavailable"
        assert status["failures"] >= 2
        calls_so_far = source.calls
        # Backoff: far fewer attempts than one per second.
        assert calls_so_far < 40
        source.failures.clear()
        await trio.sleep(600)
        token = await cache.get(PROFILE)
        assert token is not first
        assert cache.status()[0]["last_error"] is None


async def test_retry_after_blocks_requests_without_calling_authority(autojump_clock: trio.testing.MockClock) -> None:
    """If the authority throttles with Retry-After 60, then requests in the next 60 s fail fast without a new
    authority request, and the first request after it succeeds."""
    source = ScriptedSource(latency=0.0)
    source.failures = [AuthorityUnavailable("the authority throttled the request (HTTP 429)", retry_after=60.0)]
    async with open_cache(source) as cache:
        with pytest.raises(AuthorityUnavailable) as first:
            await cache.get(PROFILE)
        assert first.value.retry_after == 60.0
        await trio.sleep(30)
        with pytest.raises(AuthorityUnavailable, match="next attempt in"):
            await cache.get(PROFILE)
        assert source.calls == 1
        await trio.sleep(31)
        assert (await cache.get(PROFILE)).access_token.reveal() == "token-2"


async def test_short_retryable_failures_are_retried_within_one_request(autojump_clock: trio.testing.MockClock) -> None:
    """If the authority answers 503 twice and then succeeds, then a single request gets a token."""
    source = ScriptedSource(latency=0.0)
    source.failures = [AuthorityUnavailable("HTTP 503"), AuthorityUnavailable("HTTP 503")]
    async with open_cache(source) as cache:
        assert (await cache.get(PROFILE)).access_token.reveal() == "token-3"


@pytest.mark.parametrize("error", [
    AuthenticationFailed("wrong secret", error="invalid_client", aadsts=7000215),
    LoginRequired("sign-in expired", error="invalid_grant", aadsts=700082),
])
async def test_configuration_errors_are_not_retried(autojump_clock: trio.testing.MockClock, error: Exception) -> None:
    """If the authority rejects the credentials, then later requests get the same error without another authority
    request until the profile is invalidated."""
    source = ScriptedSource(latency=0.0)
    source.failures = [error]
    async with open_cache(source) as cache:
        for _ in range(5):
            with pytest.raises(type(error)):
                await cache.get(PROFILE)
            await trio.sleep(100)
        assert source.calls == 1
        assert cache.status()[0]["state"] in ("error", "login_required")
        assert cache.invalidate("graph") == 1
        assert (await cache.get(PROFILE)).access_token.reveal() == "token-2"


async def test_min_valid_longer_than_token_lifetime_is_a_clear_error(autojump_clock: trio.testing.MockClock) -> None:
    """If a request asks for more validity than the authority ever issues, then it gets a ConfigError saying so."""
    source = ScriptedSource(lifetime=600, latency=0.0)
    async with open_cache(source) as cache:
        with pytest.raises(ConfigError, match="valid for 600 s"):
            await cache.get(PROFILE, min_valid=3600)


async def test_cancelled_request_does_not_cancel_the_fetch(autojump_clock: trio.testing.MockClock) -> None:
    """If the only waiting client goes away mid-fetch, then the fetch completes and the next request reuses it."""
    source = ScriptedSource(latency=10.0)
    async with open_cache(source) as cache:
        with trio.move_on_after(1):
            await cache.get(PROFILE)
        await trio.sleep(20)
        assert (await cache.get(PROFILE)).access_token.reveal() == "token-1"
        assert source.calls == 1


async def test_scope_sets_are_cached_separately(autojump_clock: trio.testing.MockClock) -> None:
    """If two scope sets are asked for, then each has its own token; the order of scopes does not matter."""
    source = ScriptedSource(latency=0.0)
    async with open_cache(source) as cache:
        a = await cache.get(PROFILE, ("https://a/.default",))
        b = await cache.get(PROFILE, ("https://b/.default", "x"))
        b2 = await cache.get(PROFILE, ("x", "https://b/.default", "x"))
        assert a is not b and b is b2
        assert cache.invalidate("graph", ("https://a/.default",)) == 1
        assert len(cache.status()) == 1


async def test_idle_entries_stop_refreshing(autojump_clock: trio.testing.MockClock) -> None:
    """If nobody asks for a token for longer than KEEP_WARM, then the keeper stops refreshing and drops it."""
    source = ScriptedSource(lifetime=3600, latency=0.0)
    async with open_cache(source) as cache:
        await cache.get(PROFILE)
        await trio.sleep(cache_module.KEEP_WARM + 2 * 3600)
        calls = source.calls
        await trio.sleep(5 * 3600)
        assert source.calls == calls
        assert cache.status() == []


@pytest.mark.parametrize("error", [
    KeyringLocked("the keyring is locked", profile="graph"),
    AadhelperError("the token fetcher process stopped during the request"),
])
async def test_local_failure_is_retried_by_the_next_request(autojump_clock: trio.testing.MockClock,
                                                            error: AadhelperError) -> None:
    """If the keyring was locked when a token was needed, or the fetcher process died, then the next request tries
    again at once, so unlocking the keyring is enough (no reload, no waiting for a backoff)."""
    source = ScriptedSource(latency=0.0)
    source.failures = [error]
    async with open_cache(source) as cache:
        with pytest.raises(type(error)):
            await cache.get(PROFILE)
        assert (await cache.get(PROFILE)).access_token.reveal() == "token-2"
