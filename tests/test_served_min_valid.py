"""The minimum validity a token reply was served against (the daemon's ``min_valid`` reply field, issue 13 §2):
the kubectl plugin tells kubectl to drop the token that long before it expires, so it must be what the cache
really kept, short tokens included."""

from __future__ import annotations

import trio
import trio.testing

from aadhelper.config import Profile
from tests.harness import PROFILE, ScriptedSource, open_cache, wall


async def test_the_served_minimum_is_the_asked_or_the_profiles(autojump_clock: trio.testing.MockClock) -> None:
    """If a request names a minimum validity, then that is what it was served against; else the profile's."""
    async with open_cache(ScriptedSource(lifetime=3600)) as cache:
        await cache.get(PROFILE)
        assert cache.served_min_valid(PROFILE, None, None) == PROFILE.min_valid
        await cache.get(PROFILE, None, 600)
        assert cache.served_min_valid(PROFILE, None, 600) == 600


async def test_short_tokens_are_served_against_the_reserve_they_keep(autojump_clock: trio.testing.MockClock) -> None:
    """If the authority's tokens are shorter than the profile's minimum validity allows, then a reply is served
    against the short-token reserve (less than the profile's), and every token served over an hour has at least
    that much left: expires_on minus the served minimum is never in the past (kubectl would run the plugin for
    every request)."""
    profile = Profile(**{**PROFILE.__dict__, "min_valid": 300})
    async with open_cache(ScriptedSource(lifetime=120, latency=0.5)) as cache:
        await cache.get(profile)
        needs = []
        for _ in range(360):
            await trio.sleep(10)
            token = await cache.get(profile)
            need = cache.served_min_valid(profile, None, None)
            needs.append(need)
            assert token.expires_on - need >= wall()
        assert 0 < max(needs) < 300
