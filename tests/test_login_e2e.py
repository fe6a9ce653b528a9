"""`aadhelper login` / `logout` end to end: the CLI as a subprocess, the simulated authority over real HTTPS (trustme),
refresh tokens in the real Secret Service, and the real daemon picking up a new sign-in without a restart."""

from __future__ import annotations

import re
import signal
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from aadhelper.secret_store import KeyringSecretStore
from aadhelper.testing import DEVICE_CODE_GRANT, Fault, SimulatedAuthority
from tests.harness import (  # noqa: F401 -- user_app_authority, user_profile_env: fixtures
    AADHELPER,
    ADO,
    CLIENT,
    GRAPH_SCOPE,
    SENSITIVE,
    TENANT,
    USER,
    DaemonProcess,
    cli,
    header,
    seed,
    stored,
    user_app_authority,
    user_profile_env,
)

ADO_SCOPE = f"{ADO}/.default"
CLAIMS = '{"access_token":{"acrs":{"essential":true,"value":"c1"}}}'

pytestmark = pytest.mark.requires("secret-service")


class Login:
    """`aadhelper login ARGS` running in the background; its stderr is read line by line."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.args = ["login", *args]
        self.process = subprocess.Popen([AADHELPER, *self.args], env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        """The first stderr line matching ``pattern``, waiting for it to appear."""
        found: list[re.Match[str]] = []

        def match() -> bool:
            found[:] = [m for m in (re.search(pattern, line) for line in self.lines) if m][:1]
            return bool(found) or self.process.poll() is not None

        with self._changed:
            self._changed.wait_for(match, timeout)
        assert found, f"no stderr line matched {pattern!r}: {self.stderr}"
        return found[0]

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        """(exit code, stdout, stderr); the stderr is checked for leaked secrets."""
        try:
            self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        self._reader.join(10)
        assert self.process.stdout is not None
        stdout = self.process.stdout.read()
        self.process.stdout.close()
        assert self.process.stderr is not None
        self.process.stderr.close()
        for value in SENSITIVE:
            assert value not in self.stderr, "a secret or token leaked into the login's stderr"
        return self.process.returncode, stdout, self.stderr

    def __enter__(self) -> Login:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def approve_device_code(authority: SimulatedAuthority, login: Login, action: str = "approve") -> str:
    """Read the code the CLI printed, check it is the pending one, and let the user approve (or deny/expire) it."""
    code = login.wait_for(r"enter the code (\w+)").group(1)
    assert authority.pending_device_codes() == [code]
    getattr(authority, action)(code)
    return code


def test_device_login_end_to_end_with_a_running_daemon(env: dict[str, str], authority: SimulatedAuthority,
                                                       secret_service: KeyringSecretStore) -> None:
    """If a user profile is not signed in, then status (even before any request) and header say `aadhelper login
    me`; after the device code login (code printed, approved by the user), the refresh token is in the Secret Service
    and the running daemon serves headers for the profile's scope and for another resource at once."""
    with DaemonProcess(env):
        status = cli(env, "status")  # before any request: the daemon must know without a first fetch
        assert status.returncode == 6 and "login required" in status.stdout and "aadhelper login me" in status.stdout
        before = cli(env, "header", "me")
        assert before.returncode == 6 and "not signed in" in before.stderr and "aadhelper login me" in before.stderr
        assert authority.count(endpoint="token") == 0

        with Login(env, "me") as login:
            approve_device_code(authority, login)
            code, stdout, stderr = login.finish()
        assert code == 0, stderr
        assert stdout == ""
        assert stored(secret_service) is not None
        assert f"signed in as {USER}" in stderr and "reloaded" in stderr

        graph = header(env)
        assert authority.validate(graph)["aud"] == "https://graph.microsoft.com"
        devops = header(env, "--scope", ADO_SCOPE)
        assert authority.validate(devops)["aud"] == ADO
        assert cli(env, "status").returncode == 0
    assert [r.status for r in authority.requests if r.grant_type == "refresh_token"] == [200, 200]


@pytest.mark.parametrize("ending, error, words", [
    ("deny", "authorization_declined", "declined"),
    ("expire", "expired_token", "expired"),
    ("bad_code", "bad_verification_code", "does not know this device code"),
])
def test_device_login_failures_exit_6_and_store_nothing(env: dict[str, str], authority: SimulatedAuthority,
                                                        secret_service: KeyringSecretStore, ending: str, error: str,
                                                        words: str) -> None:
    """If the user declines, the code expires, or the authority forgets the code, then `aadhelper login` exits 6 with
    one clear line (what happened, the authority's error, the command to retry) and stores nothing."""
    if ending == "bad_code":
        authority.inject(Fault.error("bad_verification_code", 70018, "The device_code is not valid.",
                                     grant_type=DEVICE_CODE_GRANT))
    with Login(env, "me") as login:
        if ending != "bad_code":
            approve_device_code(authority, login, ending)
        code, _, stderr = login.finish()
    assert code == 6, stderr
    last = stderr.strip().splitlines()[-1]
    assert words in last and error in last and "aadhelper login me" in last
    assert "Traceback" not in stderr
    assert stored(secret_service) is None


def test_slow_down_spaces_later_polls_five_seconds_further(env: dict[str, str], authority: SimulatedAuthority,
                                                           secret_service: KeyringSecretStore) -> None:
    """If the authority answers a poll with slow_down, then the CLI's next poll comes about 5 s later than the
    interval alone would bring it (by the authority's arrival times), and the login then completes."""
    authority.device_code_interval = 0
    authority.inject(Fault.delay(0, grant_type=DEVICE_CODE_GRANT))  # the first poll is answered normally
    authority.inject(Fault.error("slow_down", 50196, "Polled too soon.", grant_type=DEVICE_CODE_GRANT))
    with Login(env, "me") as login:
        code = login.wait_for(r"enter the code (\w+)").group(1)
        authority.wait_for_requests(2, grant_type=DEVICE_CODE_GRANT)
        authority.approve(code)
        result, _, stderr = login.finish()
    assert result == 0, stderr
    polls = [r for r in authority.requests if r.grant_type == DEVICE_CODE_GRANT]
    assert [p.error for p in polls] == ["authorization_pending", "slow_down", None]
    before, after = polls[1].time - polls[0].time, polls[2].time - polls[1].time
    assert after - before >= 4.5
    assert stored(secret_service) is not None


def test_ctrl_c_cancels_cleanly_and_stores_nothing(env: dict[str, str], authority: SimulatedAuthority,
                                                   secret_service: KeyringSecretStore) -> None:
    """If the user presses Ctrl-C while the login waits, then it exits 130 with one line, no traceback, and the
    keyring is untouched."""
    with Login(env, "me") as login:
        login.wait_for(r"enter the code")
        authority.wait_for_requests(1, grant_type=DEVICE_CODE_GRANT)
        login.process.send_signal(signal.SIGINT)
        code, _, stderr = login.finish()
    assert code == 130, stderr
    assert "cancelled" in stderr and "nothing was stored" in stderr and "Traceback" not in stderr
    assert stored(secret_service) is None


def test_browser_login_end_to_end(env: dict[str, str], authority: SimulatedAuthority,
                                  client_ssl_context: ssl.SSLContext, secret_service: KeyringSecretStore) -> None:
    """If `aadhelper login me --browser --no-browser` prints the URL and a browser (here an HTTP client) follows it,
    then the redirect to 127.0.0.1 completes the PKCE sign-in, the browser sees a friendly page, the refresh token
    is stored, and headers work."""
    with Login(env, "me", "--browser", "--no-browser") as login:
        url = login.wait_for(r"^\s+(https://\S+)").group(1)
        with httpx.Client(verify=client_ssl_context, follow_redirects=True, timeout=30) as browser:
            page = browser.get(url)
        code, _, stderr = login.finish()
    assert code == 0, stderr
    assert page.status_code == 200 and "You are signed in as" in page.text
    assert str(page.url).startswith("http://127.0.0.1:")
    assert stored(secret_service) is not None
    with DaemonProcess(env):
        assert authority.validate(header(env))["aud"] == "https://graph.microsoft.com"


def test_browser_login_opens_the_browser_from_BROWSER(env: dict[str, str], authority: SimulatedAuthority,
                                                      ca_pem_file: Path, tmp_path: Path,
                                                      secret_service: KeyringSecretStore) -> None:
    """If $BROWSER names a browser, then `aadhelper login me --browser` starts it with the sign-in URL through
    Python's webbrowser module, and the sign-in completes."""
    browser = tmp_path / "fake-browser"
    browser.write_text(f"#!{sys.executable}\nimport sys, urllib.request\n"
                       "with urllib.request.urlopen(sys.argv[1], timeout=30) as page:\n"
                       "    sys.exit(0 if b'You are signed in' in page.read() else 1)\n")
    browser.chmod(0o755)
    browser_env = dict(env, BROWSER=str(browser), SSL_CERT_FILE=str(ca_pem_file))
    with Login(browser_env, "me", "--browser") as login:
        code, _, stderr = login.finish()
    assert code == 0, stderr
    assert "Could not start a browser" not in stderr
    assert stored(secret_service) is not None
    assert authority.count(grant_type="authorization_code") == 1


def test_logout_removes_every_chunk_and_drops_cached_tokens(
        env: dict[str, str], authority: SimulatedAuthority, client_ssl_context: ssl.SSLContext,
        secret_service: KeyringSecretStore, keyring_entries: Callable[[], set[str]]) -> None:
    """If a large refresh token was stored in chunks, then the daemon reads it whole, and `aadhelper logout me`
    removes the header and every chunk from the Secret Service and makes the running daemon drop its tokens."""
    authority.refresh_token_length = 6000
    seed(authority, client_ssl_context, secret_service, max_value_chars=1280)
    names = keyring_entries()
    assert len([n for n in names if n.startswith("me/refresh_token#")]) == 5
    with DaemonProcess(env):
        header(env)
        result = cli(env, "logout", "me", check=True)
        assert "deleted the refresh token" in result.stderr
        assert not [n for n in keyring_entries() if n.startswith("me/")]
        after = cli(env, "header", "me")
        assert after.returncode == 6 and "not signed in" in after.stderr
        again = cli(env, "logout", "me", check=True)
        assert "was not signed in" in again.stderr


def test_login_repairs_a_corrupted_sign_in(env: dict[str, str], authority: SimulatedAuthority,
                                          client_ssl_context: ssl.SSLContext,
                                          secret_service: KeyringSecretStore) -> None:
    """If a chunk of the stored refresh token went missing, then the daemon refuses it with a clear line naming
    `aadhelper login me` (exit 4), and that login works and replaces it."""
    import keyring

    authority.refresh_token_length = 6000
    seed(authority, client_ssl_context, secret_service, max_value_chars=1280)
    keyring.delete_password("aadhelper", "me/refresh_token#0.2")
    with DaemonProcess(env):
        broken = cli(env, "header", "me")
        assert broken.returncode == 4 and "corrupted" in broken.stderr and "aadhelper login me" in broken.stderr
        with Login(env, "me") as login:
            approve_device_code(authority, login)
            code, _, stderr = login.finish()
        assert code == 0, stderr
        header(env)


def test_claims_challenge_from_the_daemon_is_carried_into_the_next_login(
        env: dict[str, str], authority: SimulatedAuthority, client_ssl_context: ssl.SSLContext,
        secret_service: KeyringSecretStore) -> None:
    """If the daemon's refresh met an MFA challenge with claims, then header and status say login required, and the
    next `aadhelper login` sends those claims with its device code request; afterwards headers work again."""
    seed(authority, client_ssl_context, secret_service)
    authority.inject(Fault.error("interaction_required", 50076, "You must use multi-factor authentication.",
                                 claims=CLAIMS, grant_type="refresh_token"))
    with DaemonProcess(env):
        failed = cli(env, "header", "me")
        assert failed.returncode == 6 and "AADSTS50076" in failed.stderr and "aadhelper login me" in failed.stderr
        status = cli(env, "status")
        assert status.returncode == 6 and "login required" in status.stdout
        with Login(env, "me") as login:
            approve_device_code(authority, login)
            code, _, stderr = login.finish()
        assert code == 0, stderr
        assert "Conditional Access challenge" in stderr
        request = [r for r in authority.requests if r.endpoint == "devicecode"][-1]
        assert request.params["claims"] == CLAIMS
        header(env)


def test_login_refuses_misuse_with_one_line(env: dict[str, str], authority: SimulatedAuthority,
                                            ca_pem_file: Path) -> None:
    """If login is asked for a client-secret profile, an unknown profile, or --no-browser without --browser, then it
    exits with the matching code and one line saying what to do."""
    cli(env, "profile", "add", "app", "--tenant", TENANT, "--client-id", CLIENT, "--scope", GRAPH_SCOPE,
        "--authority", authority.url, "--ca-bundle", str(ca_pem_file), check=True)
    secret = cli(env, "login", "app")
    assert secret.returncode == 3 and "aadhelper secret set app" in secret.stderr
    unknown = cli(env, "login", "nobody")
    assert unknown.returncode == 3 and "nobody" in unknown.stderr
    flags = cli(env, "login", "me", "--no-browser")
    assert flags.returncode == 2 and "--browser" in flags.stderr
    for result in (secret, unknown, flags):
        assert len(result.stderr.strip().splitlines()) == 1
    assert authority.count() == 0


def test_login_without_keyring_fails_before_the_sign_in(env: dict[str, str], authority: SimulatedAuthority) -> None:
    """If no keyring backend is usable, then login says so (exit 4) before asking the user to sign in."""
    result = cli(dict(env, PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring"), "login", "me")
    assert result.returncode == 4 and "keyring" in result.stderr.lower()
    assert authority.count() == 0
