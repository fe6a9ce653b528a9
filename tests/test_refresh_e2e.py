"""Refresh-token rotation end to end: the real daemon process refreshing a user profile's sign-in from the real
Secret Service against the simulated authority over HTTPS, which revokes the whole grant on any replayed refresh
token. Includes SIGKILL of the daemon, and of its token fetcher process, in the middle of a refresh."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import ssl
import subprocess
import threading

import pytest

from aadhelper import client
from aadhelper.secret_store import KeyringSecretStore
from aadhelper.testing import Fault, RecordedRequest, SimulatedAuthority
from aadhelper.testing.keyring_control import lock_keyring, unlock_keyring

# The user-profile world of the login tests (fixtures `authority`, `env`): the authority with the public client and
# the user, and profile `me`.
from tests.harness import (  # noqa: F401 -- user_app_authority, user_profile_env: fixtures
    AADHELPER,
    BIN,
    RESOURCES,
    USER,
    DaemonProcess,
    cli,
    exited,
    header,
    seed,
    sensitive,
    stored,
    user_app_authority,
    user_profile_env,
    wait_for_log,
    wait_until,
)

SCOPES = [f"{resource}/.default" for resource in RESOURCES]

pytestmark = pytest.mark.requires("secret-service")


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def refreshes(authority: SimulatedAuthority) -> list[RecordedRequest]:
    return [r for r in authority.requests if r.grant_type == "refresh_token"]


def test_each_refresh_presents_a_new_token_and_the_keyring_follows(
        env: dict[str, str], authority: SimulatedAuthority, client_ssl_context: ssl.SSLContext,
        secret_service: KeyringSecretStore) -> None:
    """If the daemon refreshes five times (five resources, then again after an invalidate), then the authority saw
    six different refresh tokens, none replayed, starting with the one from the login; the keyring ends with a
    token never presented yet."""
    first = seed(authority, client_ssl_context, secret_service)
    with DaemonProcess(env) as daemon:
        for scope in SCOPES:
            assert authority.validate(header(env, "--scope", scope))["aud"] == scope.removesuffix("/.default")
        assert client.invalidate("me", socket_path=daemon.socket_path) == 5
        header(env)
    records = refreshes(authority)
    digests = [r.digests["refresh_token"] for r in records]
    assert [r.status for r in records] == [200] * 6
    assert len(set(digests)) == 6 and digests[0] == sha(first)
    last = stored(secret_service)
    assert last is not None and sha(last) not in digests


def test_fifty_concurrent_requests_for_five_scopes_cause_no_replay(
        env: dict[str, str], authority: SimulatedAuthority, client_ssl_context: ssl.SSLContext,
        secret_service: KeyringSecretStore) -> None:
    """If 50 clients ask at once for 5 different resources of one signed-in profile while every refresh is slow,
    then every client gets a token, the daemon made 5 refreshes one after another, and none replayed a token."""
    first = seed(authority, client_ssl_context, secret_service)
    authority.inject(Fault.delay(0.2, grant_type="refresh_token"), times=5)
    tokens: dict[str, set[str]] = {scope: set() for scope in SCOPES}
    errors: list[BaseException] = []
    with DaemonProcess(env) as daemon:
        def one(scope: str) -> None:
            try:
                reply = client.get_token("me", scopes=[scope], socket_path=daemon.socket_path)
                tokens[scope].add(reply["access_token"])
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(SCOPES[i % 5],)) for i in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    for values in tokens.values():
        sensitive(*values)
    assert not errors, errors
    assert all(len(values) == 1 for values in tokens.values())
    records = refreshes(authority)
    assert [r.status for r in records] == [200] * 5
    assert len({r.digests["refresh_token"] for r in records}) == 5
    assert records[0].digests["refresh_token"] == sha(first)


def hold_a_refresh(authority: SimulatedAuthority,
                   env: dict[str, str]) -> tuple[threading.Event, subprocess.Popen[str]]:
    """A header request whose refresh the authority has rotated but not yet answered; set the event to answer. The
    request's stderr is a pipe: read it with ``communicate``."""
    release, reached = threading.Event(), threading.Event()
    authority.inject(Fault.hold_reply(release, grant_type="refresh_token", reached=reached))
    waiting = subprocess.Popen([AADHELPER, "header", "me"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    assert reached.wait(20), "the refresh never reached the authority"
    return release, waiting


def test_sigkill_of_the_daemon_during_a_refresh_loses_no_rotation(
        env: dict[str, str], authority: SimulatedAuthority, client_ssl_context: ssl.SSLContext,
        secret_service: KeyringSecretStore) -> None:
    """If the daemon is killed with SIGKILL after the authority rotated the refresh token but before the reply
    arrived, then its token fetcher process still receives the reply, stores the new token and exits; a restarted
    daemon refreshes with that token, even at an authority that revokes on any replay (no grace window)."""
    authority.refresh_token_reuse_grace = 0.0
    first = seed(authority, client_ssl_context, secret_service)
    daemon = DaemonProcess(env).start()
    fetcher = daemon.fetcher_pid()
    assert fetcher is not None
    release, waiting = hold_a_refresh(authority, env)
    try:
        daemon.kill()
    finally:
        release.set()
        waiting.communicate(timeout=30)
    assert waiting.returncode != 0
    wait_until(lambda: exited(fetcher), timeout=20)
    assert stored(secret_service) != first

    with DaemonProcess(env):
        assert authority.validate(header(env))["aud"] == "https://graph.microsoft.com"
    records = refreshes(authority)
    assert [r.status for r in records] == [200, 200]
    assert len({r.digests["refresh_token"] for r in records}) == 2


@pytest.mark.parametrize("grace", [60.0, 0.0])
def test_sigkill_of_the_fetcher_during_a_refresh(env: dict[str, str], authority: SimulatedAuthority,
                                                 client_ssl_context: ssl.SSLContext, secret_service: KeyringSecretStore,
                                                 grace: float) -> None:
    """If the token fetcher process is killed with SIGKILL after the authority rotated the refresh token but before
    the reply reached it, then the keyring still holds the token it presented and the waiting request fails; the
    daemon starts a new fetcher for the next request. With the authority's reuse grace window (as Okta and Auth0
    offer; Entra never revokes), that request works and later refreshes use the newly stored token. With strict
    revocation and no grace nothing client-side can save the grant: the daemon says so in one line naming
    `aadhelper login me` (exit 6)."""
    authority.refresh_token_reuse_grace = grace
    first = seed(authority, client_ssl_context, secret_service)
    with DaemonProcess(env) as daemon:
        fetcher = daemon.fetcher_pid()
        assert fetcher is not None
        release, waiting = hold_a_refresh(authority, env)
        try:
            os.kill(fetcher, signal.SIGKILL)
        finally:
            release.set()
            _, stderr = waiting.communicate(timeout=30)
        assert waiting.returncode == 1
        (line,) = stderr.strip().splitlines()
        assert "the token fetcher process stopped during the request" in line and "see the daemon's log" in line
        assert "profile 'me'" in line
        assert stored(secret_service) == first  # the fetcher died before it could store the rotated token
        # No pause: the next request waits for the fetcher's restart if it comes too soon for one.

        if grace:
            assert authority.validate(header(env))["aud"] == "https://graph.microsoft.com"
            client.invalidate("me", socket_path=env["AADHELPER_SOCKET"])
            header(env)
            records = refreshes(authority)
            assert [r.status for r in records] == [200, 200, 200]
            assert [r.digests["refresh_token"] for r in records[:2]] == [sha(first)] * 2
            assert records[2].digests["refresh_token"] != sha(first)
        else:
            result = cli(env, "header", "me")
            assert result.returncode == 6 and "AADSTS50173" in result.stderr
            assert "aadhelper login me" in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert daemon.fetcher_pid() not in (None, fetcher)


@pytest.mark.parametrize("breakage, aadsts", [("revoked", 50173), ("expired", 700082)])
def test_dead_sign_in_reads_login_required_after_one_request(
        env: dict[str, str], authority: SimulatedAuthority, client_ssl_context: ssl.SSLContext,
        secret_service: KeyringSecretStore, breakage: str, aadsts: int) -> None:
    """If the refresh token was revoked or has expired, then header fails with one line naming the AADSTS code and
    `aadhelper login me` (exit 6), repeated and other-resource requests fail the same way without asking the
    authority again, and status shows the profile as login required."""
    seed(authority, client_ssl_context, secret_service)
    if breakage == "revoked":
        authority.revoke(user=USER)
    else:
        authority.refresh_token_lifetime = 0
    with DaemonProcess(env):
        for args in ((), (), ("--scope", SCOPES[1])):
            result = cli(env, "header", "me", *args)
            assert result.returncode == 6, result.stderr
            assert f"AADSTS{aadsts}" in result.stderr and "aadhelper login me" in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1
        status = cli(env, "status")
        assert status.returncode == 6
        assert "login required" in status.stdout and f"AADSTS{aadsts}" in status.stdout
    assert len(refreshes(authority)) == 1


def test_git_helper_names_the_signed_in_account(env: dict[str, str], authority: SimulatedAuthority,
                                               client_ssl_context: ssl.SSLContext,
                                               secret_service: KeyringSecretStore) -> None:
    """If a user profile is mapped to a git URL, then the git helper answers with the account the sign-in names (as
    Git Credential Manager does), not a placeholder, and the password is an access token for the profile."""
    seed(authority, client_ssl_context, secret_service)
    cli(env, "profile", "git-url", "add", "me", "https://dev.azure.com/contoso/", check=True)
    with DaemonProcess(env):
        result = subprocess.run([str(BIN / "git-credential-aadhelper"), "get"], env=env, capture_output=True,
                                text=True, input="protocol=https\nhost=dev.azure.com\npath=contoso/app.git\n\n",
                                timeout=30, check=True)
    answer = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    sensitive(answer["password"])
    assert answer["username"] == USER
    assert authority.validate(f"Bearer {answer['password']}")["aud"] == "https://graph.microsoft.com"


def refresh_while_the_keyring_locks(authority: SimulatedAuthority, env: dict[str, str], daemon: DaemonProcess) -> None:
    """A refresh that read the keyring, got its reply after the keyring was locked, and so could not store the
    rotated refresh token; the access token is still served."""
    release, waiting = hold_a_refresh(authority, env)
    try:
        lock_keyring()
    finally:
        release.set()
        _, stderr = waiting.communicate(timeout=30)
    assert waiting.returncode == 0, stderr
    wait_for_log(daemon, r"profile 'me': could not store the rotated refresh token \(the OS keyring is locked")


@pytest.mark.parametrize("then", ["unlock", "stop"])
def test_a_rotated_refresh_token_the_locked_keyring_refused_is_stored_later_or_reported_lost_at_stop(
        env: dict[str, str], authority: SimulatedAuthority, client_ssl_context: ssl.SSLContext,
        secret_service: KeyringSecretStore, then: str) -> None:
    """If the keyring is locked when a rotated refresh token must be stored, then the daemon keeps it in memory and
    retries: once the keyring is unlocked the running daemon stores it (and the next refresh presents it). If the
    daemon is stopped (SIGTERM) first, then it tries once more and logs at ERROR level that the new refresh token is
    lost, naming `aadhelper login me`."""
    first = seed(authority, client_ssl_context, secret_service)
    daemon = DaemonProcess(env).start()
    try:
        try:
            refresh_while_the_keyring_locks(authority, env, daemon)
            status = cli(env, "status")
            assert "a new sign-in is not yet saved to the keyring" in status.stdout
            if then == "stop":
                assert daemon.stop() == 0
        finally:
            unlock_keyring()
        if then == "stop":
            lost = re.findall(r"ERROR aadhelper\.grants: (.*)", daemon.log())
            assert lost == ["profile 'me': the new refresh token could not be stored in the keyring and is lost "
                            "with this process; run `aadhelper login me`"]
            assert stored(secret_service) == first
            return
        wait_for_log(daemon, "profile 'me': stored the rotated refresh token in the keyring", timeout=60)
        assert "not yet saved" not in cli(env, "status").stdout
        rotated = stored(secret_service)
        assert rotated not in (None, first)
        client.invalidate("me", socket_path=env["AADHELPER_SOCKET"])
        header(env)
        records = refreshes(authority)
        assert [r.status for r in records] == [200, 200]
        assert [r.digests["refresh_token"] for r in records] == [sha(first), sha(rotated or "")]
        assert "ERROR" not in daemon.log()
    finally:
        daemon.stop()
