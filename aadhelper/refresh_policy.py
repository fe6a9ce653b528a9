"""When the daemon asks the authority for a token: the refresh schedule and the per-profile request budget.

Pure policy (no trio, no I/O), so that every rule here can be checked over simulated hours. The token cache
(:mod:`aadhelper.cache`) asks :func:`plan` when to refresh an entry and :class:`RequestBudget` whether an
authority request may go out now.

Rules, each with its reason:

* **The servable window.** A token of lifetime ``L`` is served while it has at least the entry's minimum
  validity ``m`` left, so it is servable for ``W = L - m`` seconds. The keeper refreshes at 75-80 % of ``W``
  after issue (random jitter, so profiles do not refresh in lock-step; Vault Agent renews at ~2/3 with jitter,
  kubelogin at 80 %), or at the authority's ``refresh_in`` when that is earlier.
* **Spacing floor.** Whatever the above computes, one entry's background refreshes are at least
  :func:`spacing` = max(:data:`MIN_SPACING`, ``L``/4) apart. This is the ceiling no bug in ``m`` or in an
  authority reply can cross: the storm of issue 9 (590 requests in 12 s) came from ``W <= 0``.
* **What a request may ask.** ``m`` may not exceed :func:`cap` = ``L`` - spacing(``L``): a larger ``m`` would
  leave no room to refresh before the token stops being servable. A request that explicitly asks more than
  the cap of the tokens the authority actually issues is refused by the cache, and changes nothing.
* **Short tokens.** When the *profile's* ``min_valid`` exceeds the cap (the authority's tokens live no longer
  than the profile asks; Entra can be configured to issue 5-minute tokens), refusing every request would make
  the profile useless: the entry refreshes at 75-80 % of ``L`` instead, a request is served any token with at
  least :data:`SHORT_RESERVE` of ``L`` left, and the user is told once (log and ``status``).
* **Asks decay.** An explicit ``--min-valid`` above the profile's raises ``m`` only until the next refresh at
  which nobody asked for it again, so one odd request cannot shorten the schedule for hours.
* **A budget per profile.** Every authority request (background, a waiting request, any retry) takes one
  token from the profile's bucket: :data:`BUDGET_BURST` at once, then one per :data:`BUDGET_REFILL` seconds.
  Explicit user actions (``invalidate``, ``login``, ``secret set``, ``reload``) add one beyond the burst, so
  the user's own retry is never refused. An empty bucket is reported, never waited out in a loop.

What cannot be guaranteed: with short tokens, a served token may have less left than the profile's
``min_valid`` (it has at least ``SHORT_RESERVE`` of its lifetime); with a failing authority, the old token is
served until it expires and then requests fail.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

#: Least seconds between two background refreshes of one entry (the lower bound of :func:`spacing`).
MIN_SPACING = 30.0
#: Least seconds between two attempts of one entry's keeper, and the least wait the budget ever asks for, whatever
#: computed them: Unix times near 1.8e9 s have a resolution of ~0.2 us, so a wait of a few nanoseconds is no wait
#: at all and a loop built on one spins (found by the ceiling tests with 1 s tokens).
MIN_WAIT = 0.5
#: Share of the lifetime a short-token entry keeps for requests (its refresh is at 75-80 % of the lifetime).
SHORT_RESERVE = 0.1
#: Jitter of the refresh point inside the servable window.
REFRESH_AT = (0.75, 0.80)
#: Authority requests one profile may make at once, and the seconds after which one more is allowed.
BUDGET_BURST = 20
BUDGET_REFILL = 6.0


def spacing(lifetime: float) -> float:
    """Least seconds between two background refreshes of an entry whose tokens live ``lifetime`` seconds."""
    return max(MIN_SPACING, lifetime / 4)


def cap(lifetime: float) -> float:
    """The largest minimum validity an entry can keep with tokens of ``lifetime`` seconds (may be negative)."""
    return lifetime - spacing(lifetime)


@dataclass(frozen=True)
class Plan:
    """An entry's schedule for one token."""

    #: When the keeper refreshes (Unix seconds).
    refresh_at: float
    #: The minimum validity the schedule keeps (seconds); requests asking for no more are served without waiting.
    min_valid: float
    #: The authority's tokens are shorter than the profile asks (the short-token rule applies).
    short: bool


def plan(*, obtained_at: float, lifetime: float, refresh_on: float | None, profile_min_valid: float, asked: float,
         last_request: float, rng: random.Random) -> Plan:
    """The schedule for a token of ``lifetime`` seconds obtained at ``obtained_at``.

    ``asked`` is the largest recent explicit ask (0: none; the cache only passes asks within the cap);
    ``last_request`` is when the entry last asked the authority (the spacing floor counts from there).
    """
    most = max(0.0, cap(lifetime))
    short = profile_min_valid > most
    if short:
        reserve = SHORT_RESERVE * lifetime
        keep = max(reserve, min(asked, most))
        window = lifetime if keep == reserve else lifetime - keep
    else:
        keep = min(max(profile_min_valid, asked), most)
        window = lifetime - keep
    at = obtained_at + window * rng.uniform(*REFRESH_AT)
    if refresh_on is not None and refresh_on < at:
        at = refresh_on
    return Plan(refresh_at=max(at, last_request + spacing(lifetime)), min_valid=keep, short=short)


class RequestBudget:
    """A token bucket of authority requests per profile (see the module docstring)."""

    def __init__(self, burst: int = BUDGET_BURST, refill: float = BUDGET_REFILL) -> None:
        self._burst = burst
        self._refill = refill
        #: profile -> (tokens, at): the bucket's level at time ``at``.
        self._buckets: dict[str, tuple[float, float]] = {}

    def _level(self, profile: str, now: float) -> float:
        tokens, at = self._buckets.get(profile, (float(self._burst), now))
        if tokens >= self._burst:
            return tokens  # a granted extra is kept until used
        return min(float(self._burst), tokens + max(0.0, now - at) / self._refill)

    def take(self, profile: str, now: float) -> float:
        """Take one request: 0.0 when allowed, else the seconds until the next one is."""
        level = self._level(profile, now)
        if level >= 1.0:
            self._buckets[profile] = (level - 1.0, now)
            return 0.0
        self._buckets[profile] = (level, now)
        return max(MIN_WAIT, (1.0 - level) * self._refill)

    def grant(self, profile: str, now: float) -> None:
        """An explicit user action: one more request, even beyond the burst (but never more than one beyond)."""
        self._buckets[profile] = (min(self._level(profile, now) + 1.0, self._burst + 1.0), now)
