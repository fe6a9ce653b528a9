"""End to end with real parts: the daemon as a subprocess on a real socket, the simulated authority over real HTTPS
(trustme CA), client secrets in the real Secret Service, and the CLI as the user runs it."""

from __future__ import annotations

import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from aadhelper import client
from aadhelper.secret_store import KeyringSecretStore
from aadhelper.testing.authority import SimulatedAuthority
from aadhelper.testing.faults import Fault
from aadhelper.testing.resource import ProtectedResource
from tests.harness import (  # noqa: F401 -- two_app_*, two_profile_env: fixtures
    APP,
    BIN,
    GRAPH_SCOPE,
    OTHER_APP,
    TENANT,
    DaemonProcess,
    add_profile,
    cli,
    sensitive,
    token_of,
    two_app_authority,
    two_app_secrets,
    two_profile_env,
    wait_until,
)

pytestmark = pytest.mark.requires("secret-service")


def test_header_works_end_to_end_and_curl_accepts_it(env: dict[str, str], authority: SimulatedAuthority,
                                                      server_ssl_context: ssl.SSLContext, ca_pem_file: Path,
                                                      require: Callable[[str], None]) -> None:
    """If a profile's secret is in the keyring and the daemon runs, then `aadhelper header` prints a Bearer header
    that a loopback API validating against the authority accepts, via curl too, from one authority request."""
    import keyring
    from keyring.backends import SecretService

    assert type(keyring.get_keyring()) is SecretService.Keyring
    with DaemonProcess(env), ProtectedResource(authority, ssl_context=server_ssl_context) as api:
        result = cli(env, "header", "graph", check=True)
        header = result.stdout.strip()
        assert header.startswith("Authorization: Bearer ")
        sensitive(header.split()[-1])
        claims = authority.validate(header)
        assert claims["appid"] == APP or claims.get("azp") == APP
        as_json = json.loads(cli(env, "token", "graph", "--json", check=True).stdout)
        assert as_json["access_token"] == header.split()[-1]
        assert as_json["token_type"] == "Bearer" and as_json["profile"] == "graph"
        assert as_json["scopes"] == [GRAPH_SCOPE] and as_json["expires_on"] > 0
        require("curl")
        curl = subprocess.run(["curl", "-sS", "--fail", "--cacert", str(ca_pem_file), "-H", header, api.url + "/me"],
                              capture_output=True, text=True, timeout=30)
        assert curl.returncode == 0, curl.stderr
        assert json.loads(curl.stdout)["aud"] == "https://graph.microsoft.com"
        assert authority.count(grant_type="client_credentials") == 1


def test_default_profile_and_python_module_entry(env: dict[str, str]) -> None:
    """If no profile is named, then the default (first added) profile answers; `python -m aadhelper` works too."""
    with DaemonProcess(env):
        plain = token_of(env)
        named = token_of(env, "graph")
        assert plain == named
        module = subprocess.run([sys.executable, "-m", "aadhelper", "token", "graph"], env=env, capture_output=True,
                                text=True, timeout=30)
        assert module.stdout.strip() == named


def test_hundred_concurrent_cold_requests_cause_one_authority_request(env: dict[str, str],
                                                                      authority: SimulatedAuthority) -> None:
    """If 100 clients ask at once for a profile with no cached token, then the authority sees exactly one request
    and every client gets the same token."""
    authority.inject(Fault.delay(0.5))  # hold the first reply so all 100 requests overlap it
    with DaemonProcess(env) as daemon:
        tokens: list[str] = []
        errors: list[BaseException] = []

        def one() -> None:
            try:
                tokens.append(client.get_token("graph", socket_path=daemon.socket_path)["access_token"])
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=one) for _ in range(100)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        sensitive(*tokens)
        assert not errors
        assert len(tokens) == 100 and len(set(tokens)) == 1
        assert authority.count(grant_type="client_credentials") == 1


def wrong_secret(env: dict[str, str], authority: SimulatedAuthority) -> None:
    cli(env, "secret", "set", "graph", input="definitely-wrong\n", check=True)


def unknown_tenant(env: dict[str, str], authority: SimulatedAuthority) -> None:
    cli(env, "profile", "add", "graph", "--replace", "--tenant", "nowhere.example.com", "--client-id", APP,
        "--scope", GRAPH_SCOPE, "--authority", authority.url, "--ca-bundle", env["CA_FILE"], check=True)


def authority_down(env: dict[str, str], authority: SimulatedAuthority) -> None:
    cli(env, "profile", "add", "graph", "--replace", "--tenant", TENANT, "--client-id", APP, "--scope", GRAPH_SCOPE,
        "--authority", "https://127.0.0.1:9", "--ca-bundle", env["CA_FILE"], check=True)


def throttled(env: dict[str, str], authority: SimulatedAuthority) -> None:
    authority.inject(Fault.throttle(60))


def malformed(env: dict[str, str], authority: SimulatedAuthority) -> None:
    authority.inject(Fault.malformed(), times=3)


@pytest.mark.parametrize("breakage, exit_code, expected", [
    (wrong_secret, 5, ["AADSTS7000215", "aadhelper secret set graph"]),
    (unknown_tenant, 5, ["AADSTS90002"]),
    (authority_down, 7, ["cannot reach the authority"]),
    (throttled, 7, ["429"]),
    (malformed, 7, ["malformed"]),
])
def test_failures_are_specific_and_daemon_keeps_serving_others(
        env: dict[str, str], authority: SimulatedAuthority, ca_pem_file: Path,
        breakage: Callable[[dict[str, str], SimulatedAuthority], None], exit_code: int,
        expected: list[str]) -> None:
    """If one profile's credentials, tenant or authority fail, then `aadhelper header` for it prints one line with
    the specific error and exits with its class's code, and the daemon keeps serving the other profile."""
    env["CA_FILE"] = str(ca_pem_file)
    with DaemonProcess(env) as daemon:
        breakage(env, authority)
        result = cli(env, "header", "graph")
        assert result.returncode == exit_code, result.stderr
        assert result.stdout == ""
        assert len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr
        for text in expected:
            assert text in result.stderr
        assert cli(env, "header", "other", check=True).stdout.startswith("Authorization: Bearer ")
        assert daemon.alive()


def test_throttling_is_honoured_without_new_authority_requests(env: dict[str, str],
                                                               authority: SimulatedAuthority) -> None:
    """If the authority answers 429 with Retry-After 60, then further requests inside that time fail fast with a
    'next attempt' note and no new authority request."""
    authority.inject(Fault.throttle(60))
    with DaemonProcess(env):
        assert cli(env, "header", "graph").returncode == 7
        second = cli(env, "header", "graph")
        assert second.returncode == 7 and "next attempt in" in second.stderr
        assert authority.count(grant_type="client_credentials") == 1


def test_a_short_retry_after_is_waited_out_exactly(env: dict[str, str], authority: SimulatedAuthority) -> None:
    """If the authority answers 429 with Retry-After 3, then the waiting request gets its header, and the authority
    sees the retry no sooner than 3 s after the 429 (measured at the authority: a daemon that ignored Retry-After
    would come back after its 1 s backoff)."""
    authority.inject(Fault.throttle(3))
    with DaemonProcess(env):
        assert cli(env, "header", "graph", check=True).stdout.startswith("Authorization: Bearer ")
    times = [r.time for r in authority.requests if r.grant_type == "client_credentials"]
    assert len(times) == 2 and times[1] - times[0] >= 3.0


def test_transient_server_error_is_retried_within_the_request(env: dict[str, str],
                                                              authority: SimulatedAuthority) -> None:
    """If the authority answers 503 once, then the daemon retries and the client still gets a header."""
    authority.inject(Fault.status(503))
    with DaemonProcess(env):
        assert cli(env, "header", "graph", check=True).stdout.startswith("Authorization: Bearer ")
        assert authority.count(grant_type="client_credentials") == 2


def test_status_shows_last_error_and_exits_non_zero(env: dict[str, str], authority: SimulatedAuthority) -> None:
    """If a profile failed with a wrong secret, then `aadhelper status` names the profile, the AADSTS code and the
    fix, and exits with the error's code; `--json` carries the same."""
    with DaemonProcess(env) as daemon:
        cli(env, "header", "other", check=True)
        wrong_secret(env, authority)
        cli(env, "header", "graph")
        status = cli(env, "status")
        assert status.returncode == 5
        assert f"pid {daemon.pid}" in status.stdout
        assert "AADSTS7000215" in status.stdout and "graph" in status.stdout
        assert "valid until" in status.stdout  # the healthy profile
        as_json = json.loads(cli(env, "status", "--json").stdout)
        by_name = {p["name"]: p for p in as_json["profiles"]}
        assert by_name["graph"]["tokens"][0]["last_error"]["aadsts"] == 7000215
        assert by_name["other"]["tokens"][0]["state"] == "valid"


def test_keyring_without_backend_is_a_clear_error(env: dict[str, str]) -> None:
    """If the daemon finds no keyring backend, then a request says so (exit 4) and the daemon stays up."""
    env = dict(env, PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring")
    with DaemonProcess(env) as daemon:
        result = cli(env, "header", "graph")
        assert result.returncode == 4, result.stderr
        assert "keyring" in result.stderr.lower()
        assert client.ping(socket_path=daemon.socket_path)["ok"] is True


def test_locked_keyring_is_a_clear_error(env: dict[str, str], locked_keyring: None) -> None:
    """If the keyring collection is locked, then a request says it is locked (exit 4) and the daemon stays up."""
    with DaemonProcess(env) as daemon:
        result = cli(env, "header", "graph")
        assert result.returncode == 4, result.stderr
        assert "locked" in result.stderr.lower()
        assert client.ping(socket_path=daemon.socket_path)["ok"] is True


def test_no_daemon_says_how_to_start_one(env: dict[str, str]) -> None:
    """If no daemon runs and autostart is off, then `aadhelper header` exits 8 naming the command to start one."""
    result = cli(env, "header", "graph")
    assert result.returncode == 8
    assert "aadhelper daemon" in result.stderr


def test_sigterm_shuts_down_cleanly(env: dict[str, str]) -> None:
    """If the daemon gets SIGTERM, then it exits 0 and removes its socket."""
    daemon = DaemonProcess(env).start()
    assert daemon.stop() == 0
    assert not os.path.exists(daemon.socket_path)


def test_secret_set_takes_effect_without_restart(env: dict[str, str], authority: SimulatedAuthority,
                                                 app_secrets: dict[str, str]) -> None:
    """If the secret was wrong and the user stores the right one, then the next request works without restarting
    the daemon."""
    with DaemonProcess(env):
        wrong_secret(env, authority)
        assert cli(env, "header", "graph").returncode == 5
        cli(env, "secret", "set", "graph", input=app_secrets[APP] + "\n", check=True)
        assert cli(env, "header", "graph", check=True).stdout.startswith("Authorization: Bearer ")


def test_autostart_starts_one_daemon_for_racing_clients(env: dict[str, str]) -> None:
    """If no daemon runs and two clients ask at once, then both get a header and exactly one daemon is left."""
    env = {k: v for k, v in env.items() if k != "AADHELPER_NO_AUTOSTART"}
    procs = [subprocess.Popen([str(BIN / "aadhelper"), "header", "graph"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    pid = client.ping(socket_path=env["AADHELPER_SOCKET"])["pid"]
    try:
        for proc, (out, err) in zip(procs, outputs, strict=True):
            assert proc.returncode == 0, err
            assert out.startswith("Authorization: Bearer ")
            sensitive(out.split()[-1])
        log = Path(env["AADHELPER_STATE_DIR"], "daemon.log").read_text()
        assert log.count("listening on") == 1
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not os.path.exists(env["AADHELPER_SOCKET"]))


def test_thin_client_does_not_import_heavy_modules(env: dict[str, str]) -> None:
    """If `aadhelper header` and the git helper entry run for real, then trio, httpx, keyring, argparse and
    platformdirs are never imported."""
    probe = ("import sys\n"
             "from aadhelper.cli import main\n"
             "code = main(['header', 'graph'])\n"
             "import aadhelper.cli.git\n"
             "heavy = {'trio', 'httpx', 'keyring', 'argparse', 'platformdirs'} & set(sys.modules)\n"
             "print('HEAVY', sorted(heavy), code, file=sys.stderr)\n")
    with DaemonProcess(env):
        result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=30)
    sensitive(result.stdout.split()[-1])
    assert "HEAVY [] 0" in result.stderr, result.stderr


def test_ssl_cert_file_is_honoured_without_ca_bundle(env: dict[str, str], authority: SimulatedAuthority,
                                                     ca_pem_file: Path) -> None:
    """If a profile names no CA bundle but SSL_CERT_FILE points at the authority's CA, then TLS verifies with it;
    without either, it is a configuration error (exit 3, not a retried "unavailable") that says the certificate does
    not verify and how to fix it."""
    cli(env, "profile", "add", "plain", "--tenant", TENANT, "--client-id", APP, "--scope", GRAPH_SCOPE,
        "--authority", authority.url, check=True)
    cli(env, "secret", "set", "plain", input=authority_secret(env, "graph") + "\n", check=True)
    with DaemonProcess(dict(env, SSL_CERT_FILE=str(ca_pem_file))):
        assert cli(env, "header", "plain", check=True).stdout.startswith("Authorization: Bearer ")
    untrusted = {k: v for k, v in env.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    with DaemonProcess(untrusted):
        result = cli(untrusted, "header", "plain")
        assert result.returncode == 3
        assert "certificate of the authority" in result.stderr and "does not verify" in result.stderr
        assert "ca_bundle" in result.stderr


def authority_secret(env: dict[str, str], profile: str) -> str:
    """The secret stored for a profile, read back from the real keyring (to reuse it for another profile)."""
    value = KeyringSecretStore().get(profile, "client_secret")
    assert value is not None
    return value.reveal()


def test_scope_and_min_valid_options(env: dict[str, str], authority: SimulatedAuthority, ca_pem_file: Path) -> None:
    """If a client asks for another resource or more validity, then it gets a token for that audience, a separate
    cache entry, and a clear error when the authority's lifetime cannot satisfy the minimum validity."""
    arm_app, arm_secret = "11111111-0000-0000-0000-000000000003", "arm-secret-" + secrets.token_urlsafe(12)
    sensitive(arm_secret)
    authority.add_client(arm_app, tenant=TENANT, secret=arm_secret,
                         resources=("https://graph.microsoft.com", "https://management.azure.com"))
    add_profile(env, "arm", authority.url, ca_pem_file, client_id=arm_app)
    cli(env, "secret", "set", "arm", input=arm_secret + "\n", check=True)
    with DaemonProcess(env):
        arm = token_of(env, "arm", "--scope", "https://management.azure.com/.default")
        graph = token_of(env, "arm")
        assert arm != graph
        assert authority.validate(arm, audience="https://management.azure.com")
        assert authority.validate(graph, audience="https://graph.microsoft.com")
        assert token_of(env, "arm", "--min-valid", "600") == graph
        too_long = cli(env, "token", "arm", "--min-valid", "7200")
        assert too_long.returncode == 3 and "valid for 3600 s" in too_long.stderr
        bad = cli(env, "token", "arm", "--min-valid", "soon")
        assert bad.returncode == 2 and "--min-valid" in bad.stderr
        over = cli(env, "token", "arm", "--min-valid", "99999")
        assert over.returncode == 2 and "--min-valid" in over.stderr


def test_adding_a_profile_keeps_other_profiles_tokens(env: dict[str, str], authority: SimulatedAuthority,
                                                      ca_pem_file: Path) -> None:
    """If the user adds a profile while the daemon runs, then the other profiles' cached tokens are kept (no new
    authority request), while editing a profile drops only that profile's tokens."""
    with DaemonProcess(env):
        first = token_of(env, "graph")
        token_of(env, "other")
        add_profile(env, "third", authority.url, ca_pem_file)
        assert token_of(env, "graph") == first
        assert authority.count(grant_type="client_credentials") == 2
        cli(env, "profile", "add", "other", "--replace", "--tenant", TENANT, "--client-id", OTHER_APP, "--scope",
            GRAPH_SCOPE, "--authority", authority.url, "--ca-bundle", str(ca_pem_file), "--min-valid", "60",
            check=True)
        token_of(env, "other")
        assert token_of(env, "graph") == first
        assert authority.count(grant_type="client_credentials") == 3


def _status_tokens(env: dict[str, str], profile: str) -> list[dict[str, object]]:
    result = cli(env, "status", "--json")
    reply = json.loads(result.stdout)
    return next(p["tokens"] for p in reply["profiles"] if p["name"] == profile)


def test_tokens_as_short_as_min_valid_do_not_start_a_refresh_storm(env: dict[str, str],
                                                                   authority: SimulatedAuthority) -> None:
    """If the authority issues 300 s tokens (the profile's min_valid) and one client once asked --min-valid 10, then
    twenty more requests over a few seconds cost no authority request beyond the first, and status says the tokens
    are short (issue 9: 590 token requests in 12 s)."""
    authority.token_lifetime = 300
    with DaemonProcess(env):
        token_of(env, "graph", "--min-valid", "10")
        for _ in range(20):
            token_of(env, "graph")
        record = _status_tokens(env, "graph")[0]
        assert authority.count(endpoint="token") == 1
    assert record["short_tokens"] is True and record["min_valid"] == 30
    assert record["requests_last_hour"] == 1


def test_refused_min_valid_does_not_change_the_schedule(env: dict[str, str], authority: SimulatedAuthority) -> None:
    """If a client asks --min-valid 600 of 600 s tokens, then it gets exit 3 with one line saying the tokens are too
    short, and later default requests cost no authority request (issue 9: 475 requests in 10 s after it)."""
    authority.token_lifetime = 600
    with DaemonProcess(env):
        token_of(env, "graph")
        refused = cli(env, "token", "graph", "--min-valid", "600")
        assert refused.returncode == 3 and "too short to keep the requested minimum validity" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        for _ in range(10):
            token_of(env, "graph")
        assert authority.count(endpoint="token") == 1
        assert _status_tokens(env, "graph")[0]["min_valid"] == 300


@pytest.mark.parametrize("expires_in", [float("nan"), Fault.raw("1e999"), "inf", 10**18])
def test_absurd_lifetimes_neither_crash_nor_loop(env: dict[str, str], authority: SimulatedAuthority,
                                                 expires_in: object) -> None:
    """If the authority answers with expires_in NaN, 1e999, "inf" or 10^18, then the daemon stays up, the client
    gets one line (exit 7 for the unusable ones), and the authority sees a handful of requests, not a loop
    (issue 9: the daemon died on 1e999; ~75 requests/s on NaN)."""
    with DaemonProcess(env) as daemon:
        other = token_of(env, "other")
        authority.inject(Fault.reply_fields(expires_in=expires_in), times=1000)
        results = [cli(env, "token", "graph") for _ in range(5)]
        assert daemon.alive()
        assert token_of(env, "other") == other  # the other profile's cached token is served meanwhile
        count = authority.count(endpoint="token")
    for result in results:
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 1
    if expires_in == 10**18:
        assert all(result.returncode == 0 for result in results)  # clamped to a day, served
    else:
        assert all(result.returncode == 7 for result in results)
        assert "bad expires_in" in results[0].stderr
    assert count <= 2 + 5  # other's one request; graph: one per backoff step, a few steps in a few seconds
