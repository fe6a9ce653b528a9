"""End to end with the real git: clone and push over HTTPS with tokens from the real daemon.

Parts: git 2.39 with ``credential.helper=aadhelper`` (the console script on PATH); a loopback smart-HTTP server
(:mod:`tests.gitserver`, ``git http-backend`` behind TLS from the trustme CA) that accepts only tokens the
simulated authority issued for Azure DevOps; the daemon as a subprocess whose profile maps the server's URL;
the client secret in the real Secret Service; the authority over HTTPS.
"""

from __future__ import annotations

import os
import secrets
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from aadhelper.secret_store import KeyringSecretStore
from aadhelper.testing.authority import SimulatedAuthority
from aadhelper.testing.jwt import InvalidToken
from tests.gitserver import GitServer
from tests.harness import BIN, DaemonProcess, cli, sensitive

TENANT = "contoso.onmicrosoft.com"
APP = "22222222-0000-0000-0000-000000000001"
#: Azure DevOps' resource id: what a token for git must be issued for.
ADO = "499b84ac-1321-427f-aa17-267ca6975798"
GIT_USERNAME = "build-agent"

pytestmark = pytest.mark.requires("secret-service", "git")


@pytest.fixture
def app_secret() -> str:
    value = "git-app-secret-" + secrets.token_urlsafe(16)
    sensitive(value)
    return value


@pytest.fixture
def authority(server_ssl_context: ssl.SSLContext, app_secret: str) -> Iterator[SimulatedAuthority]:
    with SimulatedAuthority(ssl_context=server_ssl_context) as authority:
        authority.add_tenant(TENANT)
        authority.add_client(APP, tenant=TENANT, secret=app_secret, resources=(ADO,))
        yield authority


@pytest.fixture
def git_server(tmp_path: Path, authority: SimulatedAuthority,
               server_ssl_context: ssl.SSLContext) -> Iterator[GitServer]:
    def valid(token: str) -> bool:
        try:
            authority.validate(token, audience=ADO)
        except InvalidToken:
            return False
        return True

    root = tmp_path / "served"
    root.mkdir()
    with GitServer(root, valid, ssl_context=server_ssl_context) as server:
        yield server


@pytest.fixture
def env(isolated_env: dict[str, str], tmp_path: Path, ca_pem_file: Path, authority: SimulatedAuthority,
        git_server: GitServer, app_secret: str, secret_service: KeyringSecretStore) -> dict[str, str]:
    """Profile ``ado`` mapping the git server's URL, its secret in the Secret Service, git set up to use aadhelper."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in isolated_env.items() if not k.startswith("GIT_") and k not in ("SSH_ASKPASS",)}
    env.update(
        AADHELPER_NO_AUTOSTART="1", HOME=str(home), PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
        # GIT_SSL_CAINFO overrides http.sslCAInfo, and this machine sets it to the system bundle.
        GIT_SSL_CAINFO=str(ca_pem_file), GIT_TERMINAL_PROMPT="0", GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME="Test", GIT_AUTHOR_EMAIL="test@example.com",
        GIT_COMMITTER_NAME="Test", GIT_COMMITTER_EMAIL="test@example.com",
    )
    cli(env, "profile", "add", "ado", "--tenant", TENANT, "--client-id", APP, "--scope", f"{ADO}/.default",
        "--authority", authority.url, "--ca-bundle", str(ca_pem_file), "--git-url", f"{git_server.url}/mapped/",
        "--git-username", GIT_USERNAME, check=True)
    cli(env, "secret", "set", "ado", input=app_secret + "\n", check=True)
    return env


def git(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real git with aadhelper as its only credential helper (the empty value resets inherited ones).

    The mapping names a path (``/mapped/``), so git must send it: ``credential.useHttpPath``, as Git Credential
    Manager sets for dev.azure.com.
    """
    return subprocess.run(["git", "-c", "credential.helper=", "-c", "credential.helper=aadhelper",
                           "-c", "credential.useHttpPath=true", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def commit_file(work: Path, env: dict[str, str], name: str) -> None:
    (work / name).write_text(f"{name}\n")
    for args in (["add", name], ["commit", "--quiet", "-m", f"add {name}"]):
        subprocess.run(["git", *args], cwd=work, env=env, check=True, capture_output=True, timeout=60)


def test_clone_and_push_use_the_daemons_token(env: dict[str, str], git_server: GitServer,
                                              authority: SimulatedAuthority, tmp_path: Path) -> None:
    """If a profile maps the remote and its secret is in the keyring, then git clone and git push over HTTPS
    succeed, sending the daemon's token as Basic password with the configured username, from one token request."""
    url = git_server.create_repo("mapped/repo.git")
    work = tmp_path / "work"
    with DaemonProcess(env):
        cloned = git(env, "clone", url, str(work))
        assert cloned.returncode == 0, cloned.stderr
        commit_file(work, env, "first.txt")
        pushed = git(env, "push", "origin", "HEAD:refs/heads/main", cwd=work)
        assert pushed.returncode == 0, pushed.stderr
        check = git(env, "clone", "--branch", "main", url, str(tmp_path / "check"))
        assert check.returncode == 0, check.stderr
    assert (tmp_path / "check" / "first.txt").read_text() == "first.txt\n"
    authenticated = [r for r in git_server.requests if r.token is not None]
    sensitive(*(r.token for r in authenticated if r.token))
    assert authenticated and all(r.status == 200 for r in authenticated)
    assert {(r.scheme, r.username) for r in authenticated} == {("basic", GIT_USERNAME)}
    assert len({r.token for r in authenticated}) == 1
    assert any(r.path.endswith("/git-receive-pack") for r in authenticated)
    assert authority.count(grant_type="client_credentials") == 1
    assert "aadhelper" not in cloned.stderr + pushed.stderr


def test_refused_token_is_erased_and_the_next_push_gets_a_fresh_one(
        env: dict[str, str], git_server: GitServer, authority: SimulatedAuthority, tmp_path: Path) -> None:
    """If the server refuses the daemon's (still unexpired) token, then git's erase makes the daemon drop it: the
    push fails with 401, and the next push gets a freshly issued token and succeeds (git 2.39 does not retry
    within one command)."""
    url = git_server.create_repo("mapped/retry.git")
    work = tmp_path / "work"
    with DaemonProcess(env):
        cloned = git(env, "clone", url, str(work))
        assert cloned.returncode == 0, cloned.stderr
        commit_file(work, env, "retry.txt")
        git_server.revoke_next_valid_token()
        refused = git(env, "push", "origin", "HEAD:refs/heads/main", cwd=work)
        assert refused.returncode != 0
        assert "Authentication failed" in refused.stderr
        retried = git(env, "push", "origin", "HEAD:refs/heads/main", cwd=work)
        assert retried.returncode == 0, retried.stderr
    tokens = [r.token for r in git_server.requests if r.token is not None]
    sensitive(*tokens)
    (revoked,) = git_server.revoked
    assert any(r.token == revoked and r.status == 200 for r in git_server.requests)  # the clone used it
    assert any(r.token == revoked and r.status == 401 for r in git_server.requests)  # the first push was refused
    last = git_server.requests[-1]
    assert (last.status, last.token != revoked) == (200, True) and last.path.endswith("/git-receive-pack")
    assert authority.count(grant_type="client_credentials") == 2


def test_unmapped_remote_is_left_to_other_helpers(env: dict[str, str], git_server: GitServer,
                                                 authority: SimulatedAuthority, tmp_path: Path) -> None:
    """If no profile maps the remote, then the helper stays silent (git falls through to its prompt, disabled
    here, and fails) and the authority is never asked."""
    url = git_server.create_repo("unmapped.git")
    with DaemonProcess(env):
        cloned = git(env, "clone", url, str(tmp_path / "work"))
    assert cloned.returncode != 0
    assert "terminal prompts disabled" in cloned.stderr
    assert "aadhelper" not in cloned.stderr
    assert [r.token for r in git_server.requests] == [None]
    assert authority.count(grant_type="client_credentials") == 0
