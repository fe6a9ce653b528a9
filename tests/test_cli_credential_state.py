"""`status` and `profile show` say who a user profile is signed in as (account and tenant from the sign-in's id
token), whether a secret or sign-in is stored (never its value), and the effective minimum validity (issue 14 §2):
a real `aadhelper login` against the simulated authority, the real Secret Service and a real daemon."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from aadhelper.secret_store import KeyringSecretStore
from aadhelper.testing import SimulatedAuthority
from tests.harness import (  # noqa: F401 -- user_app_authority, user_profile_env: fixtures
    AADHELPER,
    APP,
    USER,
    DaemonProcess,
    cli,
    header,
    user_app_authority,
    user_profile_env,
)

pytestmark = pytest.mark.requires("secret-service")


def _sign_in(env: dict[str, str], authority: SimulatedAuthority) -> None:
    """`aadhelper login me -v` with its device code approved by the user, as a person would; -v reports the token
    request to the authority."""
    login = subprocess.Popen([AADHELPER, "login", "me", "-v"], env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert login.stderr is not None
        for line in login.stderr:
            match = re.search(r"enter the code (\w+)", line)
            if match:
                authority.approve(match.group(1))
                break
        _, rest = login.communicate(timeout=60)
        assert login.returncode == 0, rest
        # -v: what the CLI asked of the authority, and how long it took
        assert re.search(r"aadhelper: POST https://\S+/oauth2/v2.0/token \(profile me\): HTTP 200 in \d+ ms", rest)
    finally:
        if login.poll() is None:
            login.kill()
            login.wait()


def test_show_and_status_name_the_signed_in_account(env: dict[str, str], authority: SimulatedAuthority,
                                                    secret_service: KeyringSecretStore) -> None:
    """If a user profile signed in with `aadhelper login`, then `profile show` (text and JSON) and `status` name the
    account and its tenant and say the sign-in is stored, `status` shows the profile's min_valid; after `logout`
    they say it is not signed in."""
    before = cli(env, "profile", "show", "me")
    assert "sign-in         not signed in: `aadhelper login me`" in before.stdout
    _sign_in(env, authority)
    with DaemonProcess(env):
        tenant = authority.validate(header(env))["tid"]
        shown = cli(env, "profile", "show", "me")
        stored = "sign-in (refresh token) stored in the OS keyring"
        assert f"signed in as {USER} (tenant {tenant}); {stored}" in shown.stdout
        as_json = json.loads(cli(env, "profile", "show", "me", "--json").stdout)
        assert as_json["signed_in"] == {"account": USER, "tenant": tenant} and as_json["secret_stored"] is True
        status = cli(env, "status")
        assert status.returncode == 0, status.stdout
        assert "me (default)  user  min_valid 300 s" in status.stdout
        assert f"  signed in as {USER} (tenant {tenant})" in status.stdout
        state = json.loads(cli(env, "status", "--json").stdout)["profiles"][0]["credential_state"]
        assert (state["account"], state["stored"]) == (USER, True)
        assert cli(env, "logout", "me").returncode == 0
        after = cli(env, "profile", "show", "me", "--json")
        assert json.loads(after.stdout)["signed_in"] == {"account": None, "tenant": None}
        assert "not signed in" in cli(env, "status").stdout


def test_show_says_whether_a_client_secret_is_stored(env: dict[str, str], authority: SimulatedAuthority,
                                                     secret_service: KeyringSecretStore, ca_pem_file: Path) -> None:
    """If a client-secret profile has no secret, then `profile show` says so with the command that stores one; once
    `secret set` ran, it says the secret is stored, and never prints it."""
    assert cli(env, "profile", "add", "app", "--tenant", "contoso.onmicrosoft.com", "--client-id", APP, "--scope",
               "https://graph.microsoft.com/.default", "--min-valid", "600").returncode == 0
    missing = cli(env, "profile", "show", "app")
    assert "secret          no client secret stored: `aadhelper secret set app`" in missing.stdout
    assert "min_valid       600" in missing.stdout
    assert cli(env, "secret", "set", "app", input="s3cret-value\n").returncode == 0
    stored = cli(env, "profile", "show", "app")
    assert "secret          client secret stored in the OS keyring" in stored.stdout
    assert "s3cret-value" not in stored.stdout + stored.stderr
