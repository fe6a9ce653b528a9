"""The az shim (issue 13 §3): the real azure-identity AzureCliCredential and DefaultAzureCredential, finding the shim
as `az` on PATH, get the daemon's tokens; the JSON holds under Go's rules; everything else az does is refused."""

from __future__ import annotations

import datetime
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aadhelper import paths
from aadhelper.cli.az import write_az_shim
from aadhelper.cli.az_format import SHIM_MARKER
from aadhelper.testing import FakeDaemon
from aadhelper.testing.pytest_plugin import PUBLIC_APP_ID, TENANT
from tests.harness import one_error_line, sensitive
from tests.tools_world import (  # noqa: F401 -- tools_world: the fixture `tools`
    ARM,
    PROFILE,
    VAULT,
    ToolsWorld,
    tools_world,
)

#: What every caller of `az` in azure-identity runs (its COMMAND_LINE) and Go's azidentity (`-o json`).
PYTHON_ARGS = ["account", "get-access-token", "--output", "json", "--resource"]
GO_ARGS = ["account", "get-access-token", "-o", "json", "--resource"]
#: Variables that would make DefaultAzureCredential pick another source before the CLI.
OTHER_SOURCES = ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT",
                 "MSI_ENDPOINT", "MSI_SECRET", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID",
                 "AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_USERNAME", "AZURE_PASSWORD",
                 "AZURE_TOKEN_CREDENTIALS", "AZURE_AUTHORITY_HOST")

#: Runs one azure-identity credential in a child (as an SDK process would) and prints what get_token returned.
CHILD = """
import json, sys
from azure.identity import AzureCliCredential, DefaultAzureCredential
credential = AzureCliCredential() if sys.argv[1] == "cli" else DefaultAzureCredential()
tokens = [credential.get_token(scope) for scope in sys.argv[2:]]
print(json.dumps([{"token": t.token, "expires_on": t.expires_on} for t in tokens]))
"""


@pytest.fixture
def shim_env(tools: ToolsWorld, tmp_path: Path) -> dict[str, str]:
    """The world's environment with the shim for profile `app` first on a minimal PATH (no real az anywhere), a
    private HOME (so no Azure CLI, VS Code or shared MSAL cache of the machine is read) and none of the variables
    of another credential source."""
    shim = write_az_shim(str(tmp_path / "shim"), PROFILE)
    env = {k: v for k, v in tools.env.items() if k not in OTHER_SOURCES}
    env["PATH"] = os.pathsep.join([os.path.dirname(shim), "/usr/bin", "/bin"])
    return env


def daemon_expiry(tools: ToolsWorld, scope: str) -> int:
    reply = json.loads(tools.home.aadhelper("token", PROFILE, "--scope", scope, "--json").stdout)
    sensitive(reply["access_token"])
    expires_on: int = reply["expires_on"]
    return expires_on


@pytest.mark.parametrize("kind", ["cli", "default"])
def test_azure_identity_gets_the_daemons_tokens_through_the_shim(tools: ToolsWorld, shim_env: dict[str, str],
                                                                 kind: str) -> None:
    """If azure-identity's AzureCliCredential (or DefaultAzureCredential, with no managed-identity or environment
    credential variables) finds the shim as `az`, then get_token returns exactly the daemon's token and expiry
    for each of two resources."""
    scopes = [f"{ARM}/.default", f"{VAULT}/.default"]
    result = subprocess.run([sys.executable, "-c", CHILD, kind, *scopes], env=shim_env, capture_output=True,
                            text=True, stdin=subprocess.DEVNULL, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout)
    assert [entry["token"] for entry in got] == [tools.token(scope) for scope in scopes]
    assert [entry["expires_on"] for entry in got] == [daemon_expiry(tools, scope) for scope in scopes]


def az(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`az ARGS` as AzureCliCredential runs it: found on PATH, cwd /bin, stdin closed."""
    return subprocess.run(["az", *args], env=env, cwd="/bin", capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60, check=False)


@pytest.mark.parametrize("args", [PYTHON_ARGS, GO_ARGS], ids=["python", "go"])
def test_the_output_parses_under_gos_rules_and_says_what_az_says(tools: ToolsWorld, shim_env: dict[str, str],
                                                                  args: list[str]) -> None:
    """If a caller runs the shim as azure-identity or Go's azidentity do, then stdout is one JSON object whose
    expires_on is a JSON integer (Go decodes it into an int64), expiresOn is that time in local time with
    microseconds, tokenType is Bearer and tenant is the token's tenant id."""
    result = az(shim_env, *args, ARM)
    assert result.returncode == 0, result.stderr
    reply: dict[str, Any] = json.loads(result.stdout)
    assert re.search(r'"expires_on":\s*\d+\s*[,}]', result.stdout)  # an integer literal: no quotes, no fraction
    assert type(reply["expires_on"]) is int
    assert reply["accessToken"] == tools.token(f"{ARM}/.default")
    assert reply["expires_on"] == daemon_expiry(tools, f"{ARM}/.default")
    parsed = datetime.datetime.strptime(reply["expiresOn"], "%Y-%m-%d %H:%M:%S.%f")  # azure-identity's format
    assert parsed == datetime.datetime.fromtimestamp(reply["expires_on"])
    assert reply["tokenType"] == "Bearer"
    claims = tools.authority.validate(reply["accessToken"])
    assert reply["tenant"] == claims["tid"] and "subscription" not in reply


def test_tenant_must_be_the_profiles_and_subscription_is_echoed(tools: ToolsWorld, shim_env: dict[str, str]) -> None:
    """If --tenant names the profile's tenant (by its configured domain or its id, in any case), then the token
    comes; another tenant is refused with one line (exit 3) naming both; --subscription is echoed back."""
    tid = tools.authority.validate(tools.token(f"{ARM}/.default"))["tid"]
    assert isinstance(tid, str)
    for tenant in (TENANT, tid, tid.upper()):
        result = az(shim_env, *PYTHON_ARGS, ARM, "--tenant", tenant)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["tenant"] == tid
    refused = az(shim_env, *PYTHON_ARGS, ARM, "--tenant", "fabrikam.onmicrosoft.com")
    assert refused.returncode == 3 and refused.stdout == ""
    assert "fabrikam.onmicrosoft.com" in one_error_line(refused) and TENANT in refused.stderr
    echoed = az(shim_env, *PYTHON_ARGS, ARM, "--subscription", "00000000-1111-2222-3333-444444444444")
    assert json.loads(echoed.stdout)["subscription"] == "00000000-1111-2222-3333-444444444444"


def test_a_profile_that_needs_a_sign_in_names_aadhelper_login(tools: ToolsWorld, shim_env: dict[str, str],
                                                               tmp_path: Path) -> None:
    """If the shim's profile needs a sign-in, then az exits 6 with one line naming `aadhelper login NAME`, and
    AzureCliCredential shows that line (not its own "Please run 'az login'")."""
    tools.home.aadhelper("profile", "add", "me", "--tenant", "organizations", "--client-id", PUBLIC_APP_ID,
                         "--user", "--scope", f"{ARM}/.default", "--authority", tools.authority.url, "--ca-bundle",
                         str(tools.tls.ca_pem))
    shim = write_az_shim(str(tmp_path / "me-shim"), "me")
    env = dict(shim_env, PATH=os.pathsep.join([os.path.dirname(shim), shim_env["PATH"]]))
    result = az(env, *PYTHON_ARGS, ARM)
    assert result.returncode == 6
    assert "`aadhelper login me`" in one_error_line(result) and "az login" not in result.stderr
    child = subprocess.run([sys.executable, "-c", CHILD, "cli", f"{ARM}/.default"], env=env, capture_output=True,
                           text=True, stdin=subprocess.DEVNULL, timeout=120, check=False)
    assert child.returncode != 0
    assert "ClientAuthenticationError" in child.stderr and "aadhelper login me" in child.stderr


# -- what the shim refuses, and the shim file itself ------------------------------------------------------------


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeDaemon]:
    with FakeDaemon(tmp_path / "run" / "daemon.sock") as daemon:
        yield daemon


@pytest.mark.parametrize("args, named", [
    (["account", "show"], "account show"),
    (["login"], "login"),
    ([], "no command"),
    (["account", "get-access-token", "--query", "accessToken"], "--query"),
    (["account", "get-access-token", "--output", "tsv"], "tsv"),
    (["account", "get-access-token", "-otable"], "table"),
    (["account", "get-access-token", "--resource-type", "arm"], "--resource-type"),
    (["account", "get-access-token", "--resource"], "--resource"),
    (["account", "get-access-token", "--resource", "https://a", "--scope", "b/.default"], "--scope"),
    (["account", "get-access-token", "--tenant", "t", "--subscription", "s"], "--subscription"),
    (["account", "get-access-token", "--tenant", "t", "--tenant", "u"], "twice"),
    (["account", "get-access-token", "--only-show-errors=yes"], "--only-show-errors"),
    (["account", "get-access-token", "--force"], "--force"),
    (["account", "get-access-token", "x"], "account get-access-token x"),
], ids=lambda value: "-".join(value) if isinstance(value, list) else None)
def test_anything_but_get_access_token_is_refused_with_one_line(fake: FakeDaemon, args: list[str],
                                                                named: str) -> None:
    """If the shim is given another az command, an option it does not support or a bad combination, then it exits 2
    with one line naming the argument, prints nothing on stdout, and never asks the daemon."""
    env = dict(fake.environ(os.environ), AADHELPER_NO_AUTOSTART="1")
    result = subprocess.run([*paths.console_script(), "az", "--profile", "p", *args], env=env, capture_output=True,
                            text=True, stdin=subprocess.DEVNULL, timeout=30, check=False)
    assert result.returncode == 2, result.stderr
    assert named in one_error_line(result)
    assert result.stdout == "" and fake.requests == []


def test_scope_takes_several_values_and_resource_gets_dot_default(fake: FakeDaemon) -> None:
    """If the shim gets --scope with several values or --resource R, then it asks the daemon for exactly those
    scopes, or R/.default (appended as az does, even after a trailing slash)."""
    env = dict(fake.environ(os.environ), AADHELPER_NO_AUTOSTART="1")
    for args, scopes in ((["--scope", "a/.default", "b/.default"], ["a/.default", "b/.default"]),
                         (["--resource", "https://management.core.windows.net/"],
                          ["https://management.core.windows.net//.default"])):
        result = subprocess.run([*paths.console_script(), "az", "--profile", "p", "account", "get-access-token",
                                 *args], env=env, capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode == 0, result.stderr
        assert fake.requests[-1]["scopes"] == scopes and fake.requests[-1]["profile"] == "p"


def test_install_shim_writes_an_executable_az_and_never_clobbers_a_real_one(tools: ToolsWorld,
                                                                           tmp_path: Path) -> None:
    """If `aadhelper az install-shim` writes DIR/az, then it is 0755 and execs this installation's absolute
    aadhelper for the profile; writing again replaces it; an az that is not a shim is refused unless --force; an
    unknown profile writes nothing."""
    directory = tmp_path / "bin"
    tools.home.aadhelper("az", "install-shim", "--profile", PROFILE, str(directory))
    shim = directory / "az"
    assert stat.S_IMODE(shim.stat().st_mode) == 0o755
    text = shim.read_text()
    assert text.startswith("#!/bin/sh\n") and SHIM_MARKER in text
    assert f"exec {paths.console_script()[0]} az --profile {PROFILE} \"$@\"" in text
    tools.home.aadhelper("az", "install-shim", "--profile", PROFILE, str(directory))  # again: fine

    real = tmp_path / "real"
    real.mkdir()
    (real / "az").write_text("#!/bin/sh\necho the real Azure CLI\n")
    refused = tools.home.aadhelper("az", "install-shim", "--profile", PROFILE, str(real), check=False)
    assert refused.returncode == 3 and "--force" in one_error_line(refused)
    assert (real / "az").read_text() == "#!/bin/sh\necho the real Azure CLI\n"
    tools.home.aadhelper("az", "install-shim", "--profile", PROFILE, "--force", str(real))
    assert SHIM_MARKER in (real / "az").read_text()

    unknown = tools.home.aadhelper("az", "install-shim", "--profile", "nope", str(tmp_path / "none"), check=False)
    assert unknown.returncode == 3 and "nope" in one_error_line(unknown)
    assert not (tmp_path / "none").exists()
    assert sorted(p.name for p in directory.iterdir()) == ["az"]  # no temporary file left behind
