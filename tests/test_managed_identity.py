"""Managed-identity profiles (issue 12 §3): the config (source detection, user-assigned ids, what is refused), the
token source against the simulated endpoints (each protocol, every bad reply), and the traffic a failing IMDS sees
from the real token cache over simulated hours.

The source talks to :class:`~aadhelper.testing.managed_identity.SimulatedManagedIdentity` through an httpx transport
that calls the endpoint's own request handler, so trio's autojump clock can run hours in a moment (the same
endpoints serve the real daemon over loopback HTTP in ``test_managed_identity_e2e.py``).
"""

from __future__ import annotations

import email.message
import itertools
import os
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from aadhelper import cache as cache_module
from aadhelper import process_setup
from aadhelper.cache import TokenCache
from aadhelper.config import ARC_TOKEN_URL, IMDS_TOKEN_URL, Profile, parse_config
from aadhelper.errors import AadhelperError, AuthenticationFailed, AuthorityUnavailable, ConfigError
from aadhelper.grants.managed_identity import ManagedIdentitySource
from aadhelper.testing import GRAPH, Fault, SimulatedAuthority
from aadhelper.testing.managed_identity import ENDPOINT, SimulatedManagedIdentity, Source
from aadhelper.testing.server import DROP, HttpRequest

from .harness import TENANT, cli_env, run, wall

HOUR = 3600.0
SCOPE = f"{GRAPH}/.default"
#: Where the in-process endpoints "are" (the transport never resolves it).
URL = "http://identity.test"


def profile(keys: str = "", environ: dict[str, str] | None = None, name: str = "vm") -> Profile:
    text = f'[profiles.{name}]\ncredential = "managed_identity"\nscopes = ["{SCOPE}"]\n{keys}\n'
    return parse_config(text, "config.toml", {}, identity_environ=environ or {}).profile(name)


def config_error(keys: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        profile(keys, environ)
    return caught.value.one_line()


# -- the config ---------------------------------------------------------------------------------------------------

def test_source_is_detected_from_the_environment_as_azure_identity_does() -> None:
    """If the environment has IDENTITY_ENDPOINT with IDENTITY_HEADER, then the source is app_service (with the header
    kept as a secret); with IMDS_ENDPOINT instead, arc; with neither (or an empty header), imds at 169.254.169.254,
    or at AZURE_POD_IDENTITY_AUTHORITY_HOST when set."""
    app = profile(environ={"IDENTITY_ENDPOINT": "http://127.0.0.1:8081/msi/token", "IDENTITY_HEADER": "h3ad3r"})
    assert app.managed_identity is not None
    assert (app.managed_identity.source, app.managed_identity.detected) == ("app_service", True)
    assert app.managed_identity.endpoint == "http://127.0.0.1:8081/msi/token"
    assert app.managed_identity.header is not None and app.managed_identity.header.reveal() == "h3ad3r"
    assert "h3ad3r" not in repr(app) and "h3ad3r" not in str(app.as_dict())
    arc = profile(environ={"IDENTITY_ENDPOINT": ARC_TOKEN_URL, "IMDS_ENDPOINT": "http://localhost:40342",
                           "IDENTITY_HEADER": ""})
    assert arc.managed_identity is not None and arc.managed_identity.source == "arc"
    assert arc.managed_identity.header is None
    imds = profile()
    assert imds.managed_identity is not None
    assert (imds.managed_identity.source, imds.managed_identity.endpoint) == ("imds", IMDS_TOKEN_URL)
    pod = profile(environ={"AZURE_POD_IDENTITY_AUTHORITY_HOST": "http://10.0.0.1:2579/"})
    assert pod.managed_identity is not None
    assert pod.managed_identity.endpoint == "http://10.0.0.1:2579/metadata/identity/oauth2/token"


def test_source_and_endpoint_in_the_profile_win_over_the_environment() -> None:
    """If the profile sets source and endpoint, then they are used whatever the environment says, and the profile
    needs no tenant and no client id (a user-assigned identity is named by one of client_id, object_id,
    msi_res_id)."""
    mi = profile('source = "imds"\nendpoint = "http://127.0.0.1:9/x"\nobject_id = "0000-1"',
                 {"IDENTITY_ENDPOINT": "http://e", "IDENTITY_HEADER": "h"}).managed_identity
    assert mi is not None
    assert (mi.source, mi.detected, mi.endpoint, mi.user_assigned) == ("imds", False, "http://127.0.0.1:9/x",
                                                                       ("object_id", "0000-1"))


@pytest.mark.parametrize(("keys", "said"), [
    ('client_id = "a"\nobject_id = "b"', "key 'object_id' and key 'client_id' exclude each other"),
    ('msi_res_id = "my-identity"', "key 'msi_res_id' must be an Azure resource id"),
    ('source = "cloud_shell"', "key 'source' must be one of imds, app_service, arc, not 'cloud_shell'"),
    ('endpoint = "169.254.169.254"', "key 'endpoint' must be an http:// or https:// URL"),
    ('arc_key_dir = "tokens"', "key 'arc_key_dir' must be an absolute path"),
])
def test_bad_managed_identity_settings_are_one_line(keys: str, said: str) -> None:
    """If a managed-identity profile names two identities, a resource id that is not one, an unknown source, an
    endpoint that is not a URL or a relative Arc directory, then reading the config fails with one line naming the
    key."""
    line = config_error(keys)
    assert said in line and "\n" not in line


def test_managed_identity_scopes_and_keys_are_checked() -> None:
    """If a managed-identity profile has two scopes or a scope that is not R/.default, or a client-secret profile
    uses a managed-identity key or lacks its tenant, then each is a one-line config error."""
    for scopes in ('["a/.default", "b/.default"]', '["User.Read"]'):
        text = f'[profiles.vm]\ncredential = "managed_identity"\nscopes = {scopes}\n'
        with pytest.raises(ConfigError, match=r"exactly one scope of the form <resource>/\.default"):
            parse_config(text, "c", {}, identity_environ={})
    secret = f'[profiles.app]\ntenant = "t.example"\nclient_id = "c"\nscopes = ["{SCOPE}"]\nsource = "imds"\n'
    with pytest.raises(ConfigError, match="key 'source' is a setting of credential 'managed_identity' only"):
        parse_config(secret, "c", {}, identity_environ={})
    with pytest.raises(ConfigError, match="key 'tenant' is missing"):
        parse_config(f'[profiles.app]\nclient_id = "c"\nscopes = ["{SCOPE}"]\n', "c", {}, identity_environ={})


def test_the_daemon_keeps_the_identity_variables_out_of_its_environment() -> None:
    """If the daemon starts with IDENTITY_ENDPOINT and IDENTITY_HEADER set, then its clean environment has neither
    (no child inherits the header), and managed-identity profiles still detect App Service from the start
    environment kept aside."""
    environ = {"HOME": "/root", "IDENTITY_ENDPOINT": "http://127.0.0.1:1/msi/token", "IDENTITY_HEADER": "s3cr3t"}
    before = process_setup._start_identity, process_setup._start_proxies
    cwd = os.getcwd()
    try:
        process_setup.clean_start_environment(environ)
        assert "IDENTITY_HEADER" not in environ and "IDENTITY_ENDPOINT" not in environ
        text = f'[profiles.web]\ncredential = "managed_identity"\nscopes = ["{SCOPE}"]\n'
        mi = parse_config(text, "c", environ).profile("web").managed_identity
        assert mi is not None and mi.source == "app_service" and mi.header is not None
    finally:
        process_setup._start_identity, process_setup._start_proxies = before
        os.chdir(cwd)


# -- the source against the simulated endpoints ----------------------------------------------------------------

def transport(endpoint: SimulatedManagedIdentity, *, refuse: Callable[[], bool] = lambda: False) -> httpx.MockTransport:
    """httpx's requests answered by the endpoint's own handler (``refuse()``: the connection is refused)."""
    def handle(request: httpx.Request) -> httpx.Response:
        if refuse():
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        headers = email.message.Message()
        for key, value in request.headers.multi_items():
            headers[key] = value
        reply = endpoint.handle(HttpRequest(request.method, request.url.path, request.url.query.decode(), headers,
                                            request.content))
        if reply is DROP:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        return httpx.Response(reply.status, headers=list(reply.headers), content=reply.body)
    return httpx.MockTransport(handle)


@pytest.fixture(name="authority")
def unstarted_authority() -> SimulatedAuthority:
    """The authority whose keys sign the tokens (its HTTP side is not needed here)."""
    authority = SimulatedAuthority(clock=wall)
    authority.add_tenant(TENANT)
    return authority


@pytest.fixture(name="key_dir")
def arc_key_dir(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.mkdir(mode=0o700)
    return path


def endpoint_for(authority: SimulatedAuthority, source: Source,
                 key_dir: Path | None = None) -> SimulatedManagedIdentity:
    return SimulatedManagedIdentity(authority, source=source, tenant=TENANT,
                                    key_dir=str(key_dir) if key_dir else None, clock=wall)


def source_for(endpoint: SimulatedManagedIdentity, keys: str = "",
               **options: Callable[[], bool]) -> ManagedIdentitySource:
    extra = f'source = "{endpoint.source}"\nendpoint = "{URL}{endpoint.endpoint.removeprefix(endpoint.url)}"\n'
    if endpoint.key_dir:
        extra += f'arc_key_dir = "{endpoint.key_dir}"\n'
    environ = {"IDENTITY_HEADER": endpoint.header} if endpoint.source == "app_service" else {}
    client = httpx.AsyncClient(transport=transport(endpoint, **options))
    return ManagedIdentitySource(profile(extra + keys, environ), client=client, clock=wall)


@asynccontextmanager
async def serving(endpoint: SimulatedManagedIdentity) -> AsyncIterator[SimulatedManagedIdentity]:
    """The endpoint's server running (its ``url`` names the port the paths are built from)."""
    endpoint.start()
    try:
        yield endpoint
    finally:
        endpoint.stop()


async def test_each_source_speaks_its_protocol(authority: SimulatedAuthority, key_dir: Path,
                                               autojump_clock: trio.testing.MockClock) -> None:
    """If each source is asked for Graph with a user-assigned identity, then each gets that identity's token for
    Graph (IMDS with Metadata and msi_res_id; App Service with its header, mi_res_id and a string expires_on; Arc
    after the 401 challenge), living a day and refreshed at half of it (msal's rule for managed identities)."""
    for source in ("imds", "app_service", "arc"):
        async with serving(endpoint_for(authority, source, key_dir if source == "arc" else None)) as endpoint:
            user = endpoint.add_user_assigned("u")
            mi = source_for(endpoint, f'msi_res_id = "{user.resource_id}"')
            reply = await mi.acquire((SCOPE,))
            token = reply.token
            claims = authority.validate(token.access_token.reveal(), audience=GRAPH)
            assert claims["appid"] == user.client_id, source
            assert token.expires_on - wall() == pytest.approx(86400, abs=2)
            assert token.refresh_on is not None and token.refresh_on - wall() == pytest.approx(43200, abs=2)
            wanted = "mi_res_id" if source == "app_service" else "msi_res_id"
            assert endpoint.requests[-1].identity == (wanted, user.resource_id)


async def test_expires_on_wins_and_must_be_whole_epoch_seconds(authority: SimulatedAuthority,
                                                              autojump_clock: trio.testing.MockClock) -> None:
    """If a reply's expires_on is an integer, then it sets the expiry (over expires_in); if it is "123.5", a date or
    in the past, then the reply is malformed, said in one line."""
    async with serving(endpoint_for(authority, "imds")) as endpoint:
        mi = source_for(endpoint)
        endpoint.inject(Fault.reply_fields(endpoint=ENDPOINT, expires_on=int(wall()) + 1000, expires_in="86400"))
        assert (await mi.acquire((SCOPE,))).token.expires_on == pytest.approx(wall() + 1000, abs=1)
        for bad, said in (("123.5", "bad expires_on '123.5'"), ("Tue, 01 Dec 2026", "bad expires_on 'Tue"),
                          (str(int(wall()) - 5), "is not in the future")):
            endpoint.inject(Fault.reply_fields(endpoint=ENDPOINT, expires_on=bad))
            with pytest.raises(AuthorityUnavailable, match="malformed token reply") as caught:
                await mi.acquire((SCOPE,))
            assert said in caught.value.one_line()


async def test_refusals_and_what_is_retried(authority: SimulatedAuthority, key_dir: Path,
                                            autojump_clock: trio.testing.MockClock) -> None:
    """If IMDS does not know the identity (400), then that is "unavailable" and retried with backoff (an identity
    assigned later is picked up); if IMDS is being updated (410) or throttles (429 + Retry-After), retried and the
    Retry-After kept; if an old Arc agent answers for the system identity instead of the one asked, refused."""
    async with serving(endpoint_for(authority, "imds")) as imds:
        with pytest.raises(AuthorityUnavailable, match="IMDS has no such managed identity") as caught:
            await source_for(imds, 'client_id = "not-assigned"').acquire((SCOPE,))
        assert "az vm identity assign" in caught.value.one_line()
        imds.inject(Fault.status(410, {"error": "unavailable", "error_description": "IMDS is updating"},
                                 endpoint=ENDPOINT))
        with pytest.raises(AuthorityUnavailable, match="failed with HTTP 410"):
            await source_for(imds).acquire((SCOPE,))
        imds.inject(Fault.throttle(90, endpoint=ENDPOINT))
        with pytest.raises(AuthorityUnavailable, match=r"throttled the request \(HTTP 429, retry after 90 s\)") as t:
            await source_for(imds).acquire((SCOPE,))
        assert t.value.retry_after == 90
    async with serving(endpoint_for(authority, "arc", key_dir)) as arc:
        user = arc.add_user_assigned("u")
        arc.echo_identity = False
        with pytest.raises(AuthenticationFailed, match="did not confirm the user-assigned identity"):
            await source_for(arc, f'client_id = "{user.client_id}"').acquire((SCOPE,))


async def test_bad_scopes_and_missing_header_are_config_errors(authority: SimulatedAuthority,
                                                               autojump_clock: trio.testing.MockClock) -> None:
    """If a request asks two scopes or a scope that is not R/.default, or the App Service source has no header,
    then the source raises a ConfigError saying so, without calling the endpoint."""
    async with serving(endpoint_for(authority, "app_service")) as app:
        mi = source_for(app)
        with pytest.raises(ConfigError, match="one resource at a time, but 2 scopes"):
            await mi.acquire((SCOPE, "https://vault.azure.net/.default"))
        with pytest.raises(ConfigError, match=r"scope of the form <resource>/\.default, not 'User\.Read'"):
            await mi.acquire(("User.Read",))
        headerless = ManagedIdentitySource(profile(f'source = "app_service"\nendpoint = "{URL}/msi/token"'),
                                           client=httpx.AsyncClient(transport=transport(app)), clock=wall)
        with pytest.raises(ConfigError, match="needs IDENTITY_HEADER"):
            await headerless.acquire((SCOPE,))
        assert app.count() == 0


async def test_arc_key_files_are_read_only_when_safe(authority: SimulatedAuthority, key_dir: Path,
                                                     autojump_clock: trio.testing.MockClock) -> None:
    """If the Arc challenge names a file that is a symlink, bigger than 4096 bytes, or not a .key file, then it is
    not sent (one line each) and no request carries credentials."""
    async with serving(endpoint_for(authority, "arc", key_dir)) as arc:
        mi = source_for(arc)
        (key_dir / "big.key").write_text("k" * 5000)
        (key_dir / "link.key").symlink_to(key_dir / "big.key")
        (key_dir / "plain.txt").write_text("secret")
        for name, said in (("big.key", "not a regular file of at most 4096 bytes"),
                           ("link.key", "cannot read the Azure Arc key file"),
                           ("plain.txt", "not a .key file")):
            arc.challenge_realm = str(key_dir / name)
            with pytest.raises(AadhelperError) as caught:
                await mi.acquire((SCOPE,))
            assert said in caught.value.one_line(), name
        assert not any(r.authorized for r in arc.requests)


# -- traffic over simulated hours --------------------------------------------------------------------------------

async def ask_every(cache: TokenCache, vm: Profile, interval: float, duration: float) -> list[AadhelperError]:
    """A client asking every ``interval`` seconds for ``duration`` seconds; the errors it got."""
    errors: list[AadhelperError] = []
    end = trio.current_time() + duration
    while trio.current_time() < end:
        try:
            await cache.get(vm)
        except AadhelperError as exc:
            errors.append(exc)
        await trio.sleep(interval)
    return errors


def cache_for(source: ManagedIdentitySource) -> TokenCache:
    return TokenCache(lambda profile: source, clock=wall, rng=random.Random(7))


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


@pytest.mark.parametrize("failure", ["http-500", "connection-refused"])
async def test_failing_imds_sees_requests_only_at_backoff_spacing(authority: SimulatedAuthority, failure: str,
                                                                  autojump_clock: trio.testing.MockClock) -> None:
    """If IMDS answers 500 (or refuses connections) for six simulated hours while a client asks every second, then
    it sees at most one request per backoff step (1 s doubling to 5 min, each at least half its nominal length)
    and never two within half a step once the backoff is at its cap; and when IMDS recovers, a token follows within
    the cap."""
    broken = True
    times: list[float] = []

    def refused() -> bool:
        if failure == "connection-refused" and broken:
            times.append(wall())
            return True
        return False

    async with serving(endpoint_for(authority, "imds")) as imds:
        mi = source_for(imds, refuse=refused)
        if failure == "http-500":
            imds.inject(Fault.status(500, endpoint=ENDPOINT), times=1_000_000)
        vm = profile(f'source = "imds"\nendpoint = "{URL}/metadata/identity/oauth2/token"')
        async with cache_for(mi) as cache:
            errors = await ask_every(cache, vm, 1.0, 6 * HOUR)
            if failure == "http-500":
                times = [r.time for r in imds.requests]
            assert len(times) <= 30 + 6 * HOUR / (cache_module.BACKOFF_MAX / 2)
            assert min(gaps(times)[-20:]) >= cache_module.BACKOFF_MAX / 2
            assert max(gaps(times)) <= cache_module.BACKOFF_MAX + 1
            said = "no managed identity here" if failure == "connection-refused" else "failed with HTTP 500"
            assert all(said in e.one_line() for e in errors)
            broken = False
            imds.clear_faults()
            with trio.fail_after(cache_module.BACKOFF_MAX + 1):
                while True:
                    try:
                        await cache.get(vm)
                        break
                    except AuthorityUnavailable:
                        await trio.sleep(1)


async def test_throttling_imds_is_asked_only_after_retry_after(authority: SimulatedAuthority,
                                                                autojump_clock: trio.testing.MockClock) -> None:
    """If IMDS answers every request for three simulated hours with 429 and Retry-After: 120, then no two of its
    requests are less than 120 s apart (while clients ask every half second)."""
    async with serving(endpoint_for(authority, "imds")) as imds:
        imds.inject(Fault.throttle(120, endpoint=ENDPOINT), times=1_000_000)
        vm = profile(f'source = "imds"\nendpoint = "{URL}/metadata/identity/oauth2/token"')
        async with cache_for(source_for(imds)) as cache:
            errors = await ask_every(cache, vm, 0.5, 3 * HOUR)
        times = [r.time for r in imds.requests]
        assert min(gaps(times)) >= 120
        assert len(times) <= 3 * HOUR / 120 + 1
        assert errors and all("HTTP 429" in e.one_line() for e in errors)



@pytest.mark.parametrize(("args", "said"), [
    (["--credential", "managed_identity", "--tenant", "t.example"], "a managed identity takes no --tenant"),
    (["--tenant", "t.example", "--client-id", "c", "--object-id", "o"],
     "--object-id is an option of --credential managed_identity only"),
    (["--client-id", "c"], "--tenant is required for --credential client_secret"),
    (["--credential", "managed_identity", "--source", "vm"], "invalid choice: 'vm'"),
])
def test_profile_add_refuses_options_of_the_wrong_kind(isolated_env: dict[str, str], args: list[str],
                                                       said: str) -> None:
    """If `profile add` gets a tenant for a managed identity, a managed-identity option for another kind, no tenant
    for a client secret or an unknown source, then it exits 2 with one line and writes no config."""
    env = cli_env(isolated_env)
    result = run(env, "profile", "add", "p", "--scope", SCOPE, *args)
    assert result.returncode == 2
    assert said in result.stderr.strip().splitlines()[-1]
    assert not Path(env["AADHELPER_CONFIG"]).exists()


@pytest.mark.parametrize("verb", [["secret", "set"], ["login"]])
def test_secret_set_and_login_explain_a_managed_identity(isolated_env: dict[str, str], verb: list[str]) -> None:
    """If `secret set` or `login` is run for a managed-identity profile, then it exits 3 with one line saying the
    profile uses the machine's identity and needs neither (no traceback)."""
    env = cli_env(isolated_env)
    run(env, "profile", "add", "vm", "--credential", "managed_identity", "--scope", SCOPE)
    result = run(env, *verb, "vm", stdin="not-a-secret\n")
    assert result.returncode == 3
    assert "Traceback" not in result.stderr
    assert "uses the machine's managed identity: no secret and no sign-in" in result.stderr.strip().splitlines()[-1]
