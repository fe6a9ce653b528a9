"""Workload identity federation end to end: the daemon as a subprocess, the simulated authority over HTTPS checking
each assertion against an OIDC issuer's JWKS, the real Secret Service, and a token file written the way the
kubelet writes a projected service-account token (a ``..data`` symlink swapped atomically at each rotation).

Every assertion and token a test sees is registered with the harness's leak check, which every daemon log and CLI
stderr here goes through."""

from __future__ import annotations

import hashlib
import ssl
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aadhelper import client
from aadhelper.secret_store import KeyringSecretStore
from aadhelper.testing.authority import SimulatedAuthority
from aadhelper.testing.federation import OidcIssuer
from tests.harness import APP, GRAPH_SCOPE, TENANT, DaemonProcess, cli, one_error_line, sensitive, token_of

pytestmark = pytest.mark.requires("secret-service")

ISSUER = "https://oidc.prod-aks.example.com/6f1d2c3b-tenant/"
SUBJECT = "system:serviceaccount:payments:api"


class ProjectedToken:
    """A token file as the kubelet keeps it: ``token`` -> ``..data/token``, ``..data`` -> a timestamped directory;
    a rotation writes a new directory and renames a new ``..data`` link over the old one (atomic)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir()
        self.path = folder / "token"
        self._generation = 0

    def write(self, content: str) -> None:
        self._generation += 1
        data = self.folder / f"..2026_11_30_{self._generation:04d}"
        data.mkdir()
        (data / "token").write_text(content)
        link = self.folder / "..data_tmp"
        link.symlink_to(data.name)
        link.rename(self.folder / "..data")
        if not self.path.is_symlink():
            self.path.symlink_to("..data/token")


@dataclass
class World:
    env: dict[str, str]
    authority: SimulatedAuthority
    issuer: OidcIssuer
    token: ProjectedToken

    def assertion(self, subject: str = SUBJECT, issuer: OidcIssuer | None = None) -> str:
        """A fresh assertion (registered as sensitive)."""
        value = (issuer or self.issuer).token(subject)
        sensitive(value)
        return value


@pytest.fixture
def world(isolated_env: dict[str, str], ca_pem_file: Path, server_ssl_context: ssl.SSLContext,
          secret_service: KeyringSecretStore, tmp_path: Path) -> Iterator[World]:
    """Profile `fed` (credential federated, token file in tmp_path) for an app whose federated identity credential
    trusts ISSUER's SUBJECT; the file holds a valid assertion."""
    issuer = OidcIssuer(ISSUER)
    token = ProjectedToken(tmp_path / "azure-tokens")
    env = dict(isolated_env, AADHELPER_NO_AUTOSTART="1")
    with SimulatedAuthority(ssl_context=server_ssl_context) as authority:
        authority.add_tenant(TENANT)
        authority.add_client(APP, tenant=TENANT)
        authority.publish_issuer(issuer.url, issuer.jwks())
        authority.add_federated_credential(APP, issuer=issuer.url, subject=SUBJECT)
        world = World(env, authority, issuer, token)
        token.write(world.assertion())
        cli(env, "profile", "add", "fed", "--tenant", TENANT, "--client-id", APP, "--scope", GRAPH_SCOPE,
            "--authority", authority.url, "--ca-bundle", str(ca_pem_file), "--credential", "federated",
            "--token-file", str(token.path), check=True)
        yield world


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def test_a_federated_profile_gets_a_token_with_the_file_as_client_assertion(world: World) -> None:
    """If the token file holds an assertion the app's federated credential trusts, then `aadhelper token` prints an
    app token for the app, got by posting exactly that assertion as a jwt-bearer client assertion, no secret."""
    assertion = world.assertion()
    world.token.write(assertion)
    with DaemonProcess(world.env):
        token = token_of(world.env, "fed")
    claims = world.authority.validate(token)
    assert claims["appid"] == APP and claims["idtyp"] == "app"
    [request] = world.authority.requests
    assert request.params["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert request.digests["client_assertion"] == digest(assertion)
    assert "client_secret" not in request.params and request.status == 200
    shown = cli(world.env, "profile", "show", "fed", check=True).stdout
    assert f"token_file      {world.token.path}" in shown


def test_an_assertion_from_another_issuer_is_refused_with_aadsts70021(world: World) -> None:
    """If the file holds a valid token of an issuer the app has no federated credential for, then the authority
    refuses it with AADSTS70021 and the user sees one line with that code and no token."""
    stranger = OidcIssuer("https://token.actions.githubusercontent.com")
    world.authority.publish_issuer(stranger.url, stranger.jwks())
    world.token.write(world.assertion(issuer=stranger))
    with DaemonProcess(world.env):
        result = cli(world.env, "token", "fed")
    assert result.returncode == 5
    line = one_error_line(result)
    assert "AADSTS70021" in line and "No matching federated identity record" in line
    assert "add one with the token's issuer, subject and audience api://AzureADTokenExchange" in line
    assert world.authority.requests[0].error == "invalid_request"


def test_a_forged_assertion_fails_the_signature_check(world: World) -> None:
    """If the file holds a token naming the trusted issuer and subject but signed with another key, then the
    authority refuses it (AADSTS700027): the signature is checked against the issuer's JWKS."""
    forger = OidcIssuer("https://forger.example")
    world.token.write(forger.token(SUBJECT, issuer=ISSUER))
    sensitive(world.token.path.read_text())
    with DaemonProcess(world.env):
        result = cli(world.env, "token", "fed")
    assert result.returncode == 5
    assert "AADSTS700027" in one_error_line(result)


def test_rotation_of_the_token_file_between_refreshes_is_picked_up(world: World) -> None:
    """If the kubelet rotates the token file between two exchanges, then the second exchange presents the new
    assertion (the file is read again, never cached)."""
    first, second = world.assertion(), world.assertion()
    world.token.write(first)
    with DaemonProcess(world.env) as daemon:
        token_of(world.env, "fed")
        world.token.write(second)
        assert client.invalidate("fed", socket_path=daemon.socket_path) == 1
        token_of(world.env, "fed")
    presented = [request.digests["client_assertion"] for request in world.authority.requests]
    assert presented == [digest(first), digest(second)]


def test_an_empty_token_file_is_one_line_naming_the_file_and_no_request(world: World) -> None:
    """If the token file is empty, then `aadhelper token` fails with one line naming the file (exit 7: retried with
    backoff), and the authority is never asked."""
    world.token.write("")
    with DaemonProcess(world.env):
        result = cli(world.env, "token", "fed")
    assert result.returncode == 7
    line = one_error_line(result)
    assert f"the federated token file {world.token.path} is empty" in line
    assert world.authority.count() == 0


def test_a_federated_token_that_is_not_a_jwt_is_one_line_and_no_request(world: World) -> None:
    """If the token file holds something that is not a JWT, then the user sees one line saying so, naming the
    file and not showing its content, and the authority is never asked."""
    junk = "not-a-jwt-" + "x" * 40
    sensitive(junk)
    world.token.write(junk)
    with DaemonProcess(world.env):
        result = cli(world.env, "token", "fed")
    assert result.returncode == 7
    assert "is not a JWT" in one_error_line(result)
    assert world.authority.count() == 0


def test_a_failing_token_command_is_one_line_with_its_stderr(world: World, ca_pem_file: Path,
                                                             tmp_path: Path) -> None:
    """If a federated profile's token command exits non-zero, then the user sees one line naming the command, its
    exit status and the last words of its stderr, and the authority is never asked."""
    script = tmp_path / "oidc-token"
    script.write_text("#!/bin/sh\necho 'first line' >&2\necho 'error: id-token permission missing' >&2\nexit 3\n")
    script.chmod(0o700)
    cli(world.env, "profile", "add", "ci", "--tenant", TENANT, "--client-id", APP, "--scope", GRAPH_SCOPE,
        "--authority", world.authority.url, "--ca-bundle", str(ca_pem_file), "--credential", "federated",
        "--token-command", f"{script} --audience api://AzureADTokenExchange", check=True)
    with DaemonProcess(world.env):
        result = cli(world.env, "token", "ci")
    assert result.returncode == 7
    line = one_error_line(result)
    assert f"the federated token command '{script} --audience api://AzureADTokenExchange' exited with status 3" in line
    assert "it said: first line error: id-token permission missing" in line
    assert world.authority.count() == 0


def test_a_token_command_gets_a_token_and_runs_without_a_shell(world: World, ca_pem_file: Path,
                                                              tmp_path: Path) -> None:
    """If the token command prints a trusted assertion, then the profile gets a token with it; its arguments reach
    it as given (no shell: `$HOME` and `;` are not interpreted)."""
    assertion = world.assertion()
    (tmp_path / "assertion").write_text(assertion)
    script = tmp_path / "print-token.py"
    script.write_text("import pathlib, sys\n"
                      "assert sys.argv[2:] == ['$HOME', ';', 'x y'], sys.argv\n"
                      "sys.stdout.write(pathlib.Path(sys.argv[1]).read_text() + '\\n')\n")
    cli(world.env, "profile", "add", "ci", "--tenant", TENANT, "--client-id", APP, "--scope", GRAPH_SCOPE,
        "--authority", world.authority.url, "--ca-bundle", str(ca_pem_file), "--credential", "federated",
        "--token-command", f"{sys.executable} {script} {tmp_path / 'assertion'} '$HOME' ';' 'x y'", check=True)
    with DaemonProcess(world.env):
        token = token_of(world.env, "ci")
    assert world.authority.validate(token)["appid"] == APP
    assert world.authority.requests[-1].digests["client_assertion"] == digest(assertion)


def test_an_expired_federated_token_is_refused_with_aadsts700024(world: World) -> None:
    """If the file holds a trusted assertion whose time is up, then the authority refuses it with AADSTS700024 and
    the user sees one line with that code and who should renew the token."""
    expired = world.issuer.token(SUBJECT, now=time.time() - 7200, lifetime=3600)
    sensitive(expired)
    world.token.write(expired)
    with DaemonProcess(world.env):
        result = cli(world.env, "token", "fed")
    assert result.returncode == 5
    line = one_error_line(result)
    assert "the authority refused the federated token" in line and "AADSTS700024" in line
    assert "its issuer (the kubelet, the token command) should renew it" in line


def test_the_default_token_file_is_azure_federated_token_file_of_the_daemon(world: World, ca_pem_file: Path) -> None:
    """If a federated profile names no token file, then the daemon uses AZURE_FEDERATED_TOKEN_FILE of its start
    environment (kept through its clean start), as azure-identity's WorkloadIdentityCredential does."""
    cli(world.env, "profile", "add", "wi", "--tenant", TENANT, "--client-id", APP, "--scope", GRAPH_SCOPE,
        "--authority", world.authority.url, "--ca-bundle", str(ca_pem_file), "--credential", "federated",
        check=True)
    assert "token_file =" not in Path(world.env["AADHELPER_CONFIG"]).read_text().split("[profiles.wi]")[1]
    env = dict(world.env, AZURE_FEDERATED_TOKEN_FILE=str(world.token.path))
    with DaemonProcess(env):
        token = token_of(world.env, "wi")
    assert world.authority.validate(token)["appid"] == APP


def test_status_shows_the_token_files_state_and_a_broken_one_as_an_error(world: World) -> None:
    """If status is asked, then a federated profile shows its token file, when it was written and whose token it
    holds until when (never the token); once the file is empty, status says so and exits 7."""
    assertion = world.token.path.read_text()
    with DaemonProcess(world.env):
        status = cli(world.env, "status")
        assert status.returncode == 0, status.stderr
        assert assertion not in status.stdout
        line = next(line for line in status.stdout.splitlines() if "token file" in line)
        assert line.startswith(f"  token file {world.token.path} (written ")
        assert f"issuer {ISSUER}, subject {SUBJECT}; valid " in line
        world.token.write("")
        broken = cli(world.env, "status")
    assert broken.returncode == 7
    assert f"  error: the federated token file {world.token.path} is empty" in broken.stdout
    assert world.authority.count() == 0


def test_a_token_command_sees_github_actions_request_variables_of_the_daemons_start(
        world: World, ca_pem_file: Path, tmp_path: Path) -> None:
    """If the daemon starts with GitHub Actions' ACTIONS_ID_TOKEN_REQUEST_URL/TOKEN (a job step autostarting it),
    then its token command sees them (they survive the clean start), as a GitHub OIDC fetch needs."""
    assertion = world.assertion()
    (tmp_path / "assertion").write_text(assertion)
    script = tmp_path / "github-oidc.py"
    script.write_text("import os, pathlib, sys\n"
                      "if os.environ.get('ACTIONS_ID_TOKEN_REQUEST_URL') != 'https://pipelines.example/idtoken?x=1'"
                      " or os.environ.get('ACTIONS_ID_TOKEN_REQUEST_TOKEN') != 'request-token':\n"
                      "    sys.exit('the request variables are missing')\n"
                      "sys.stdout.write(pathlib.Path(sys.argv[1]).read_text())\n")
    cli(world.env, "profile", "add", "gh", "--tenant", TENANT, "--client-id", APP, "--scope", GRAPH_SCOPE,
        "--authority", world.authority.url, "--ca-bundle", str(ca_pem_file), "--credential", "federated",
        "--token-command", f"{sys.executable} {script} {tmp_path / 'assertion'}", check=True)
    env = dict(world.env, ACTIONS_ID_TOKEN_REQUEST_URL="https://pipelines.example/idtoken?x=1",
               ACTIONS_ID_TOKEN_REQUEST_TOKEN="request-token")
    with DaemonProcess(env):
        token = token_of(world.env, "gh")
    assert world.authority.validate(token)["appid"] == APP
