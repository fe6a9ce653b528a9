"""End to end: ``credential = "managed_identity"`` profiles served by the real daemon from simulated IMDS, App Service
and Azure Arc endpoints (issue 12 §3).

Real daemon processes (started with the environment a VM, an App Service app or an Arc server gives them), the real
CLI, the real Secret Service, and :class:`~aadhelper.testing.managed_identity.SimulatedManagedIdentity` minting the
simulated authority's tokens, which the simulated protected API then accepts over HTTPS.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aadhelper.cache import FLIGHT_ATTEMPTS
from aadhelper.testing import GRAPH, Fault, ProtectedResource, SimulatedAuthority
from aadhelper.testing.managed_identity import ENDPOINT, SimulatedManagedIdentity, Source

from .harness import TENANT, DaemonProcess, cli, one_error_line, sensitive, token_of

pytestmark = pytest.mark.requires("secret-service")

SCOPE = f"{GRAPH}/.default"


@pytest.fixture(name="authority")
def mi_authority(server_ssl_context: ssl.SSLContext) -> Iterator[SimulatedAuthority]:
    """The simulated authority whose keys sign the identity endpoints' tokens."""
    with SimulatedAuthority(ssl_context=server_ssl_context) as authority:
        authority.add_tenant(TENANT)
        yield authority


@pytest.fixture(name="env")
def mi_env(isolated_env: dict[str, str], secret_service: object) -> dict[str, str]:
    """The isolated environment, no autostart, and none of the machine's own identity variables."""
    env = {k: v for k, v in isolated_env.items()
           if k not in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IMDS_ENDPOINT", "AZURE_POD_IDENTITY_AUTHORITY_HOST")}
    env["AADHELPER_NO_AUTOSTART"] = "1"
    return env


def identity(authority: SimulatedAuthority, source: Source, key_dir: Path | None = None) -> SimulatedManagedIdentity:
    endpoint = SimulatedManagedIdentity(authority, source=source,
                                        tenant=TENANT, key_dir=str(key_dir) if key_dir else None)
    sensitive(endpoint.header)
    return endpoint


def write_config(env: dict[str, str], profiles: dict[str, dict[str, str]]) -> None:
    """A config file with these managed-identity profiles (the first is the default)."""
    lines = [f'default_profile = "{next(iter(profiles))}"']
    for name, keys in profiles.items():
        lines += [f"[profiles.{name}]", 'credential = "managed_identity"', f'scopes = ["{SCOPE}"]']
        lines += [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
    path = Path(env["AADHELPER_CONFIG"])
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text("\n".join(lines) + "\n")


def status(env: dict[str, str]) -> dict[str, Any]:
    reply: dict[str, Any] = json.loads(cli(env, "status", "--json").stdout)
    return reply


def claims_at_api(resource: ProtectedResource, token: str, context: ssl.SSLContext) -> dict[str, Any]:
    """What the protected API answers a request bearing ``token`` (its claims when it accepts it)."""
    request = urllib.request.Request(resource.url + "/me", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, context=context, timeout=10) as reply:
        claims: dict[str, Any] = json.loads(reply.read())
    return claims


def test_imds_profile_added_by_the_cli_serves_the_vms_token_from_cache(
        env: dict[str, str], authority: SimulatedAuthority, server_ssl_context: ssl.SSLContext,
        client_ssl_context: ssl.SSLContext) -> None:
    """If a profile is added with `profile add --credential managed_identity --source imds` and asked for a token
    twice, then IMDS sees one GET with `Metadata: true`, api-version 2018-02-01 and the resource, the protected API
    accepts the token as the VM's system-assigned identity, and `status` and `profile show` name the source."""
    with identity(authority, "imds") as imds, ProtectedResource(authority, ssl_context=server_ssl_context) as api:
        cli(env, "profile", "add", "vm", "--credential", "managed_identity", "--source", "imds", "--endpoint",
            imds.endpoint, "--scope", SCOPE, check=True)
        shown = cli(env, "profile", "show", "vm", check=True).stdout
        assert f"identity        imds (set in the profile), system-assigned identity, endpoint {imds.endpoint}" \
            in shown
        assert "tenant" not in shown
        with DaemonProcess(env):
            first, second = token_of(env, "vm"), token_of(env, "vm")
            assert first == second
            assert len(imds.requests) == 1
            assert imds.requests[0].resource == GRAPH and imds.requests[0].status == 200
            assert claims_at_api(api, first, client_ssl_context)["appid"] == imds.system.client_id
            record = status(env)["profiles"][0]
            assert record["managed_identity"]["source"] == "imds"
            assert record["managed_identity"]["user_assigned"] is None
            text = cli(env, "status").stdout
            assert "managed identity: imds (set in the profile), system-assigned identity" in text


def test_app_service_is_detected_from_the_daemons_environment_with_a_user_assigned_identity(
        env: dict[str, str], authority: SimulatedAuthority) -> None:
    """If the daemon starts with IDENTITY_ENDPOINT and IDENTITY_HEADER (App Service) and the profile names a
    user-assigned identity by client_id, then the token is that identity's (the endpoint got client_id and the
    secret header), status says app_service was detected, and the header appears in no log or error output."""
    with identity(authority, "app_service") as app:
        user = app.add_user_assigned("build")
        write_config(env, {"web": {"client_id": user.client_id}})
        daemon_env = dict(env, IDENTITY_ENDPOINT=app.endpoint, IDENTITY_HEADER=app.header)
        with DaemonProcess(daemon_env):
            token = token_of(env, "web")
            assert authority.validate(token, audience=GRAPH)["appid"] == user.client_id
            assert app.requests[-1].identity == ("client_id", user.client_id)
            managed = status(env)["profiles"][0]["managed_identity"]
            assert managed == {"source": "app_service", "detected": True, "endpoint": app.endpoint,
                               "user_assigned": {"client_id": user.client_id}, "identity_header": "set"}
            assert "app_service (detected from the environment), user-assigned identity client_id" in \
                cli(env, "status").stdout


def test_app_service_with_a_wrong_header_is_one_line_and_no_retry_storm(
        env: dict[str, str], authority: SimulatedAuthority) -> None:
    """If the daemon's IDENTITY_HEADER is not the endpoint's, then `aadhelper token` prints one line saying the
    header was refused (exit 5), the wrong header is in no output, and asking again does not call the endpoint
    again (a refusal is not retried on its own)."""
    wrong = "wrong-header-" + "x" * 20
    sensitive(wrong)
    with identity(authority, "app_service") as app:
        write_config(env, {"web": {}})
        with DaemonProcess(dict(env, IDENTITY_ENDPOINT=app.endpoint, IDENTITY_HEADER=wrong)):
            result = cli(env, "token", "web")
            line = one_error_line(result)
            assert result.returncode == 5
            assert "refused the X-IDENTITY-HEADER (HTTP 401)" in line and "restart the daemon" in line
            cli(env, "token", "web")
            assert app.count() == 1


def test_arc_challenge_file_flow_with_a_user_assigned_object_id(
        env: dict[str, str], authority: SimulatedAuthority, tmp_path: Path) -> None:
    """If the daemon starts with IDENTITY_ENDPOINT and IMDS_ENDPOINT (Azure Arc), then the first request gets the
    401 challenge, the second sends the key file's content as Basic credentials and gets the user-assigned
    identity's token; the key file's secret is in no output."""
    key_dir = tmp_path / "azcmagent-tokens"
    key_dir.mkdir(mode=0o700)
    with identity(authority, "arc", key_dir) as arc:
        user = arc.add_user_assigned("ops")
        write_config(env, {"arc": {"object_id": user.object_id, "arc_key_dir": str(key_dir)}})
        daemon_env = dict(env, IDENTITY_ENDPOINT=arc.endpoint, IMDS_ENDPOINT="http://127.0.0.1:1")
        with DaemonProcess(daemon_env):
            token = token_of(env, "arc")
            sensitive(*(path.read_text() for path in key_dir.iterdir()))
            assert authority.validate(token, audience=GRAPH)["appid"] == user.client_id
            assert [(r.authorized, r.status) for r in arc.requests] == [(False, 401), (True, 200)]
            assert status(env)["profiles"][0]["managed_identity"]["source"] == "arc"


def test_an_arc_key_file_ending_in_a_newline_gets_a_token_and_never_shows_the_key(
        env: dict[str, str], authority: SimulatedAuthority, tmp_path: Path) -> None:
    """If the Arc agent's key file ends in a newline, then the daemon sends the key without it and gets the token
    (sent as is, the header was invalid and httpx's error, which quotes the header, became the client's line and the
    daemon's log); the key is in no output."""
    key_dir = tmp_path / "azcmagent-tokens"
    key_dir.mkdir(mode=0o700)
    with identity(authority, "arc", key_dir) as arc:
        arc.arc_key_suffix = "\n"
        write_config(env, {"arc": {"arc_key_dir": str(key_dir)}})
        daemon_env = dict(env, IDENTITY_ENDPOINT=arc.endpoint, IMDS_ENDPOINT="http://127.0.0.1:1")
        with DaemonProcess(daemon_env):
            result = cli(env, "token", "arc")
            sensitive(*(path.read_text().strip() for path in key_dir.iterdir()))
            assert result.returncode == 0, result.stderr
            assert [(r.authorized, r.status) for r in arc.requests] == [(False, 401), (True, 200)]


def test_arc_challenge_outside_the_agents_directory_is_refused(
        env: dict[str, str], authority: SimulatedAuthority, tmp_path: Path) -> None:
    """If whatever answers on the Arc port points the challenge at a file outside the agent's key directory, then
    the daemon does not read or send it: one line saying it refuses, and no request with credentials."""
    key_dir = tmp_path / "azcmagent-tokens"
    key_dir.mkdir(mode=0o700)
    elsewhere = tmp_path / "id_rsa.key"
    elsewhere.write_text("private")
    with identity(authority, "arc", key_dir) as arc:
        arc.challenge_realm = str(elsewhere)
        write_config(env, {"arc": {"source": "arc", "endpoint": arc.endpoint, "arc_key_dir": str(key_dir)}})
        with DaemonProcess(env):
            line = one_error_line(cli(env, "token", "arc"))
            assert f"which is not a .key file in {key_dir}; refusing to read it" in line
            assert not any(r.authorized for r in arc.requests)


def test_no_managed_identity_here_when_nothing_answers(env: dict[str, str]) -> None:
    """If the IMDS address accepts no connection (a listener whose queue is full drops the handshake, as an
    unrouted 169.254.169.254 does), then `aadhelper token` answers with one line "no managed identity here"
    after the short connect timeout (exit 7), instead of hanging for the whole request timeout."""
    with socket.socket() as silent, socket.socket() as filler:
        silent.bind(("127.0.0.1", 0))
        silent.listen(0)
        filler.connect(silent.getsockname())  # fills the accept queue: further SYNs are dropped
        port = silent.getsockname()[1]
        write_config(env, {"vm": {"source": "imds",
                                  "endpoint": f"http://127.0.0.1:{port}/metadata/identity/oauth2/token"}})
        with DaemonProcess(env):
            result = cli(env, "token", "vm")
            line = one_error_line(result)
            assert result.returncode == 7
            assert "no managed identity here: nothing answers at 127.0.0.1" in line
            assert "no connection within 2 s" in line


@pytest.mark.parametrize(("fault", "said"), [
    (Fault.malformed("<html>proxy login</html>", endpoint=ENDPOINT), "malformed token reply (not a JSON object)"),
    (Fault.reply_fields(endpoint=ENDPOINT, access_token=Fault.REMOVE), "malformed token reply (no access_token)"),
    (Fault.reply_fields(endpoint=ENDPOINT, expires_on="2026-01-01T00:00:00Z"),
     "malformed token reply (bad expires_on '2026-01-01T00:00:00Z': not whole epoch seconds)"),
])
def test_bad_replies_give_one_clear_line(env: dict[str, str], authority: SimulatedAuthority, fault: Fault,
                                         said: str) -> None:
    """If IMDS answers 200 with a body that is not JSON, without access_token, or with an expires_on that is not
    epoch seconds, then `aadhelper token` prints one line naming IMDS and what was wrong (exit 7), the daemon stays
    up, and asking again at once gets that error without a new request to IMDS (the backoff holds)."""
    with identity(authority, "imds") as imds:
        write_config(env, {"vm": {"source": "imds", "endpoint": imds.endpoint}})
        with DaemonProcess(env) as daemon:
            imds.inject(fault, times=100)
            result = cli(env, "token", "vm")
            line = one_error_line(result)
            assert result.returncode == 7
            assert f"the Azure instance metadata service (IMDS) sent a {said}" in line
            daemon.check_alive()
            # The waiting request's flight tries a few times, one backoff step apart; then the error stands.
            tried = imds.count()
            assert 1 <= tried <= FLIGHT_ATTEMPTS
            assert one_error_line(cli(env, "token", "vm")).startswith("aadhelper: the Azure instance metadata")
            assert imds.count() == tried


_SDK_SCRIPT = """
import sys
from azure.identity import ManagedIdentityCredential
credential = ManagedIdentityCredential(client_id=sys.argv[1]) if sys.argv[1] else ManagedIdentityCredential()
print(credential.get_token(sys.argv[2]).token)
"""


@pytest.mark.parametrize("source", ["imds", "app_service"])
def test_the_simulated_endpoints_serve_azure_identity_itself(authority: SimulatedAuthority, source: Source) -> None:
    """If azure-identity's ManagedIdentityCredential (the peer these endpoints imitate) is pointed at the simulated
    IMDS (AZURE_POD_IDENTITY_AUTHORITY_HOST) or App Service endpoint (IDENTITY_ENDPOINT + IDENTITY_HEADER), then
    it gets the user-assigned identity's token: the simulation speaks the protocol the real SDK speaks."""
    with identity(authority, source) as endpoint:
        user = endpoint.add_user_assigned("sdk")
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("AZURE_", "IDENTITY_", "IMDS_", "MSI_"))}
        if source == "imds":
            env["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = endpoint.url
        else:
            env.update(IDENTITY_ENDPOINT=endpoint.endpoint, IDENTITY_HEADER=endpoint.header)
        result = subprocess.run([sys.executable, "-c", _SDK_SCRIPT, user.client_id, SCOPE], env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr[-2000:]
        token = result.stdout.strip()
        sensitive(token)
        assert authority.validate(token, audience=GRAPH)["appid"] == user.client_id
        assert endpoint.requests[-1].identity == ("client_id", user.client_id)
