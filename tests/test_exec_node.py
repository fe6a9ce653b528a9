"""``aadhelper exec`` with the JavaScript Azure SDK in the child: the real @azure/identity (tests/node, pinned by its
package-lock.json, installed by scripts/setup) under node, against the real daemon and the simulated authority.

@azure/identity 4.x hands every managed-identity source except AKS token exchange to msal-node's
``ManagedIdentityApplication``, which picks App Service from ``IDENTITY_ENDPOINT`` + ``IDENTITY_HEADER``. The
environment the child inherits is planted with what would make it pick something else, each of which exec must
remove: ``IDENTITY_SERVER_THUMBPRINT`` (msal-node tests presence, so even empty it means Service Fabric),
``MSI_ENDPOINT``/``MSI_SECRET`` (Azure ML), ``AZURE_FEDERATED_TOKEN_FILE`` (with ``AZURE_CLIENT_ID`` and
``AZURE_TENANT_ID`` set, ManagedIdentityCredential itself, not only DefaultAzureCredential, turns into workload
identity) and ``AZURE_CLIENT_SECRET`` (DefaultAzureCredential's EnvironmentCredential comes first). An unrelated
``AZURE_CLIENT_ID`` stays: DefaultAzureCredential then sends ``client_id``, which the endpoint ignores.

The node script is tests/node/get_tokens.mjs; a test needs the ``node`` component (node >= 20 on PATH and the
installed @azure/identity), so it skips on a machine without them and fails under ``CI=true``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

import pytest

from aadhelper.testing import GRAPH
from tests.harness import (  # noqa: F401 -- counting_proxy_server: the fixture `counting_proxy`
    AADHELPER,
    CountingProxy,
    counting_proxy_server,
    sensitive,
)
from tests.tools_world import (  # noqa: F401 -- tools_world: the fixture `tools`
    ARM,
    PROFILE,
    ToolsWorld,
    tools_world,
)

from .conftest import NODE, NODE_PROJECT

pytestmark = pytest.mark.requires(NODE)

SCRIPT = NODE_PROJECT / "get_tokens.mjs"
RESOURCES = (ARM, GRAPH)
#: What the child inherits on purpose and exec must remove (module docstring); empty values count too.
PLANTED = {"IDENTITY_SERVER_THUMBPRINT": "", "MSI_ENDPOINT": "http://127.0.0.1:9/msi", "MSI_SECRET": "msi-secret",
           "AZURE_FEDERATED_TOKEN_FILE": "/nonexistent/token", "AZURE_CLIENT_SECRET": "env-secret",
           "IDENTITY_ENDPOINT": "http://169.254.169.254/stale", "IDENTITY_HEADER": "stale",
           "AZURE_CLIENT_ID": "00000000-0000-0000-0000-0000000000ff", "AZURE_TENANT_ID": "contoso.onmicrosoft.com"}
#: The same two resources through azure-identity for Python, run beside the JavaScript children.
PYTHON_SCRIPT = """
    import json, sys, time
    from azure.identity import ManagedIdentityCredential
    tokens = {}
    for resource in sys.argv[1:]:
        token = ManagedIdentityCredential().get_token(resource + "/.default")
        tokens[resource] = {"token": token.token, "expires_on": token.expires_on}
    print(json.dumps({"tokens": tokens}))
"""


@pytest.fixture
def child_env(tools: ToolsWorld) -> dict[str, str]:
    """The daemon's home environment with :data:`PLANTED` added (and no user choice of credential chain)."""
    env = {key: value for key, value in tools.env.items() if key != "AZURE_TOKEN_CREDENTIALS"}
    env.update(PLANTED)
    return env


def start_exec(env: dict[str, str], *command: str, options: Sequence[str] = ()) -> subprocess.Popen[str]:
    """``aadhelper exec PROFILE OPTIONS -- COMMAND`` started (not waited for)."""
    return subprocess.Popen([AADHELPER, "exec", PROFILE, *options, "--", *command], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def node_command(credential: str, *resources: str) -> list[str]:
    return ["node", str(SCRIPT), credential, *resources]


def finish(process: subprocess.Popen[str]) -> tuple[int, Any, str]:
    """Wait for a started exec: its exit status, the child's JSON line and exec's stderr."""
    try:
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    lines = stdout.strip().splitlines()
    return process.returncode, json.loads(lines[-1]) if lines else None, stderr


def daemon_tokens(tools: ToolsWorld, resources: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The daemon's current token reply (``access_token``, ``expires_on``) for each resource."""
    replies = {}
    for resource in resources:
        reply = json.loads(tools.home.aadhelper("token", PROFILE, "--scope", f"{resource}/.default", "--json").stdout)
        sensitive(reply["access_token"])
        replies[resource] = reply
    return replies


def authority_requests_per_resource(tools: ToolsWorld) -> dict[str | None, int]:
    counts: dict[str | None, int] = {}
    for request in tools.authority.requests:
        if request.endpoint == "token":
            counts[request.scope] = counts.get(request.scope, 0) + 1
    return counts


def test_javascript_and_python_sdks_get_exactly_the_daemons_tokens(tools: ToolsWorld,
                                                                   child_env: dict[str, str]) -> None:
    """If @azure/identity's ManagedIdentityCredential and DefaultAzureCredential (each in its own node process) and
    azure-identity's ManagedIdentityCredential (Python) run at once under `aadhelper exec`, each asking for two
    resources, then every one gets exactly the daemon's token for each resource, with the daemon's expiry (node:
    minus the whole seconds its request took, as msal-node counts it from the request's start), and the authority
    saw one request per resource."""
    assert tools.authority.count("token") == 0
    started = {
        "ManagedIdentityCredential": start_exec(child_env, *node_command("ManagedIdentityCredential", *RESOURCES)),
        "DefaultAzureCredential": start_exec(child_env, *node_command("DefaultAzureCredential", *RESOURCES)),
        "python": start_exec(child_env, sys.executable, "-c", textwrap.dedent(PYTHON_SCRIPT), *RESOURCES),
    }
    outputs = {}
    for name, process in started.items():
        status, out, stderr = finish(process)
        assert status == 0 and out is not None and "tokens" in out, f"{name}: {out} {stderr}"
        outputs[name] = out["tokens"]
    daemon = daemon_tokens(tools, RESOURCES)
    for resource in RESOURCES:
        token, expires_on = daemon[resource]["access_token"], daemon[resource]["expires_on"]
        assert tools.authority.validate(f"Bearer {token}", audience=resource)
        assert outputs["python"][resource] == {"token": token, "expires_on": expires_on}
        for name in ("ManagedIdentityCredential", "DefaultAzureCredential"):
            got = outputs[name][resource]
            assert got["token"] == token, name
            # msal-node: expiresOn = (request start, whole seconds) + (expires_on - response time, whole seconds).
            took = round(got["after"] / 1000) - round(got["before"] / 1000)
            assert got["expiresOnTimestamp"] % 1000 == 0, name
            assert expires_on - took <= got["expiresOnTimestamp"] // 1000 <= expires_on, (name, got, expires_on)
    assert authority_requests_per_resource(tools) == {f"{resource}/.default": 1 for resource in RESOURCES}


#: What @azure/identity's HTTP pipeline logs once per request it sends, under AZURE_LOG_LEVEL=info.
REQUEST_LOG_LINE = "azure:core-rest-pipeline:info Request: {"


def test_a_refusal_fails_the_javascript_sdk_after_one_request_with_aadhelpers_message(
        tools: ToolsWorld, child_env: dict[str, str]) -> None:
    """If @azure/identity's ManagedIdentityCredential sends a wrong secret header, asks for a resource outside
    `aadhelper exec --scope`, or is pointed at another path of the endpoint, then it fails after that one request
    (its own log shows one request: it retries 404 and 410, never 400, 401 or 403) with aadhelper's one-line reason
    in the error, and the authority sees nothing."""
    child_env["AZURE_LOG_LEVEL"] = "info"
    mic = node_command("ManagedIdentityCredential", ARM)
    wrong = start_exec(child_env, "env", "IDENTITY_HEADER=not-the-secret-of-this-exec", *mic)
    outside = start_exec(child_env, *mic, options=("--scope", f"{GRAPH}/.default"))
    imds_path = "/metadata/identity/oauth2/token"
    elsewhere = start_exec(child_env, "sh", "-c", f'IDENTITY_ENDPOINT="${{IDENTITY_ENDPOINT%/msi/token}}{imds_path}" '
                           'exec "$@"', "sh", *mic)
    for process, reason in ((wrong, "aadhelper: the X-IDENTITY-HEADER header is wrong"),
                            (outside, f"aadhelper: resource '{ARM}' is not one this aadhelper exec serves"),
                            (elsewhere, f"aadhelper: no endpoint at '{imds_path}'")):
        status, out, stderr = finish(process)
        assert status == 1 and out is not None, stderr
        assert out["error"].startswith("ManagedIdentityCredential: Authentication failed.")
        assert f"Description: {reason}" in out["error"]
        assert stderr.count(REQUEST_LOG_LINE) == 1, stderr
    assert tools.authority.count("token") == 0


def test_a_proxy_in_the_childs_environment_never_sees_the_endpoints_requests(
        tools: ToolsWorld, child_env: dict[str, str], counting_proxy: CountingProxy) -> None:
    """If the child's environment names a proxy (HTTPS_PROXY, which @azure/identity uses even for the endpoint's
    plain-http URL, and HTTP_PROXY, which Python's requests uses) and a NO_PROXY without 127.0.0.1, then
    @azure/identity and azure-identity still get the daemon's token straight from the endpoint, and the proxy
    never gets a connection (it would see the secret header)."""
    child_env.update(HTTPS_PROXY=counting_proxy.url, HTTP_PROXY=counting_proxy.url, NO_PROXY="localhost")
    node = start_exec(child_env, *node_command("ManagedIdentityCredential", ARM))
    python = start_exec(child_env, sys.executable, "-c", textwrap.dedent(PYTHON_SCRIPT), ARM)
    results = [finish(node), finish(python)]
    token = daemon_tokens(tools, [ARM])[ARM]["access_token"]
    for status, out, stderr in results:
        assert status == 0 and out is not None and "tokens" in out, f"{out} {stderr}"
        assert out["tokens"][ARM]["token"] == token
    assert counting_proxy.lines == []


def test_the_javascript_sdk_caches_the_endpoints_reply(tools: ToolsWorld, child_env: dict[str, str]) -> None:
    """If one node process asks for the same resource three times, each through a new ManagedIdentityCredential,
    then @azure/identity sends the endpoint one request (msal-node caches the reply under its `resource` field and
    keeps it while more than 300 s are left), and every call gets the daemon's token."""
    child_env["AZURE_LOG_LEVEL"] = "info"
    status, out, stderr = finish(start_exec(child_env, *node_command("ManagedIdentityCredential", ARM, ARM, ARM)))
    assert status == 0 and out is not None and "tokens" in out, f"{out} {stderr}"
    assert out["tokens"][ARM]["token"] == daemon_tokens(tools, [ARM])[ARM]["access_token"]
    assert stderr.count(REQUEST_LOG_LINE) == 1, stderr
