"""The pytest plugin of :mod:`aadhelper.testing`: Entra ID, a daemon and a signed-in user for your tests, on loopback.

Installed with aadhelper (entry point ``pytest11``), so its fixtures are there in any pytest run of that
environment; they all start with ``aad_``. Needs ``trustme`` for the certificates (``pip install trustme``).

- ``aad_tls`` (session): a throwaway CA, a server context for 127.0.0.1/localhost and a client context trusting it,
  and the CA as a PEM file (:class:`Tls`).
- ``aad_authority``: a :class:`SimulatedAuthority` over HTTPS with tenant :data:`TENANT`, the confidential app
  :data:`APP_ID` (secret: ``aad_app_secret``), the public app :data:`PUBLIC_APP_ID` and the user :data:`USER`; it
  issues tokens for Graph and Azure DevOps.
- ``aad_home``: a temporary home (:class:`Home`): every aadhelper and XDG path under it, a private keyring file
  (:mod:`aadhelper.testing.keyring_file`, never your real keyring), no daemon autostart.
- ``aad_daemon``: ``aadhelper daemon`` running in ``aad_home`` with profile :data:`APP_PROFILE` (the default; client
  secret stored) against ``aad_authority``; stopped after the test.
- ``aad_signed_in``: the user profile :data:`USER_PROFILE` in ``aad_home``, signed in by a real
  ``aadhelper login`` (device code, approved as :data:`USER`); returns the profile name.
- ``aad_fake_daemon``: a :class:`FakeDaemon` on ``aad_home``'s socket: ``aadhelper header`` gets the token the
  test chooses, with no authority at all.

Stable: the fixture names, their types and the constants of this module. Not stable: the authority's other
settings, file names inside the home, and log formats.
"""

from __future__ import annotations

import os
import secrets
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .. import paths
from .directory import ADO, GRAPH

# The rest is imported by the fixtures that use it: pytest loads this plugin in every run of an environment
# aadhelper is installed in, and the authority and keyring cost ~120 ms of imports (the directory's constants ~10).
if TYPE_CHECKING:
    from .authority import SimulatedAuthority
    from .daemon_process import DaemonProcess
    from .fake_daemon import FakeDaemon

TENANT = "contoso.onmicrosoft.com"
#: The confidential app (client secret).
APP_ID = "11111111-0000-0000-0000-00000000a001"
#: The public app users sign in to.
PUBLIC_APP_ID = "22222222-0000-0000-0000-00000000a002"
USER = f"user@{TENANT}"
#: The profile ``aad_daemon`` configures (client secret, Graph).
APP_PROFILE = "app"
#: The profile ``aad_signed_in`` configures (user sign-in, Graph).
USER_PROFILE = "me"
GRAPH_SCOPE = f"{GRAPH}/.default"
#: Seconds a command or sign-in may take before the fixture gives up.
TIMEOUT = 60


@dataclass(frozen=True)
class Tls:
    """A throwaway CA's server and client contexts and its certificate as a PEM file."""

    server: ssl.SSLContext
    client: ssl.SSLContext
    ca_pem: Path


@dataclass
class Home:
    """A temporary home: ``env`` is ``os.environ`` with every aadhelper, XDG and keyring location under ``path``."""

    path: Path
    env: dict[str, str] = field(default_factory=dict)

    def aadhelper(self, *args: str, input: str = "", check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the installed ``aadhelper ARGS`` in this home; with ``check``, a failure raises AssertionError with
        its stderr."""
        result = subprocess.run([*paths.console_script(), *args], env=self.env, input=input, capture_output=True,
                                text=True, timeout=TIMEOUT, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"aadhelper {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
        return result

    @property
    def socket_path(self) -> str:
        return self.env["AADHELPER_SOCKET"]


@pytest.fixture(scope="session")
def aad_tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A throwaway certificate authority for the whole run (trustme), with a certificate for 127.0.0.1, ::1 and
    localhost in ``server``; ``client`` trusts that CA only; ``ca_pem`` is the CA for other processes
    (``--ca-bundle``, ``curl --cacert``, ``SSL_CERT_FILE``)."""
    import trustme

    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "::1", "localhost").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    ca_pem = tmp_path_factory.mktemp("aad-tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    return Tls(server, client, ca_pem)


@pytest.fixture
def aad_app_secret() -> str:
    """The client secret of :data:`APP_ID` (random per test)."""
    return "app-secret-" + secrets.token_urlsafe(16)


@pytest.fixture
def aad_authority(aad_tls: Tls, aad_app_secret: str) -> Iterator[SimulatedAuthority]:
    """A simulated Entra ID over HTTPS (``aad_tls``) with :data:`TENANT`, :data:`APP_ID`, :data:`PUBLIC_APP_ID` and
    :data:`USER`, for Graph and Azure DevOps; device codes may be polled every second."""
    from .authority import SimulatedAuthority

    with SimulatedAuthority(ssl_context=aad_tls.server) as authority:
        authority.add_tenant(TENANT)
        authority.add_client(APP_ID, tenant=TENANT, secret=aad_app_secret, resources=(GRAPH, ADO))
        authority.add_client(PUBLIC_APP_ID, tenant=TENANT, public=True, resources=(GRAPH, ADO))
        authority.add_user(USER, tenant=TENANT)
        authority.device_code_interval = 1
        yield authority


@pytest.fixture
def aad_home(tmp_path: Path) -> Iterator[Home]:
    """A temporary home under ``tmp_path``, with this installation's ``aadhelper`` first on ``PATH``; the socket's
    directory is a short private one under the system's temporary folder (AF_UNIX paths are limited to 107 bytes),
    removed afterwards."""
    from .keyring_file import keyring_environ

    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("AADHELPER_", "AZURE_", "KEYRING_PROPERTY_", "XDG_"))
           and key != "PYTHON_KEYRING_BACKEND"}
    root = tmp_path / "aad-home"
    for variable, name in (("HOME", "home"), ("XDG_CONFIG_HOME", "config"), ("XDG_STATE_HOME", "state"),
                           ("XDG_CACHE_HOME", "cache"), ("XDG_DATA_HOME", "data")):
        (root / name).mkdir(parents=True, mode=0o700)
        env[variable] = str(root / name)
    runtime = tempfile.mkdtemp(prefix="aad-")  # 0700
    env.update(keyring_environ(root / "data" / "keyring.json"),
               XDG_RUNTIME_DIR=runtime,
               AADHELPER_CONFIG=str(root / "config" / "aadhelper" / "config.toml"),
               AADHELPER_SOCKET=os.path.join(runtime, "aadhelper", "daemon.sock"),
               AADHELPER_STATE_DIR=str(root / "state" / "aadhelper"),
               AADHELPER_NO_AUTOSTART="1")
    # Scripts under test call `aadhelper` by name: this installation's first, however pytest was started.
    script = paths.console_script()
    if len(script) == 1:
        env["PATH"] = os.pathsep.join([os.path.dirname(script[0]), env.get("PATH", os.defpath)])
    try:
        yield Home(root, env)
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


@pytest.fixture
def aad_daemon(aad_home: Home, aad_authority: SimulatedAuthority, aad_tls: Tls,
               aad_app_secret: str) -> Iterator[DaemonProcess]:
    """``aadhelper daemon`` in ``aad_home``, answering; profile :data:`APP_PROFILE` (the default) gets Graph tokens
    for :data:`APP_ID` from ``aad_authority``. Stopped (SIGTERM) after the test; its log is ``.log()``."""
    from .daemon_process import DaemonProcess

    aad_home.aadhelper("profile", "add", APP_PROFILE, "--default", "--tenant", TENANT, "--client-id", APP_ID,
                       "--scope", GRAPH_SCOPE, "--authority", aad_authority.url, "--ca-bundle", str(aad_tls.ca_pem))
    aad_home.aadhelper("secret", "set", APP_PROFILE, input=aad_app_secret + "\n")
    with DaemonProcess(aad_home.env, aad_home.path / "state" / "daemon.log") as daemon:
        yield daemon


@pytest.fixture
def aad_signed_in(aad_home: Home, aad_authority: SimulatedAuthority, aad_tls: Tls) -> str:
    """Adds the user profile :data:`USER_PROFILE` to ``aad_home`` and signs :data:`USER` in with a real
    ``aadhelper login`` (its device code approved at ``aad_authority``); returns the profile's name."""
    from .daemon_process import terminate

    aad_home.aadhelper("profile", "add", USER_PROFILE, "--tenant", TENANT, "--client-id", PUBLIC_APP_ID, "--user",
                       "--scope", GRAPH_SCOPE, "--authority", aad_authority.url, "--ca-bundle", str(aad_tls.ca_pem))
    login = subprocess.Popen([*paths.console_script(), "login", USER_PROFILE], env=aad_home.env,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        aad_authority.approve(aad_authority.wait_for_device_code(timeout=TIMEOUT), user=USER)
        _, stderr = login.communicate(timeout=TIMEOUT)
    finally:
        terminate(login)
    if login.returncode != 0:
        raise AssertionError(f"aadhelper login {USER_PROFILE} exited {login.returncode}: {stderr.strip()}")
    return USER_PROFILE


@pytest.fixture
def aad_fake_daemon(aad_home: Home) -> Iterator[FakeDaemon]:
    """A :class:`FakeDaemon` on ``aad_home``'s socket (so ``aad_home.env`` reaches it), handing out
    :data:`aadhelper.testing.fake_daemon.FAKE_ACCESS_TOKEN`; set ``.answer`` to choose other replies."""
    from .fake_daemon import FakeDaemon

    with FakeDaemon(aad_home.socket_path) as fake:
        yield fake
