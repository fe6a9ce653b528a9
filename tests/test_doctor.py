"""``aadhelper doctor`` against real components: the installed CLI in a temporary home, the simulated authority over
HTTPS, a real daemon, keyring backends, real git and systemd's tools; each failure injected on its own. Every test
asserts the exit status, the verdict of the check concerned, and that no secret value is printed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trustme

from aadhelper import paths
from aadhelper.config import Profile
from aadhelper.doctor import Check, Finding, run_checks
from aadhelper.doctor.git import git_url_matches, is_aadhelper
from aadhelper.doctor.secrets import CREDENTIAL_CHECKS, check_credential
from aadhelper.proxy import redact
from aadhelper.testing import SimulatedAuthority
from aadhelper.testing.certificates import make_client_certificate
from aadhelper.testing.federation import OidcIssuer
from aadhelper.testing.keyring_control import lock_keyring, unlock_keyring
from aadhelper.testing.managed_identity import SimulatedManagedIdentity
from aadhelper.testing.pytest_plugin import APP_ID, APP_PROFILE, GRAPH_SCOPE, PUBLIC_APP_ID, TENANT, Home, Tls
from tests.harness import DaemonProcess

Findings = list[dict[str, Any]]


def doctor(env: dict[str, str], *args: str, secrets: tuple[str, ...] = ()) -> tuple[int, Findings]:
    """Run ``aadhelper doctor --json ARGS`` and its text form; both must agree, end without a traceback and print
    none of ``secrets``."""
    runs = [subprocess.run([*paths.console_script(), "doctor", *extra, *args], env=env, capture_output=True,
                           text=True, timeout=120, check=False) for extra in (("--json",), ())]
    for run in runs:
        assert "Traceback" not in run.stderr, run.stderr
        for secret in secrets:
            assert secret not in run.stdout + run.stderr, "a secret value was printed"
    findings: Findings = json.loads(runs[0].stdout)
    assert runs[0].returncode == runs[1].returncode
    for finding in findings:  # the text form says the same, one line per finding (timings aside)
        where = f" [{finding['profile']}]" if finding["profile"] else ""
        timed = finding["check"] in ("authority", "clock")
        line = f"{finding['status']:<4}  {finding['check']}{where}: {'' if timed else finding['message']}"
        assert line in runs[1].stdout
    return runs[0].returncode, findings


def verdict(findings: Findings, check: str, profile: str | None = None) -> str:
    """The worst status among ``check``'s findings (for ``profile`` when given)."""
    statuses: list[str] = [f["status"] for f in findings if f["check"] == check and profile in (None, f["profile"])]
    assert statuses, f"no {check!r} finding in {findings}"
    return max(statuses, key=("ok", "warn", "fail").index)


def finding(findings: Findings, check: str) -> dict[str, Any]:
    return next(f for f in findings if f["check"] == check and f["status"] != "ok") if verdict(
        findings, check) != "ok" else next(f for f in findings if f["check"] == check)


def add_profile(home: Home, authority: str, *extra: str, name: str = APP_PROFILE, client_id: str = APP_ID) -> None:
    home.aadhelper("profile", "add", name, "--tenant", TENANT, "--client-id", client_id, "--scope", GRAPH_SCOPE,
                   "--authority", authority, *extra)


@pytest.fixture
def home(aad_home: Home) -> Home:
    """``aad_home`` where clients may autostart a daemon (so no daemon running is not a warning), and git reads only
    the home's own configuration."""
    aad_home.env.pop("AADHELPER_NO_AUTOSTART", None)
    aad_home.env.update(GIT_CONFIG_NOSYSTEM="1")
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy"):
        aad_home.env.pop(name, None)
    return aad_home


@pytest.fixture
def configured(home: Home, aad_authority: SimulatedAuthority, aad_tls: Tls, aad_app_secret: str) -> Home:
    """``home`` with the confidential profile ``app`` against the simulated authority, its secret stored."""
    add_profile(home, aad_authority.url, "--ca-bundle", str(aad_tls.ca_pem))
    home.aadhelper("secret", "set", APP_PROFILE, input=aad_app_secret + "\n")
    return home


# -- config ------------------------------------------------------------------------------------------------------

def test_no_config_file_fails(home: Home) -> None:
    """If there is no config file, then doctor fails the config check, names the path and says how to add a profile,
    and exits 1."""
    code, findings = doctor(home.env)
    assert code == 1
    config = finding(findings, "config")
    assert config["status"] == "fail" and home.env["AADHELPER_CONFIG"] in config["message"]
    assert "aadhelper profile add" in config["fix"]


def test_invalid_config_fails_with_the_config_error_line(home: Home) -> None:
    """If the config file is invalid, then the config check fails with ConfigError's line (file, profile, key)."""
    path = Path(home.env["AADHELPER_CONFIG"])
    path.parent.mkdir(parents=True)
    path.write_text('[profiles.app]\ntenant = "t"\nclient_id = "c"\nscopes = ["s"]\nmin_valid = "soon"\n')
    code, findings = doctor(home.env)
    assert code == 1
    config = finding(findings, "config")
    assert config["status"] == "fail"
    assert str(path) in config["message"] and "profile 'app'" in config["message"] and "min_valid" in config["message"]


def test_a_healthy_setup_is_all_ok(configured: Home, aad_app_secret: str, aad_authority: SimulatedAuthority) -> None:
    """If the profile is configured, its secret stored and the authority reachable, then every check is ok, doctor
    exits 0, and the authority saw one discovery request and no credentials."""
    code, findings = doctor(configured.env, secrets=(aad_app_secret,))
    assert code == 0, findings
    assert {f["status"] for f in findings} == {"ok"}, [f for f in findings if f["status"] != "ok"]
    assert {"config", "daemon", "keyring", "credential", "authority", "clock", "proxy", "systemd"} <= {
        f["check"] for f in findings}
    assert finding(findings, "daemon")["pid"] is None
    assert aad_authority.count("openid-configuration") == 2 and aad_authority.count("token") == 0


def test_unknown_profile_named(configured: Home) -> None:
    """If doctor is asked about a profile that is not configured, then the config check fails naming it."""
    code, findings = doctor(configured.env, "nope")
    assert code == 1
    assert "'nope' is not configured" in finding(findings, "config")["message"]
    assert not [f for f in findings if f["check"] == "credential"]


# -- the daemon --------------------------------------------------------------------------------------------------

def test_running_daemon_shows_pid_and_environment_differences(configured: Home, aad_app_secret: str) -> None:
    """If a daemon runs that was started with another AZURE_AUTHORITY_HOST (and a proxy variable with a password),
    then doctor shows its pid and config path, warns about the AZURE_AUTHORITY_HOST difference, and prints the proxy
    only redacted; with the same environment the environment check is ok."""
    proxy_password = "proxy-pw-" + aad_app_secret[-8:]
    daemon_env = dict(configured.env, AZURE_AUTHORITY_HOST="login.microsoftonline.us",
                      HTTPS_PROXY=f"http://me:{proxy_password}@proxy.invalid:3128")
    with DaemonProcess(daemon_env) as daemon:
        code, findings = doctor(configured.env, secrets=(aad_app_secret, proxy_password))
        assert code == 0
        shown = finding(findings, "daemon")
        assert shown["status"] == "ok" and shown["pid"] == daemon.pid and str(daemon.pid) in shown["message"]
        assert shown["config"] == configured.env["AADHELPER_CONFIG"]
        env = finding(findings, "daemon-env")
        assert env["status"] == "warn"
        assert "AZURE_AUTHORITY_HOST (daemon: 'login.microsoftonline.us', here: unset)" in env["message"]
        assert env["differences"]["HTTPS_PROXY"]["daemon"] == "http://***@proxy.invalid:3128"

        code, findings = doctor(daemon_env, secrets=(aad_app_secret, proxy_password))
        assert verdict(findings, "daemon-env") == "ok"


def test_what_the_running_daemon_failed_at_is_shown(configured: Home, aad_authority: SimulatedAuthority,
                                                   aad_app_secret: str) -> None:
    """If the running daemon's last token request for a profile failed (the app's secret was rotated), then doctor
    fails the tokens check with the authority's error and the fix, though the secret is stored."""
    aad_authority.set_client_secret(APP_ID, "rotated-" + aad_app_secret)
    with DaemonProcess(configured.env):
        assert configured.aadhelper("token", APP_PROFILE, check=False).returncode == 5
        code, findings = doctor(configured.env, secrets=(aad_app_secret,))
    assert code == 1
    tokens = finding(findings, "tokens")
    assert tokens["status"] == "fail" and tokens["profile"] == APP_PROFILE and "AADSTS7000215" in tokens["message"]
    assert f"aadhelper secret set {APP_PROFILE}" in tokens["fix"]
    assert verdict(findings, "credential") == "ok"


def test_no_daemon_and_no_autostart_warns(configured: Home) -> None:
    """If no daemon runs and autostart is off, then the daemon check warns naming the socket (not a failure)."""
    env = dict(configured.env, AADHELPER_NO_AUTOSTART="1")
    code, findings = doctor(env)
    daemon = finding(findings, "daemon")
    assert code == 0 and daemon["status"] == "warn" and env["AADHELPER_SOCKET"] in daemon["message"]


# -- keyring and credentials ---------------------------------------------------------------------------------------

def test_unreachable_keyring_fails(configured: Home, tmp_path: Path) -> None:
    """If no keyring backend is reachable (no Secret Service on the session bus, none configured), then the keyring
    check fails with the fix, and each profile's credential check warns that it cannot tell."""
    env = {k: v for k, v in configured.env.items() if k not in ("PYTHON_KEYRING_BACKEND", "AADHELPER_TESTING_KEYRING")}
    env["DBUS_SESSION_BUS_ADDRESS"] = f"unix:path={tmp_path}/no-such-bus"
    code, findings = doctor(env)
    assert code == 1
    keyring = finding(findings, "keyring")
    assert keyring["status"] == "fail" and "no usable OS keyring" in keyring["message"]
    assert "Secret Service" in keyring["fix"]
    assert verdict(findings, "credential", APP_PROFILE) == "warn"


@pytest.mark.requires("secret-service")
def test_locked_keyring_fails(home: Home, aad_authority: SimulatedAuthority, aad_tls: Tls) -> None:
    """If the real Secret Service's collection is locked, then the keyring check fails saying so; unlocked, it is ok
    and names the Secret Service backend."""
    add_profile(home, aad_authority.url, "--ca-bundle", str(aad_tls.ca_pem))
    env = {k: v for k, v in home.env.items() if k not in ("PYTHON_KEYRING_BACKEND", "AADHELPER_TESTING_KEYRING")}
    lock_keyring()
    try:
        code, findings = doctor(env)
    finally:
        unlock_keyring()
    assert code == 1
    keyring = finding(findings, "keyring")
    assert keyring["status"] == "fail" and "locked" in keyring["message"] and "unlock" in keyring["fix"]
    _, findings = doctor(env)
    keyring = finding(findings, "keyring")
    assert keyring["status"] == "ok" and keyring["backend"] == "keyring.backends.SecretService.Keyring"


def test_memory_secret_store_warns(configured: Home) -> None:
    """If AADHELPER_SECRET_STORE=memory, then the keyring check warns that secrets are lost with the process and the
    credential check warns that it cannot tell (rather than reporting a stored secret as missing)."""
    code, findings = doctor(dict(configured.env, AADHELPER_SECRET_STORE="memory"))
    assert verdict(findings, "keyring") == "warn" and "AADHELPER_SECRET_STORE" in finding(findings, "keyring")["fix"]
    assert verdict(findings, "credential", APP_PROFILE) == "warn" and code == 0


def test_profile_without_its_secret_fails(home: Home, aad_authority: SimulatedAuthority, aad_tls: Tls) -> None:
    """If a client-secret profile has no secret stored, then its credential check fails with `aadhelper secret set`."""
    add_profile(home, aad_authority.url, "--ca-bundle", str(aad_tls.ca_pem))
    code, findings = doctor(home.env)
    assert code == 1
    credential = finding(findings, "credential")
    assert credential["status"] == "fail" and credential["profile"] == APP_PROFILE
    assert credential["fix"] == f"store it with `aadhelper secret set {APP_PROFILE}`"


def test_user_profile_not_signed_in_fails(home: Home, aad_authority: SimulatedAuthority, aad_tls: Tls) -> None:
    """If a user profile has no sign-in stored, then its credential check fails with `aadhelper login`."""
    add_profile(home, aad_authority.url, "--ca-bundle", str(aad_tls.ca_pem), "--user", name="me",
                client_id=PUBLIC_APP_ID)
    code, findings = doctor(home.env)
    assert code == 1
    assert finding(findings, "credential")["fix"] == "sign in with `aadhelper login me`"


def test_a_signed_in_user_profile_is_ok(home: Home, aad_signed_in: str) -> None:
    """If a user profile is signed in, then its credential check is ok (and the refresh token is not printed)."""
    code, findings = doctor(home.env, aad_signed_in)
    assert verdict(findings, "credential", aad_signed_in) == "ok"
    assert code == 0


def test_credential_kinds_without_a_check_warn() -> None:
    """If a profile uses a credential kind doctor has no check for (a newer kind), then its check warns instead of
    failing or raising; the kinds the configuration knows today each have a check."""
    profile = Profile(name="ci", tenant=TENANT, client_id=APP_ID, scopes=(GRAPH_SCOPE,),
                      authority="https://login.microsoftonline.com", credential="workload_identity")
    (result,) = check_credential(profile, None)
    assert result.status == "warn" and "'workload_identity'" in result.message
    from aadhelper.config import CREDENTIALS

    assert set(CREDENTIALS) <= set(CREDENTIAL_CHECKS)


# -- certificate, federated and managed-identity credentials ---------------------------------------------------

def add_kind(home: Home, authority: SimulatedAuthority, tls: Tls, name: str, *extra: str) -> None:
    add_profile(home, authority.url, "--ca-bundle", str(tls.ca_pem), *extra, name=name)


def write_private(path: Path, data: bytes | str, mode: int = 0o600) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chmod(path, mode)
    return path


def test_certificate_in_the_keyring(home: Home, aad_authority: SimulatedAuthority, aad_tls: Tls,
                                    tmp_path: Path) -> None:
    """If a certificate profile has nothing in the keyring, then its credential check fails with `secret set
    --certificate`; once stored, it is ok with the thumbprint and expiry, and the key is never printed."""
    material = make_client_certificate(days=365)
    add_kind(home, aad_authority, aad_tls, "cert", "--credential", "certificate")
    code, findings = doctor(home.env, "cert")
    assert code == 1 and verdict(findings, "credential") == "fail"
    assert finding(findings, "credential")["fix"] == "store it with `aadhelper secret set cert --certificate FILE`"
    pem = write_private(tmp_path / "cert.pem", material.pem())
    home.aadhelper("secret", "set", "cert", "--certificate", str(pem))
    key = material.key_pem().decode().splitlines()[1]
    code, findings = doctor(home.env, "cert", secrets=(key,))
    credential = finding(findings, "credential")
    assert code == 0 and credential["status"] == "ok", credential
    assert credential["certificate"]["sha256_thumbprint"] in credential["message"]
    assert "in the keyring" in credential["message"]


def test_certificate_file_open_to_others_fails(home: Home, aad_authority: SimulatedAuthority, aad_tls: Tls,
                                               tmp_path: Path) -> None:
    """If a profile's certificate_path is readable by its group, then the credential check fails naming the file and
    the chmod that fixes it."""
    path = write_private(tmp_path / "cert.pem", make_client_certificate().pem())
    add_kind(home, aad_authority, aad_tls, "cert", "--credential", "certificate", "--certificate-path", str(path))
    assert verdict(doctor(home.env, "cert")[1], "credential") == "ok"
    os.chmod(path, 0o640)
    code, findings = doctor(home.env, "cert")
    credential = finding(findings, "credential")
    assert code == 1 and credential["status"] == "fail" and str(path) in credential["message"]
    assert credential["fix"] == f"run `chmod 600 {path}`"


def test_encrypted_certificate_file_needs_its_stored_password(home: Home, aad_authority: SimulatedAuthority,
                                                              aad_tls: Tls, tmp_path: Path) -> None:
    """If a profile's certificate file is encrypted and no password is stored for it, then the credential check
    fails with `secret set --certificate-password`; once the password is stored, it is ok (and not printed)."""
    password = "pfx-pass-" + os.urandom(6).hex()
    path = write_private(tmp_path / "cert.pem", make_client_certificate().pem(password.encode()))
    add_kind(home, aad_authority, aad_tls, "cert", "--credential", "certificate", "--certificate-path", str(path))
    code, findings = doctor(home.env, "cert")
    credential = finding(findings, "credential")
    assert code == 1 and credential["status"] == "fail" and "no password for it is stored" in credential["message"]
    assert credential["fix"] == "store it with `aadhelper secret set cert --certificate-password`"
    home.aadhelper("secret", "set", "cert", "--certificate-password", input=password + "\n")
    code, findings = doctor(home.env, "cert", secrets=(password,))
    assert code == 0 and verdict(findings, "credential") == "ok"


@pytest.mark.parametrize("days, status, said", [(10, "warn", "expires in 10 days"), (-1, "fail", "expired on")])
def test_certificate_near_or_past_its_expiry(home: Home, aad_authority: SimulatedAuthority, aad_tls: Tls,
                                             tmp_path: Path, days: float, status: str, said: str) -> None:
    """If a profile's certificate expires within 30 days, then its credential check warns (exit 0); if it has
    expired, then the check fails (exit 1); both say how to renew it."""
    path = write_private(tmp_path / "cert.pem", make_client_certificate().pem())
    add_kind(home, aad_authority, aad_tls, "cert", "--credential", "certificate", "--certificate-path", str(path))
    write_private(path, make_client_certificate(days=days + 0.01, not_before=time.time() - 400 * 86400).pem())
    code, findings = doctor(home.env, "cert")
    credential = finding(findings, "credential")
    assert credential["status"] == status and said in credential["message"], credential
    assert code == (1 if status == "fail" else 0)
    assert credential["fix"] == f"deploy a renewed certificate to {path} and upload it to the app registration"


@pytest.fixture
def issuer() -> OidcIssuer:
    return OidcIssuer("https://token.actions.githubusercontent.com")


def add_federated(home: Home, authority: SimulatedAuthority, tls: Tls, *source: str) -> None:
    add_kind(home, authority, tls, "fed", "--credential", "federated", *source)


def test_federated_token_file_that_is_good(home: Home, aad_authority: SimulatedAuthority, aad_tls: Tls,
                                           tmp_path: Path, issuer: OidcIssuer) -> None:
    """If a federated profile's token file holds a current JWT for Entra's audience, then its credential check is ok
    and names the token's issuer and subject, never the token."""
    token = issuer.token("repo:contoso/app:ref:refs/heads/main")
    path = write_private(tmp_path / "token", token, 0o644)
    add_federated(home, aad_authority, aad_tls, "--token-file", str(path))
    code, findings = doctor(home.env, "fed", secrets=(token, token.split(".")[2]))
    credential = finding(findings, "credential")
    assert code == 0 and credential["status"] == "ok", credential
    assert issuer.url in credential["message"] and "repo:contoso/app" in credential["message"]


@pytest.mark.parametrize("content, status, said", [
    (None, "fail", "No such file"),
    ("", "fail", "is empty"),
    ("not a token", "fail", "is not a JWT"),
    ("expired", "fail", "that expired at"),
    ("expiring", "warn", "that expires at"),
    ("audience", "warn", "whose audience is not api://AzureADTokenExchange"),
])
def test_federated_token_file_faults(home: Home, aad_authority: SimulatedAuthority, aad_tls: Tls, tmp_path: Path,
                                     issuer: OidcIssuer, content: str | None, status: str, said: str) -> None:
    """If a federated profile's token file is missing, empty, not a JWT or expired, then its credential check fails
    (exit 1); if the token expires within minutes or is for another audience, then it warns (exit 0)."""
    path = tmp_path / "token"
    add_federated(home, aad_authority, aad_tls, "--token-file", str(path))
    tokens = {"expired": issuer.token("ci", now=time.time() - 7200),
              "expiring": issuer.token("ci", lifetime=60),
              "audience": issuer.token("ci", audience="api://something-else")}
    if content is not None:
        write_private(path, tokens.get(content, content))
    code, findings = doctor(home.env, "fed", secrets=tuple(tokens.values()))
    credential = finding(findings, "credential")
    assert credential["status"] == status and said in credential["message"], credential
    assert str(path) in credential["message"] and code == (1 if status == "fail" else 0)


def test_federated_token_command_is_resolved_not_run(home: Home, aad_authority: SimulatedAuthority, aad_tls: Tls,
                                                     tmp_path: Path) -> None:
    """If a federated profile's token_command names no program on PATH or a file that is not executable, then its
    credential check fails saying which; an executable one is ok, and doctor never runs it."""
    ran = tmp_path / "ran"
    script = write_private(tmp_path / "get-token", f"#!/bin/sh\ntouch {ran}\necho x.y.z\n", 0o600)
    add_federated(home, aad_authority, aad_tls, "--token-command", f"{script} --audience api://AzureADTokenExchange")
    code, findings = doctor(home.env, "fed")
    credential = finding(findings, "credential")
    assert code == 1 and "is not an executable file" in credential["message"] and str(script) in credential["message"]
    os.chmod(script, 0o700)
    code, findings = doctor(home.env, "fed")
    assert code == 0 and verdict(findings, "credential") == "ok"
    home.aadhelper("profile", "remove", "fed")
    add_federated(home, aad_authority, aad_tls, "--token-command", "no-such-oidc-helper-xyz")
    code, findings = doctor(home.env, "fed")
    credential = finding(findings, "credential")
    assert code == 1 and "'no-such-oidc-helper-xyz' is not found on PATH" in credential["message"]
    assert not ran.exists()


def add_identity(home: Home, *extra: str) -> None:
    home.aadhelper("profile", "add", "vm", "--credential", "managed_identity", "--scope",
                   "https://management.azure.com/.default", *extra)


def test_managed_identity_endpoint_that_nothing_serves_fails(home: Home) -> None:
    """If a managed-identity profile's endpoint accepts no connection, then its credential check fails saying there
    is no managed identity here."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    add_identity(home, "--source", "imds", "--endpoint", f"http://127.0.0.1:{port}/metadata/identity/oauth2/token")
    code, findings = doctor(home.env, "vm")
    credential = finding(findings, "credential")
    assert code == 1 and credential["status"] == "fail"
    assert "source imds (set in the profile)" in credential["message"] and "connection refused" in \
        credential["message"]
    assert "no managed identity here" in credential["fix"]


def test_managed_identity_detected_from_this_shell_warns(home: Home, aad_authority: SimulatedAuthority) -> None:
    """If a managed-identity profile's source is detected from this shell's IDENTITY_ENDPOINT/IDENTITY_HEADER, then
    its credential check says so and warns that the daemon detects from its own environment; the endpoint is asked
    for no token and its secret header is not printed. With the header missing, it fails."""
    with SimulatedManagedIdentity(aad_authority, source="app_service", tenant=TENANT) as endpoint:
        env = dict(home.env, IDENTITY_ENDPOINT=endpoint.endpoint, IDENTITY_HEADER=endpoint.header)
        add_identity(home)
        code, findings = doctor(env, "vm", secrets=(endpoint.header,))
        credential = finding(findings, "credential")
        assert code == 0 and credential["status"] == "warn", [f for f in findings if f["status"] != "ok"]
        assert "source app_service (detected from this shell's environment)" in credential["message"]
        assert "the daemon detects the source from its own environment" in credential["message"]
        assert [(r.resource, r.status) for r in endpoint.requests] == [(None, 401)] * 2  # --json, then text
        home.aadhelper("profile", "remove", "vm")
        add_identity(home, "--source", "app_service")
        code, findings = doctor(dict(env, IDENTITY_HEADER=""), "vm")
        credential = finding(findings, "credential")
        assert code == 1 and "IDENTITY_HEADER (the endpoint's secret) is not set" in credential["message"]


def test_managed_identity_set_in_the_profile_and_answering_is_ok(home: Home,
                                                                 aad_authority: SimulatedAuthority) -> None:
    """If a managed-identity profile names its source and its endpoint accepts connections, then its credential
    check is ok."""
    with SimulatedManagedIdentity(aad_authority, source="imds", tenant=TENANT) as endpoint:
        add_identity(home, "--source", "imds", "--endpoint", endpoint.endpoint)
        code, findings = doctor(home.env, "vm")
        assert code == 0 and verdict(findings, "credential") == "ok"
        assert all(request.resource is None for request in endpoint.requests)


# -- the authority, TLS and the clock ------------------------------------------------------------------------------

def test_unreachable_authority_fails(home: Home) -> None:
    """If the authority's port is closed, then the authority check fails saying the connection was refused."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    add_profile(home, f"https://127.0.0.1:{port}")
    code, findings = doctor(home.env)
    assert code == 1
    authority = finding(findings, "authority")
    assert authority["status"] == "fail" and "connection refused" in authority["message"]
    assert f"127.0.0.1:{port}" in authority["message"]


def test_authority_signed_by_another_ca_fails(home: Home, aad_authority: SimulatedAuthority, tmp_path: Path) -> None:
    """If the profile's CA bundle is not the CA that signed the authority's certificate, then the authority check
    fails saying the certificate does not verify and naming ca_bundle in the fix."""
    wrong = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(wrong))
    add_profile(home, aad_authority.url, "--ca-bundle", str(wrong))
    code, findings = doctor(home.env)
    assert code == 1
    authority = finding(findings, "authority")
    assert authority["status"] == "fail" and "does not verify" in authority["message"]
    assert str(wrong) in authority["message"] and "ca_bundle" in authority["fix"]


def test_unknown_tenant_fails_with_the_authoritys_error(home: Home, aad_authority: SimulatedAuthority,
                                                        aad_tls: Tls) -> None:
    """If the authority does not know the profile's tenant, then the authority check fails with its error code
    (AADSTS90002) and the fix that names the tenant and the cloud."""
    home.aadhelper("profile", "add", "typo", "--tenant", "contoso.onmicrosoft.cm", "--client-id", APP_ID, "--scope",
                   GRAPH_SCOPE, "--authority", aad_authority.url, "--ca-bundle", str(aad_tls.ca_pem))
    code, findings = doctor(home.env)
    authority = finding(findings, "authority")
    assert code == 1 and authority["status"] == "fail" and "AADSTS90002" in authority["message"]
    assert "tenant" in authority["fix"] and "cloud" in authority["fix"]


@pytest.mark.parametrize(("skew", "expected", "code"), [(0, "ok", 0), (-150, "warn", 0), (900, "fail", 1)])
def test_clock_skew_against_the_authority(configured: Home, aad_authority: SimulatedAuthority, skew: float,
                                          expected: str, code: int) -> None:
    """If the authority's Date header is off from this machine's clock, then the clock check is ok within a minute,
    warns beyond it and fails beyond the 5 minutes Entra tolerates (and says which way the clock is off)."""
    aad_authority.date_skew = skew
    exit_code, findings = doctor(configured.env)
    clock = finding(findings, "clock")
    assert clock["status"] == expected and exit_code == code
    if skew:
        assert ("ahead of" if skew < 0 else "behind") in clock["message"]
        assert abs(clock["skew_seconds"] + skew) < 30


# -- proxy, git, systemd -------------------------------------------------------------------------------------------

def test_proxy_variable_in_the_shell_is_shown_redacted(configured: Home, aad_app_secret: str) -> None:
    """If this shell has HTTPS_PROXY with a password while the config names no proxy, then the proxy check warns
    that the daemon connects directly, shows the variable without its password, and the authority is still ok."""
    password = "pw-" + aad_app_secret[-10:]
    env = dict(configured.env, HTTPS_PROXY=f"http://alice:{password}@proxy.invalid:3128", NO_PROXY="localhost")
    code, findings = doctor(env, secrets=(aad_app_secret, password))
    proxy = finding(findings, "proxy")
    assert proxy["status"] == "warn" and "HTTPS_PROXY=http://***@proxy.invalid:3128" in proxy["message"]
    assert "proxy_from_environment" in proxy["fix"]
    assert verdict(findings, "authority") == "ok" and code == 0


def test_redact_hides_a_password_without_a_scheme() -> None:
    """If a proxy variable holds user:password@host:port without a scheme, then the redacted form has no password."""
    assert redact("alice:s3cret@proxy:3128") == "***@proxy:3128"
    assert redact("http://alice:s3cret@proxy:3128/") == "http://***@proxy:3128/"


ADO = "https://dev.azure.com"
SETUPS = {
    "none": ([], "fail", "asks no aadhelper helper"),
    "store first": ([("credential.helper", "store"), (f"credential.{ADO}.helper", "aadhelper"),
                     (f"credential.{ADO}.useHttpPath", "true")], "fail", "store before aadhelper"),
    "no reset": ([(f"credential.{ADO}.helper", "aadhelper"), (f"credential.{ADO}.useHttpPath", "true")],
                 "warn", "not reset"),
    "store after": ([(f"credential.{ADO}.helper", ""), (f"credential.{ADO}.helper", "aadhelper"),
                     (f"credential.{ADO}.useHttpPath", "true"), ("credential.helper", "cache")], "warn",
                    "cache also receive"),
    "no path": ([(f"credential.{ADO}.helper", ""), (f"credential.{ADO}.helper", "aadhelper")], "fail",
                "no path"),
    "as git setup writes": ([("credential.helper", "store"), (f"credential.{ADO}.useHttpPath", "true"),
                             (f"credential.{ADO}.helper", ""), (f"credential.{ADO}.helper", "aadhelper")], "ok",
                            "aadhelper alone"),
    "another host": ([("credential.https://example.com.helper", ""),
                      ("credential.https://example.com.helper", "aadhelper")], "fail", "asks no aadhelper helper"),
}


@pytest.mark.requires("git")
@pytest.mark.parametrize("setup", SETUPS)
def test_git_helper_configuration(configured: Home, setup: str) -> None:
    """If the mapped URL's helper list in ~/.gitconfig lacks aadhelper, has a helper before it, lacks the reset or
    useHttpPath, then the git check fails or warns saying which; set up as `profile add` advises, it is ok."""
    configured.aadhelper("profile", "git-url", "add", APP_PROFILE, f"{ADO}/contoso/")
    entries, expected, words = SETUPS[setup]
    for key, value in entries:
        subprocess.run(["git", "config", "--global", "--add", key, value], env=configured.env, check=True)
    code, findings = doctor(configured.env)
    git = finding(findings, "git")
    assert git["status"] == expected and words in git["message"], git
    assert code == (1 if expected == "fail" else 0)
    if expected != "ok":
        assert "git config --global" in git["fix"]


@pytest.mark.parametrize(("pattern", "url", "matches"), [
    ("https://dev.azure.com", "https://dev.azure.com/contoso/", True),
    ("https://dev.azure.com/contoso", "https://dev.azure.com/contoso/", True),
    ("https://dev.azure.com/cont", "https://dev.azure.com/contoso/", False),
    ("https://*.visualstudio.com", "https://contoso.visualstudio.com/", True),
    ("https://*.visualstudio.com", "https://a.contoso.visualstudio.com/", False),
    ("https://dev.azure.com:443", "https://dev.azure.com/x/", True),
    ("https://dev.azure.com:8443", "https://dev.azure.com/x/", False),
    ("http://dev.azure.com", "https://dev.azure.com/x/", False),
    ("https://me@dev.azure.com", "https://dev.azure.com/x/", False),
])
def test_git_url_patterns_match_as_git_matches_them(pattern: str, url: str, matches: bool) -> None:
    """If a credential.<url>.* key names a URL, then it applies to a remote as git's urlmatch rule says: scheme,
    host with * for one label, port, user, and the path on whole segments."""
    assert git_url_matches(pattern, url) is matches


def test_helper_values_that_run_aadhelper() -> None:
    """If a credential.helper value runs aadhelper (by name, by path, or as a shell snippet), then it counts as ours;
    other helpers do not."""
    ours = ["aadhelper", "aadhelper --verbose", "/opt/venv/bin/git-credential-aadhelper", "!aadhelper git-credential",
            "!/opt/venv/bin/git-credential-aadhelper --verbose"]
    theirs = ["store", "cache --timeout 60", "manager", "!aadhelper token", "/usr/bin/git-credential-store", ""]
    assert all(is_aadhelper(value) for value in ours)
    assert not any(is_aadhelper(value) for value in theirs)


def test_systemd_tools_absent(configured: Home, tmp_path: Path) -> None:
    """If systemctl is not on PATH, then the systemd check is ok and says clients start the daemon themselves."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    env = dict(configured.env, PATH=os.pathsep.join([str(Path(paths.console_script()[0]).parent), str(bin_dir)]))
    code, findings = doctor(env)
    systemd = finding(findings, "systemd")
    assert systemd["status"] == "ok" and "not installed here" in systemd["message"] and code == 0


@pytest.mark.requires("systemctl")
def test_systemd_check_that_cannot_run_warns(configured: Home) -> None:
    """If the systemd check cannot find the unit directory (neither XDG_CONFIG_HOME nor HOME is absolute), then it
    warns saying why, and no traceback is printed."""
    env = {k: v for k, v in configured.env.items() if k != "XDG_CONFIG_HOME"}
    env["HOME"] = "relative-home"
    code, findings = doctor(env)
    systemd = finding(findings, "systemd")
    assert systemd["status"] == "warn" and "HOME" in systemd["message"] and code == 0


@pytest.mark.requires("systemctl")
def test_systemd_units_installed_without_a_user_manager(configured: Home) -> None:
    """If systemd's tools are present and the units are not installed, then the systemd check is ok; once they are
    installed but not running under a user manager (none runs here), it warns with how to enable the socket."""
    _, findings = doctor(configured.env)
    assert verdict(findings, "systemd") == "ok"
    configured.aadhelper("service", "install")
    code, findings = doctor(configured.env)
    systemd = finding(findings, "systemd")
    assert systemd["status"] == "warn" and code == 0
    assert "systemctl --user enable --now aadhelper.socket" in systemd["fix"]


# -- the runner -----------------------------------------------------------------------------------------------------

def test_a_check_that_hangs_or_raises_becomes_one_line() -> None:
    """If a check does not finish within its deadline, then it is reported with its on_timeout verdict and what did
    not answer, while the other checks are reported; if a check raises, then it is a fail line naming the error."""
    release = threading.Event()

    def hang() -> list[Finding]:
        release.wait()
        return []

    def boom() -> list[Finding]:
        raise RuntimeError("surprise")

    try:
        findings = run_checks([
            Check("keyring", hang, 0.05, "the OS keyring"),
            Check("systemd", hang, 0.05, "systemctl", on_timeout="warn"),
            Check("git", boom, 5.0, "git"),
            Check("proxy", lambda: [Finding("proxy", "ok", "fine")], 5.0, "the proxy check"),
        ])
    finally:
        release.set()
    assert [(f.check, f.status) for f in findings] == [("keyring", "fail"), ("systemd", "warn"), ("git", "fail"),
                                                       ("proxy", "ok")]
    assert "the OS keyring did not answer within" in findings[0].message
    assert "RuntimeError: surprise" in findings[2].message
