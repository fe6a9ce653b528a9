"""Authority faults: each met by a background refresh while the old token is still servable (see the package
docstring)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, Literal

from ... import client, refresh_policy
from ...secret_chunks import CLIENT_SECRET
from ..authority import SimulatedAuthority
from ..faults import Fault, http_date
from .base import SHARED, Case, Shared
from .measure import (
    Background,
    Group,
    KnownDefect,
    Poller,
    Result,
    alive,
    backoff_bound,
    entry_requests,
    requests_since,
    run_cli,
    sleep_until,
)
from .world import FaultWorld

LIFETIME: Final = 40
MIN_VALID: Final = 5

FOR_EVER: Final = 100_000


class AuthorityCase(Case):
    """An authority fault met by a background refresh while the old token is still servable (module docstring)."""

    group: Group = "authority"

    def __init__(self, name: str, fault: Callable[[], Fault] | None = None, *,
                 how: Literal["fault", "refused", "tls"] = "fault", exits: frozenset[int] = frozenset({7}),
                 known_defect: KnownDefect | None = None) -> None:
        self.name, self.fault, self.how, self.exits = name, fault, how, exits
        self.known_defect = known_defect
        self.authority: SimulatedAuthority | None = None

    def prepare(self, world: FaultWorld) -> None:
        if self.how == "tls":
            import trustme

            # Its certificate comes from a CA nobody trusts; the profile names the world's CA as usual.
            self.authority = world.authority(token_lifetime=LIFETIME, ssl_context=world.server_context(trustme.CA()))
        else:
            self.authority = world.authority(token_lifetime=LIFETIME)
        world.add_profile(SHARED, self.profile, self.authority, min_valid=MIN_VALID)

    def run(self, shared: Shared) -> Result:
        authority, daemon, timing = self.authority, shared.daemon, shared.timing
        assert authority is not None
        result = Result(self.name, self.group, expected_exits=self.exits)
        env = shared.world.daemon_env(SHARED)
        start = time.monotonic()
        expires = start  # no cached token (TLS: the very first request fails)
        bites = start
        if self.how != "tls":
            try:
                reply = client.get_token(self.profile, socket_path=daemon.socket_path)
            finally:
                shared.ready.release()
            # expires_on is whole seconds, rounded down: the token lives up to 1 s longer than this.
            expires = start + float(reply["expires_on"]) - time.time()
            # The refresh that meets the fault: the spacing floor after the first request.
            bites = start + refresh_policy.MIN_SPACING
            shared.first_bite = min(shared.first_bite, bites)
        else:
            shared.ready.release()
        injected, before = time.time(), entry_requests(daemon, self.profile)
        self.inject()
        cli: Background | None = None
        with Poller(daemon, self.profile) as poller:
            if self.how == "tls":
                cli = Background(lambda: run_cli(env, "token", self.profile))
            # The failed refresh leaves the old token served while it has min_valid left; then a client hears why.
            sleep_until(max(bites, expires - MIN_VALID) + 1.5)
            cli = cli or Background(lambda: run_cli(env, "token", self.profile))
            sleep_until(bites + timing.observe)
        result.cli = cli.result()
        end = time.time()
        result.daemon_alive = alive(daemon)
        if shared.control is not None:
            result.others = shared.control.served(since=start)
        if self.how == "tls":
            result.cached = None
        else:
            result.cached = poller.served(until=expires - MIN_VALID - 0.5)
        if self.counted_by_peer:
            times = self.request_times(injected)
            result.window = end - (times[0] if times else injected)
            result.requests = len(times)
            result.body_sent = max((r.body_sent or 0 for r in authority.requests), default=0)
        else:
            result.counted_by = "daemon"
            result.requests = entry_requests(daemon, self.profile) - before
            result.window = end - injected
        # A TLS failure is a configuration error: one request, never retried.
        result.bound = 1 if self.how == "tls" else backoff_bound(result.window)
        result.bad_output = poller.bad_output()
        self.repair()
        if self.stores_secret and shared.world.store.get(self.profile, CLIENT_SECRET) is None:
            result.lost.append("the stored client secret")
        return result

    # What the subclasses of other credential kinds (identity_cases) change: the fault, who counts the requests.

    #: Whether the profile's secret is in the keyring (and must still be there after the fault).
    stores_secret = True

    @property
    def counted_by_peer(self) -> bool:
        """Whether the faulted peer counts the requests (:meth:`request_times`), else the daemon's status does
        (nothing reaches a peer that refuses connections or fails the TLS handshake)."""
        return self.how == "fault"

    def inject(self) -> None:
        """Start the fault (it lasts until :meth:`repair`)."""
        assert self.authority is not None
        if self.how == "fault":
            assert self.fault is not None
            self.authority.inject(self.fault(), times=FOR_EVER)
        elif self.how == "refused":
            self.authority.stop()

    def request_times(self, since: float) -> list[float]:
        """When the faulted peer received a request since ``since`` (Unix time), as the peer counted them."""
        assert self.authority is not None
        return requests_since(self.authority, since)

    def repair(self) -> None:
        assert self.authority is not None
        self.authority.clear_faults()
        if self.how == "refused":
            self.authority.start()


def authority_cases() -> list[Case]:
    fields: list[tuple[str, Callable[[], Fault], frozenset[int]]] = [
        ("200 without access_token", lambda: Fault.reply_fields(access_token=Fault.REMOVE), frozenset({7})),
        ("expires_in missing", lambda: Fault.reply_fields(expires_in=Fault.REMOVE), frozenset({7})),
        ("expires_in 0", lambda: Fault.reply_fields(expires_in=0), frozenset({7})),
        ("expires_in negative", lambda: Fault.reply_fields(expires_in=-3600), frozenset({7})),
        ("expires_in huge (1e999)", lambda: Fault.reply_fields(expires_in=Fault.raw("1e999")), frozenset({0, 7})),
        ("expires_in 10^18", lambda: Fault.reply_fields(expires_in=10**18), frozenset({0, 7})),
        ('expires_in "inf"', lambda: Fault.reply_fields(expires_in="inf"), frozenset({7})),
        ('expires_in "nan"', lambda: Fault.reply_fields(expires_in="nan"), frozenset({7})),
        ("expires_in NaN (bare)", lambda: Fault.reply_fields(expires_in=float("nan")), frozenset({7})),
        ('expires_in "soon" (a string)', lambda: Fault.reply_fields(expires_in="soon"), frozenset({7})),
        ("token_type not Bearer", lambda: Fault.reply_fields(token_type="pop"), frozenset({7})),
    ]
    cases: list[Case] = []
    for code in (500, 502, 503):
        cases.append(AuthorityCase(f"HTTP {code}", lambda code=code: Fault.status(code)))  # type: ignore[misc]
        cases.append(AuthorityCase(f"HTTP {code} + Retry-After 10",
                                   lambda code=code: Fault.status(code, retry_after=10)))  # type: ignore[misc]
    cases += [
        AuthorityCase("429 Retry-After 60 s", lambda: Fault.throttle(60)),
        # A fault is one fixed reply: a date that stays ahead for the whole window, as a fresh one each time would.
        AuthorityCase("429 Retry-After HTTP-date", lambda: Fault.throttle(http_date(time.time() + 600))),
        # Found by this suite: both once replaced the backoff step with no wait (until the request budget ran out).
        AuthorityCase("429 Retry-After HTTP-date in the past (clock skew)",
                      lambda: Fault.throttle(http_date(time.time() - 600))),
        AuthorityCase("429 Retry-After 0", lambda: Fault.throttle(0)),
        AuthorityCase("connection refused", how="refused"),
        AuthorityCase("reset mid-body", Fault.reset_mid_body),
        AuthorityCase("accept, never answer", Fault.hang),
        AuthorityCase("drip 1 byte/s", lambda: Fault.drip(1.0)),
        AuthorityCase("100 MB body", Fault.huge_body),
        AuthorityCase("endless chunked body", Fault.endless_body),
        AuthorityCase("malformed JSON", lambda: Fault.malformed('{"access_token": ', content_type="application/json")),
        AuthorityCase("HTML instead of JSON", Fault.malformed),
        *(AuthorityCase(name, fault, exits=exits) for name, fault, exits in fields),
        AuthorityCase("TLS: untrusted certificate", how="tls", exits=frozenset({3})),
    ]
    return cases
