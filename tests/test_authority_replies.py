"""Whatever the authority sends, or fails to send, the grant code answers with one clear error and stays bounded.

Every test drives the real grant code (``make_source`` → ``post_form`` over real HTTPS, trustme CA) against the
simulated authority with one injected fault, and asserts the error class, its exit code and the one line a user
sees. Bounded means: a total deadline on each exchange (patched small here; real time stays under a few seconds)
and a size limit on each reply, checked by what the authority managed to send and by the client's peak memory.
"""

from __future__ import annotations

import ssl
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from aadhelper.cache import TokenSource
from aadhelper.config import Profile
from aadhelper.errors import AadhelperError, AuthorityUnavailable, ConfigError
from aadhelper.fetcher import AsyncSecrets
from aadhelper.grants import HttpClients, http, make_source
from aadhelper.grants.refresh_token import SECRET_KIND as REFRESH_KIND
from aadhelper.grants.refresh_token import SignIns
from aadhelper.secret_store import MemorySecretStore
from aadhelper.testing import GRAPH, Fault, SimulatedAuthority
from aadhelper.testing.faults import http_date
from aadhelper.tokens import Secret, TokenResponse
from tests.harness import CLIENT as USER_CLIENT
from tests.harness import TENANT, sign_in_user, user_authority

APP, SECRET = "app", "s3cret-value"
SCOPES = (f"{GRAPH}/.default",)
#: The test's own bound on one exchange, far above the patched deadline: a wedged exchange fails the test.
GUARD = 20.0
#: The deadline the tests patch in, so that a stalled exchange costs little real time.
SHORT_DEADLINE = 0.5
MB = 1024 * 1024


@pytest.fixture
def authority(server_ssl_context: ssl.SSLContext) -> Iterator[SimulatedAuthority]:
    with SimulatedAuthority(ssl_context=server_ssl_context) as authority:
        authority.add_tenant(TENANT)
        authority.add_client(APP, tenant=TENANT, secret=SECRET)
        yield authority


def app_profile(url: str, ca_pem_file: Path) -> Profile:
    return Profile(name="app", tenant=TENANT, client_id=APP, scopes=SCOPES, authority=url,
                   credential="client_secret", ca_bundle=str(ca_pem_file))


@pytest.fixture
async def http_clients() -> AsyncIterator[HttpClients]:
    clients = HttpClients()
    yield clients
    await clients.aclose()


@pytest.fixture
def source(authority: SimulatedAuthority, ca_pem_file: Path, http_clients: HttpClients) -> TokenSource:
    """The client-secret source of the daemon, its secret stored, talking to ``authority``."""
    store = MemorySecretStore()
    store.set("app", "client_secret", Secret(SECRET))
    return make_source(app_profile(authority.url, ca_pem_file), http=http_clients, secrets=AsyncSecrets(store),
                       clock=time.time)


@pytest.fixture
def short_deadline(monkeypatch: pytest.MonkeyPatch) -> float:
    """A small total deadline per exchange (the module constant, read when an exchange starts)."""
    monkeypatch.setattr(http, "REQUEST_TIMEOUT", SHORT_DEADLINE)
    return SHORT_DEADLINE


async def acquire(source: TokenSource) -> TokenResponse:
    with trio.fail_after(GUARD):
        return await source.acquire(SCOPES)


async def refused(source: TokenSource, cls: type[AadhelperError] = AuthorityUnavailable) -> AadhelperError:
    """The error ``source`` raises: of class ``cls``, its line printable and on one line."""
    with trio.fail_after(GUARD), pytest.raises(cls) as caught:
        await source.acquire(SCOPES)
    exc = caught.value
    assert type(exc) is cls
    line = exc.one_line()
    assert line.isprintable() and "\n" not in line and len(line) < 400, line
    assert "'app'" in line  # the profile
    assert SECRET not in line
    return exc


def assert_unavailable(exc: AadhelperError, *words: str) -> None:
    assert isinstance(exc, AuthorityUnavailable) and exc.exit_code == 7 and exc.recovery == "backoff"
    for word in words:
        assert word in exc.one_line(), exc.one_line()


# HTTP errors and throttling ------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [500, 502, 503])
async def test_server_errors_without_retry_after(authority: SimulatedAuthority, source: TokenSource,
                                                 code: int) -> None:
    """If the authority answers 500, 502 or 503 without Retry-After, then the grant raises a retryable
    "authority unavailable" (exit 7) naming the status, with no retry_after of its own."""
    authority.inject(Fault.status(code))
    exc = await refused(source)
    assert_unavailable(exc, f"HTTP {code}", "retries with backoff")
    assert isinstance(exc, AuthorityUnavailable) and exc.retry_after is None
    assert (await acquire(source)).token.access_token


@pytest.mark.parametrize("code", [500, 502, 503])
async def test_server_errors_with_retry_after(authority: SimulatedAuthority, source: TokenSource, code: int) -> None:
    """If the authority answers 500, 502 or 503 with Retry-After in seconds, with or without a JSON body, then
    the error carries that delay and says it."""
    authority.inject(Fault.status(code, retry_after=7))
    authority.inject(Fault.status(code, body="Service Unavailable", retry_after=9))
    first, second = await refused(source), await refused(source)
    assert_unavailable(first, f"HTTP {code}", "retry after 7 s")
    assert_unavailable(second, f"HTTP {code}", "retry after 9 s")
    assert isinstance(first, AuthorityUnavailable) and first.retry_after == 7.0
    assert isinstance(second, AuthorityUnavailable) and second.retry_after == 9.0


async def test_throttle_with_retry_after_seconds_and_http_date(authority: SimulatedAuthority,
                                                               source: TokenSource) -> None:
    """If the authority throttles with HTTP 429 and Retry-After as seconds or as an HTTP-date, then both become
    the delay in seconds on a retryable error."""
    authority.inject(Fault.throttle(60))
    authority.inject(Fault.throttle(http_date(time.time() + 120)))
    seconds, date = await refused(source), await refused(source)
    assert_unavailable(seconds, "HTTP 429", "retry after 60 s", "temporarily_unavailable AADSTS90055")
    assert isinstance(seconds, AuthorityUnavailable) and seconds.retry_after == 60.0
    assert isinstance(date, AuthorityUnavailable) and date.retry_after is not None
    assert 100.0 < date.retry_after <= 120.0  # whole seconds in the date, and the clock moved on since
    assert authority.count("token") == 2


# the connection fails ---------------------------------------------------------------------------------------------


async def test_connection_refused(authority: SimulatedAuthority, source: TokenSource) -> None:
    """If nothing listens at the authority's address, then the grant raises "cannot reach ... connection
    refused" (exit 7); started again on the same port, the authority is reached."""
    authority.stop()
    exc = await refused(source)
    assert_unavailable(exc, "cannot reach the authority at 127.0.0.1", "connection refused")
    authority.start()
    assert (await acquire(source)).token.access_token


async def test_connection_closed_without_reply(authority: SimulatedAuthority, source: TokenSource) -> None:
    """If the authority closes the connection without answering, then the grant says so (exit 7)."""
    authority.inject(Fault.drop())
    exc = await refused(source)
    assert_unavailable(exc, "closed the connection without a reply")


async def test_reset_mid_body(authority: SimulatedAuthority, source: TokenSource) -> None:
    """If the connection is reset in the middle of the reply's body, then the grant raises a retryable error
    saying the reply was cut off, and the next request works."""
    authority.inject(Fault.reset_mid_body(40))
    exc = await refused(source)
    assert_unavailable(exc, "127.0.0.1", "in the middle of the reply")
    assert authority.requests[-1].body_sent == 40
    assert (await acquire(source)).token.access_token


async def test_accepted_but_never_answered(authority: SimulatedAuthority, source: TokenSource,
                                           short_deadline: float) -> None:
    """If the authority accepts the request and never answers, then the exchange ends at the total deadline
    with "did not answer within N s" (exit 7)."""
    authority.inject(Fault.hang())
    exc = await refused(source)
    assert_unavailable(exc, f"did not answer within {short_deadline:g} s")


async def test_dripping_body_hits_the_total_deadline(authority: SimulatedAuthority, source: TokenSource,
                                                     short_deadline: float) -> None:
    """If the authority drips its reply one byte at a time, each byte well within the per-read timeout, then the
    exchange still ends at the total deadline (exit 7), long before the body could be complete."""
    authority.inject(Fault.drip(short_deadline / 10))
    exc = await refused(source)
    assert_unavailable(exc, f"did not answer within {short_deadline:g} s")
    records = authority.wait_until(lambda rs: rs[-1].body_sent is not None)
    body_sent = records[-1].body_sent
    assert body_sent is not None and body_sent < 100  # a token reply is over 1000 bytes


# the body is too big -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", [Fault.huge_body(), Fault.endless_body()], ids=["100MB", "endless-chunked"])
async def test_oversized_reply_is_cut_at_the_limit(authority: SimulatedAuthority, source: TokenSource,
                                                   fault: Fault) -> None:
    """If the authority sends a 100 MB reply or an endless chunked one, then the grant stops reading at the
    limit with "the authority's reply exceeds 1 MiB" (exit 7): the authority could send only a bounded part of
    it, and the client's memory never held more than a few MiB."""
    authority.inject(fault)
    tracemalloc.start()
    try:
        exc = await refused(source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_unavailable(exc, "the authority's reply exceeds 1 MiB")
    records = authority.wait_until(lambda rs: rs[-1].body_sent is not None)
    body_sent = records[-1].body_sent
    # At most the limit, plus what the client had read ahead and what the kernel's socket buffers held.
    assert body_sent is not None and body_sent < 32 * MB
    assert peak < 16 * MB, f"peak traced memory {peak / MB:.1f} MiB"


# malformed replies --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault, what", [
    (Fault.malformed(), "not a JSON object"),
    (Fault.malformed('{"access_token": "abc", "expires_in": 3599', content_type="application/json"),
     "not a JSON object"),
    (Fault.malformed("[1, 2]", content_type="application/json"), "not a JSON object"),
    (Fault.reply_fields(access_token=Fault.REMOVE), "no access_token"),
    (Fault.reply_fields(access_token=""), "no access_token"),
    (Fault.reply_fields(expires_in=Fault.REMOVE), "bad expires_in"),
    (Fault.reply_fields(expires_in=0), "bad expires_in"),
    (Fault.reply_fields(expires_in=-3600), "bad expires_in"),
    (Fault.reply_fields(expires_in=0.5), "bad expires_in"),
    (Fault.reply_fields(expires_in="soon"), "bad expires_in"),
    (Fault.reply_fields(expires_in="inf"), "bad expires_in"),
    (Fault.reply_fields(expires_in="nan"), "bad expires_in"),
    (Fault.reply_fields(expires_in=float("nan")), "bad expires_in"),
    (Fault.reply_fields(expires_in=float("-inf")), "bad expires_in"),
    (Fault.reply_fields(expires_in=Fault.raw("1e999")), "bad expires_in"),
    (Fault.reply_fields(expires_in=Fault.raw("1" + "0" * 400)), "bad expires_in"),
    (Fault.reply_fields(expires_in=True), "bad expires_in"),
    (Fault.reply_fields(expires_in=[3600]), "bad expires_in"),
    (Fault.reply_fields(token_type="pop"), "token_type 'pop' is not Bearer"),
    (Fault.reply_fields(token_type="MAC"), "token_type 'MAC' is not Bearer"),
    (Fault.reply_fields(token_type=7), "token_type"),
])
async def test_malformed_token_replies(authority: SimulatedAuthority, source: TokenSource, fault: Fault,
                                       what: str) -> None:
    """If a 200 reply is not JSON, has no access token, no usable lifetime or a token type other than Bearer,
    then the grant raises "malformed token reply (...)" (exit 7) and hands out no token."""
    authority.inject(fault)
    exc = await refused(source)
    assert_unavailable(exc, "the authority sent a malformed token reply", what)


@pytest.mark.parametrize("expires_in", [10**18, "1e12", 1e300, Fault.raw("9" * 300)])
async def test_absurdly_long_lifetime_is_capped(authority: SimulatedAuthority, source: TokenSource,
                                                expires_in: object) -> None:
    """If the authority claims a finite lifetime beyond any real token's, then the token is kept no longer than
    the documented maximum."""
    authority.inject(Fault.reply_fields(expires_in=expires_in, refresh_in=expires_in))
    token = (await acquire(source)).token
    assert token.lifetime == http.MAX_TOKEN_LIFETIME
    assert token.refresh_on is None


@pytest.mark.parametrize("refresh_in", ["nan", float("nan"), Fault.raw("1e999"), -5, 0, "soon", 10**18, 3600])
async def test_unusable_refresh_in_is_ignored(authority: SimulatedAuthority, source: TokenSource,
                                              refresh_in: object) -> None:
    """If refresh_in (an advice) is non-finite, not positive, not a number or not before expiry, then the token
    is still used, without that advice."""
    authority.inject(Fault.reply_fields(expires_in=3600, refresh_in=refresh_in))
    token = (await acquire(source)).token
    assert token.lifetime == 3600.0 and token.refresh_on is None


async def test_bearer_in_any_case_and_usable_refresh_in(authority: SimulatedAuthority, source: TokenSource) -> None:
    """If the token type is "bearer" in any case and refresh_in lies within the lifetime, then the token says
    Bearer and keeps the advice."""
    authority.inject(Fault.reply_fields(token_type="BEARER", expires_in="3599", refresh_in=1800.5))
    token = (await acquire(source)).token
    assert token.token_type == "Bearer" and token.lifetime == 3599.0
    assert token.refresh_on is not None and token.refresh_on - token.obtained_at == 1800.5


# TLS ----------------------------------------------------------------------------------------------------------


@pytest.fixture(params=[("untrusted CA", "unable to get local issuer certificate"),
                        ("wrong host name", "IP address mismatch")], ids=lambda param: param[0])
def wrong_tls(request: pytest.FixtureRequest, trustme_ca: trustme.CA) -> tuple[ssl.SSLContext, str]:
    """A server certificate the client rejects (from a CA it does not trust, or for another host name), and the
    reason the client gives."""
    case, reason = request.param
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    if case == "untrusted CA":
        trustme.CA().issue_cert("127.0.0.1").configure_cert(context)
    else:
        trustme_ca.issue_cert("not-the-authority.example").configure_cert(context)
    return context, reason


async def test_tls_verification_failure_is_a_configuration_error(wrong_tls: tuple[ssl.SSLContext, str],
                                                                 ca_pem_file: Path,
                                                                 http_clients: HttpClients) -> None:
    """If the authority's certificate does not verify (unknown CA, wrong name), then the grant raises a
    configuration error (exit 3, not retried as "unavailable") that says why and points at ca_bundle."""
    context, reason = wrong_tls
    with SimulatedAuthority(ssl_context=context) as impostor:
        impostor.add_tenant(TENANT)
        impostor.add_client(APP, tenant=TENANT, secret=SECRET)
        store = MemorySecretStore()
        store.set("app", "client_secret", Secret(SECRET))
        source = make_source(app_profile(impostor.url, ca_pem_file), http=http_clients,
                             secrets=AsyncSecrets(store), clock=time.time)
        exc = await refused(source, ConfigError)
        assert impostor.count() == 0  # the secret never went out
    line = exc.one_line()
    assert exc.exit_code == 3
    assert "the TLS certificate of the authority at 127.0.0.1 does not verify" in line
    assert reason in line and "ca_bundle" in line


async def test_plain_http_on_an_https_url(ca_pem_file: Path, http_clients: HttpClients) -> None:
    """If the authority URL says https but the server speaks plain HTTP, then the grant says it cannot reach the
    authority because of a TLS error, in words (exit 7)."""
    with SimulatedAuthority() as plain:
        store = MemorySecretStore()
        store.set("app", "client_secret", Secret(SECRET))
        source = make_source(app_profile(plain.url.replace("http:", "https:"), ca_pem_file), http=http_clients,
                             secrets=AsyncSecrets(store), clock=time.time)
        exc = await refused(source)
    assert_unavailable(exc, "cannot reach the authority at 127.0.0.1: TLS error: wrong version number")


# a rotated refresh token with an unusable access token ----------------------------------------------------------


@pytest.mark.parametrize("spoiled", [{"access_token": Fault.REMOVE}, {"expires_in": "nan"},
                                     {"expires_in": Fault.raw("1e999")}, {"token_type": "pop"}])
async def test_rotated_refresh_token_is_kept_when_the_access_token_is_unusable(
        server_ssl_context: ssl.SSLContext, client_ssl_context: ssl.SSLContext, ca_pem_file: Path,
        http_clients: HttpClients, spoiled: dict[str, Any]) -> None:
    """If a refresh rotates the refresh token but the reply's access token is unusable, then the grant raises a
    malformed-reply error (exit 7) and the new refresh token is stored: the next refresh presents it and works."""
    with user_authority(server_ssl_context, device_code_interval=0) as authority:
        first = sign_in_user(authority, client_ssl_context)
        store = MemorySecretStore()
        store.set("me", REFRESH_KIND, Secret(first))
        profile = Profile(name="me", tenant=TENANT, client_id=USER_CLIENT, scopes=SCOPES, authority=authority.url,
                          credential="user", ca_bundle=str(ca_pem_file))
        source = make_source(profile, http=http_clients, secrets=AsyncSecrets(store), clock=time.time,
                             sign_ins=SignIns(AsyncSecrets(store)))
        authority.inject(Fault.reply_fields(grant_type="refresh_token", **spoiled))
        with trio.fail_after(GUARD), pytest.raises(AuthorityUnavailable, match="malformed token reply"):
            await source.acquire(SCOPES)
        stored = store.get("me", REFRESH_KIND)
        assert stored is not None and stored.reveal() != first
        assert (await acquire(source)).token.access_token
        refreshes = [r for r in authority.requests if r.grant_type == "refresh_token"]
        assert [r.status for r in refreshes] == [200, 200]  # the second presented the rotated token, not a replay



async def test_fixed_ca_bundle_file_is_used_without_a_restart(server_ssl_context: ssl.SSLContext,
                                                             ca_pem_file: Path, http_clients: HttpClients) -> None:
    """If the profile's CA bundle file held the wrong CA and is then replaced by the right one, then the next
    source made from the same HTTP clients (as the fetcher makes per fetch) verifies the authority and works."""
    right = ca_pem_file.read_bytes()
    ca_pem_file.write_bytes(trustme.CA().cert_pem.bytes())
    with SimulatedAuthority(ssl_context=server_ssl_context) as authority:
        authority.add_tenant(TENANT)
        authority.add_client(APP, tenant=TENANT, secret=SECRET)
        store = MemorySecretStore()
        store.set("app", "client_secret", Secret(SECRET))

        def new_source() -> TokenSource:
            return make_source(app_profile(authority.url, ca_pem_file), http=http_clients,
                               secrets=AsyncSecrets(store), clock=time.time)

        await refused(new_source(), ConfigError)
        # Replaced, as editors and config tools do: a new file at the same path (an in-place rewrite is caught by
        # its size and mtime, which a fast test cannot rely on: timestamps can be coarser than the test).
        fixed = ca_pem_file.with_suffix(".new")
        fixed.write_bytes(right)
        fixed.replace(ca_pem_file)
        assert (await acquire(new_source())).token.access_token
