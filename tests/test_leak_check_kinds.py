"""One leak check over every credential kind of issue 12 and the exec endpoint of issue 13, in one daemon.

A real daemon (with the App Service identity variables in the environment it starts from) serves a certificate
profile (PEM in the keyring), a PFX profile (with its password), a federated profile reading a token file, one
running a token command, and an App Service managed identity; ``aadhelper exec`` serves the certificate profile
to a child. Then every place a secret could end up is searched for every secret: the daemon's log, every CLI's
stderr and stdout, and ``/proc/PID/environ`` and ``cmdline`` of the daemon, its token fetcher, the exec process
and the child. Access tokens may appear only on the stdout of the commands that were asked for them; the exec
endpoint's IDENTITY_HEADER only in the child's environment (by design).
"""

from __future__ import annotations

import json
import os
import secrets
import ssl
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from aadhelper.secret_store import KeyringSecretStore
from aadhelper.testing.authority import SimulatedAuthority
from aadhelper.testing.certificates import CertificateMaterial, make_client_certificate
from aadhelper.testing.directory import GRAPH
from aadhelper.testing.federation import OidcIssuer
from aadhelper.testing.managed_identity import SimulatedManagedIdentity

from .harness import (
    GRAPH_SCOPE,
    TENANT,
    DaemonProcess,
    assert_no_leaks,
    cli,
    running_fetcher,
    sensitive,
    token_of,
)

pytestmark = pytest.mark.requires("secret-service")

CERT_APP = "55555555-0000-0000-0000-000000000001"
PFX_APP = "55555555-0000-0000-0000-000000000002"
FED_APP = "55555555-0000-0000-0000-000000000003"
ISSUER = "https://oidc.leak-check.example/"
SUBJECT = "system:serviceaccount:leak:check"

#: The child under `aadhelper exec`: asks the endpoint once, then reports its token, its environment and the exec
#: process's (its parent's) environ and cmdline, read while both are alive.
CHILD = """
    import json, os, urllib.request
    request = urllib.request.Request(os.environ["IDENTITY_ENDPOINT"] + "?api-version=2019-08-01&resource="
                                     "https://graph.microsoft.com",
                                     headers={"X-IDENTITY-HEADER": os.environ["IDENTITY_HEADER"]})
    with urllib.request.urlopen(request, timeout=30) as reply:
        token = json.loads(reply.read())["access_token"]
    def read(path):
        with open(path, "rb") as file:
            return file.read().decode("utf-8", "replace")
    exec_pid = os.getppid()
    print(json.dumps({"token": token, "header": os.environ["IDENTITY_HEADER"],
                      "child": {"environ": read("/proc/self/environ"), "cmdline": read("/proc/self/cmdline")},
                      "exec": {"environ": read(f"/proc/{exec_pid}/environ"),
                               "cmdline": read(f"/proc/{exec_pid}/cmdline")}}))
"""


def proc_text(pid: int) -> dict[str, str]:
    """``/proc/PID/environ`` and ``cmdline`` as text (as root: the daemon and fetcher are not dumpable)."""
    return {name: Path(f"/proc/{pid}/{name}").read_bytes().decode("utf-8", "replace")
            for name in ("environ", "cmdline")}


@pytest.fixture(scope="module")
def material() -> CertificateMaterial:
    return make_client_certificate(days=365, issued_by_ca=True)


@pytest.fixture
def world(isolated_env: dict[str, str], ca_pem_file: Path, server_ssl_context: ssl.SSLContext,
          secret_service: KeyringSecretStore, material: CertificateMaterial, tmp_path: Path
          ) -> Iterator[tuple[dict[str, str], SimulatedAuthority, SimulatedManagedIdentity, dict[str, list[str]]]]:
    """The authority with an app per kind, an App Service identity endpoint, and the five profiles, their secrets
    stored; yields (env, authority, identity endpoint, the secrets by name)."""
    issuer = OidcIssuer(ISSUER)
    federated_token = issuer.token(SUBJECT)
    password = "pfx-" + secrets.token_urlsafe(12)
    key_lines = [line for line in material.key_pem().decode().splitlines() if not line.startswith("-----")]
    env = {key: value for key, value in isolated_env.items()
           if key not in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IMDS_ENDPOINT", "AZURE_TOKEN_CREDENTIALS")}
    env["AADHELPER_NO_AUTOSTART"] = "1"
    with SimulatedAuthority(ssl_context=server_ssl_context) as authority:
        authority.add_tenant(TENANT)
        for app in (CERT_APP, PFX_APP, FED_APP):
            authority.add_client(app, tenant=TENANT, resources=(GRAPH,))
        authority.add_client_certificate(CERT_APP, material.certificate_pem)
        authority.add_client_certificate(PFX_APP, material.certificate_pem)
        authority.publish_issuer(issuer.url, issuer.jwks())
        authority.add_federated_credential(FED_APP, issuer=issuer.url, subject=SUBJECT)
        with SimulatedManagedIdentity(authority, source="app_service", tenant=TENANT) as app_service:
            found = {"private key PEM": key_lines, "PFX password": [password],
                     "federated token": [federated_token], "App Service IDENTITY_HEADER": [app_service.header]}
            sensitive(*(value for values in found.values() for value in values))
            common = ["--scope", GRAPH_SCOPE, "--authority", authority.url, "--ca-bundle", str(ca_pem_file)]
            pem = tmp_path / "app.pem"
            pem.write_bytes(material.pem())
            pem.chmod(0o600)
            pfx = tmp_path / "app.pfx"
            pfx.write_bytes(material.pfx(password.encode()))
            token_file = tmp_path / "federated-token"
            token_file.write_text(federated_token)
            command = tmp_path / "get-token"
            command.write_text(f"#!/bin/sh\nexec cat {token_file}\n")
            command.chmod(0o700)
            for name, app, extra in (("cert", CERT_APP, []), ("pfx", PFX_APP, []),
                                     ("fed", FED_APP, ["--token-file", str(token_file)]),
                                     ("fedcmd", FED_APP, ["--token-command", str(command)])):
                kind = "certificate" if name in ("cert", "pfx") else "federated"
                cli(env, "profile", "add", name, "--tenant", TENANT, "--client-id", app, *common,
                    "--credential", kind, *extra, check=True)
            cli(env, "profile", "add", "web", "--credential", "managed_identity", "--source", "app_service",
                "--scope", GRAPH_SCOPE, check=True)
            cli(env, "secret", "set", "cert", "--certificate", str(pem), check=True)
            cli(env, "secret", "set", "pfx", "--certificate", str(pfx), "--password-stdin", input=password + "\n",
                check=True)
            yield env, authority, app_service, found


def test_no_secret_of_any_new_kind_or_of_the_exec_endpoint_leaks(
        world: tuple[dict[str, str], SimulatedAuthority, SimulatedManagedIdentity, dict[str, list[str]]]) -> None:
    """If one daemon serves a certificate (PEM and PFX), two federated and an App Service managed-identity profile,
    and `aadhelper exec` serves a child, then no private key line, PFX password, assertion, federated token, App
    Service header or access token appears in the daemon's log, any CLI's stderr, any non-token stdout, or the
    environ/cmdline of the daemon, its fetcher, exec or the child; access tokens appear only on the stdout of the
    commands asked for them; and the exec endpoint's IDENTITY_HEADER is in the child's environment only."""
    env, authority, app_service, found = world
    daemon_env = dict(env, IDENTITY_ENDPOINT=app_service.endpoint, IDENTITY_HEADER=app_service.header)
    outputs: dict[str, str] = {}
    with DaemonProcess(daemon_env) as daemon:
        tokens = {name: token_of(env, name) for name in ("cert", "pfx", "fed", "fedcmd", "web")}
        assert len(set(tokens.values())) == len(tokens)
        for args in (["status", "--json"], ["status"], *(["profile", "show", name] for name in tokens)):
            done = cli(env, *args, check=True)
            outputs[f"aadhelper {' '.join(args)} (stdout)"] = done.stdout
        ran = cli(env, "exec", "cert", "--", sys.executable, "-c", textwrap.dedent(CHILD), check=True)
        child = json.loads(ran.stdout)
        header, served = child["header"], child["token"]
        assert len(header) >= 32 and served == tokens["cert"]
        processes = {"daemon": proc_text(daemon.pid), "fetcher": proc_text(running_fetcher(daemon)),
                     "exec": child["exec"], "child": child["child"]}
    assertions = authority.presented_assertions()
    assert len(assertions) >= 2  # the certificate and PFX profiles signed one each at least
    found["assertions"] = assertions
    found["exec IDENTITY_HEADER"] = [header]
    found["access tokens"] = list(tokens.values())
    sensitive(*assertions, header)
    assert_no_leaks()  # the daemon's log and every CLI's stderr, against everything above
    assert f"IDENTITY_HEADER={header}" in processes["child"]["environ"].split("\0")  # there by design
    for what, values in found.items():
        for value in values:
            for where, text in outputs.items():
                assert value not in text, f"the {what} leaked into {where}"
            for process, texts in processes.items():
                for name, text in texts.items():
                    if process == "child" and name == "environ" and what == "exec IDENTITY_HEADER":
                        continue
                    assert value not in text, f"the {what} leaked into the {process}'s /proc/PID/{name}"


def test_the_daemon_pid_is_its_own(
        world: tuple[dict[str, str], SimulatedAuthority, SimulatedManagedIdentity, dict[str, list[str]]]) -> None:
    """If the leak check reads /proc/PID of the daemon, then PID is the daemon's (its cmdline runs `aadhelper
    daemon`), so the check cannot pass by reading another process."""
    env, _, app_service, _ = world
    with DaemonProcess(dict(env, IDENTITY_ENDPOINT=app_service.endpoint,
                            IDENTITY_HEADER=app_service.header)) as daemon:
        assert "daemon" in proc_text(daemon.pid)["cmdline"].split("\0")
        assert os.path.exists(f"/proc/{running_fetcher(daemon)}/environ")
