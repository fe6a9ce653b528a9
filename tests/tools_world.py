"""The world of the kubectl plugin and az shim tests: a real daemon whose app gets AKS, ARM and Graph tokens from the
simulated authority, and a loopback stub of a Kubernetes API server that accepts one bearer token.

A helper module (like gitserver.py), not a test module: tests/test_kubectl_plugin.py and tests/test_az_shim.py
both use it. The daemon runs in the test kit's ``aad_home`` (a private keyring file: no D-Bus needed).
"""

from __future__ import annotations

import base64
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from aadhelper.cli.kube_exec import AKS_SERVER_ID
from aadhelper.testing import GRAPH, SimulatedAuthority
from aadhelper.testing.pytest_plugin import TENANT, Home, Tls
from aadhelper.testing.server import HttpRequest, LoopbackApp, Response
from tests.harness import DaemonProcess, sensitive

AKS_SCOPE = f"{AKS_SERVER_ID}/.default"
ARM = "https://management.azure.com"
VAULT = "https://vault.azure.net"
TOOLS_APP = "33333333-0000-0000-0000-00000000a003"
#: The profile the daemon serves (client secret; Graph by default).
PROFILE = "app"


@dataclass
class ToolsWorld:
    home: Home
    authority: SimulatedAuthority
    daemon: DaemonProcess
    tls: Tls

    @property
    def env(self) -> dict[str, str]:
        return self.home.env

    def token(self, scope: str, profile: str = PROFILE) -> str:
        """The daemon's current token for ``scope`` (``aadhelper token``), registered as sensitive."""
        value = self.home.aadhelper("token", profile, "--scope", scope).stdout.strip()
        sensitive(value)
        return value


@pytest.fixture(name="tools")
def tools_world(aad_home: Home, aad_tls: Tls) -> Iterator[ToolsWorld]:
    """The daemon in ``aad_home`` with profile ``app`` of TOOLS_APP (Graph by default; AKS, ARM and Key Vault too)."""
    secret = "tools-secret-" + secrets.token_urlsafe(16)
    sensitive(secret)
    with SimulatedAuthority(ssl_context=aad_tls.server) as authority:
        authority.add_tenant(TENANT)
        authority.add_client(TOOLS_APP, tenant=TENANT, secret=secret, resources=(GRAPH, AKS_SERVER_ID, ARM, VAULT))
        aad_home.aadhelper("profile", "add", PROFILE, "--default", "--tenant", TENANT, "--client-id", TOOLS_APP,
                           "--scope", f"{GRAPH}/.default", "--authority", authority.url, "--ca-bundle",
                           str(aad_tls.ca_pem))
        aad_home.aadhelper("secret", "set", PROFILE, input=secret + "\n")
        with DaemonProcess(aad_home.env) as daemon:
            yield ToolsWorld(aad_home, authority, daemon, aad_tls)


class StubApiServer(LoopbackApp):
    """Answers ``GET /api`` (what ``kubectl get --raw /api`` asks) with APIVersions for ``Authorization: Bearer T``
    when T is the accepted token, else 401 with a Kubernetes Status, as an API server does; records every token."""

    def __init__(self, tls: Tls, accepted: str) -> None:
        self.accepted = accepted
        self._lock = threading.Lock()
        self._tokens: list[str | None] = []
        self.paths: list[str] = []
        super().__init__(ssl_context=tls.server)

    @property
    def tokens(self) -> list[str | None]:
        """The bearer token of each request for ``/api`` (None: none sent), in order. (This machine's kubectl is a
        version dispatcher that first asks ``/version`` without credentials; that request is not counted.)"""
        with self._lock:
            return [token for token, path in zip(self._tokens, self.paths, strict=True) if path == "/api"]

    def handle(self, request: HttpRequest) -> Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        presented = token.strip() if scheme.lower() == "bearer" else None
        with self._lock:
            self._tokens.append(presented)
            self.paths.append(request.path)
        if presented != self.accepted:
            return Response.json(401, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                       "message": "Unauthorized", "reason": "Unauthorized", "code": 401})
        if request.path.split("?")[0] != "/api":
            return Response.json(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404})
        return Response.json(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:443"}]})


def cluster_kubeconfig(server: str, tls: Tls, *, user: str = "someone-else", context: str = "stub") -> str:
    """A kubeconfig (YAML) with cluster ``stub`` at ``server`` (the test CA inline), an unrelated user ``other``
    with a static token, and context ``context`` using cluster ``stub`` and ``user``."""
    ca = base64.b64encode(tls.ca_pem.read_bytes()).decode()
    return (f"apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: stub\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n"
            f"- name: elsewhere\n  cluster:\n    server: https://192.0.2.1:6443\n"
            f"users:\n- name: other\n  user:\n    token: static-token-of-other\n"
            f"contexts:\n- name: {context}\n  context:\n    cluster: stub\n    user: {user}\n"
            f"- name: keep-me\n  context:\n    cluster: elsewhere\n    user: other\n"
            f"current-context: {context}\n")
