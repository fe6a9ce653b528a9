"""Shared test fixtures: real-component requirements, the private Secret Service, trustme TLS, isolated environments.

- ``@pytest.mark.requires("git", ...)`` or the ``require`` fixture: a test needing a real component SKIPS on a
  developer machine without it and FAILS when ``CI=true``, so CI can never pass by skipping.
  Components are executables on PATH, ``secret-service`` (the private session of
  ``scripts/with-secret-service``; the ``keyring`` marker means the same), ``root``, a kernel feature
  (``PR_SET_MDWE``), or ``node`` (node >= the major version the pinned @azure/identity needs, and tests/node's
  packages installed by scripts/setup).
  Never call ``pytest.skip`` for a missing component directly: go through :func:`require`.
- ``secret_service``: a :class:`KeyringSecretStore` on the real gnome-keyring, cleaned up after the test;
  ``keyring_entries`` lists the raw entries; ``locked_keyring`` locks the collection for one test
  (``lock_keyring``/``unlock_keyring`` do it at any point of a test).
- ``trustme_ca`` (session), ``server_ssl_context``, ``client_ssl_context``, ``ca_pem_file``.
- ``isolated_env``: environment for subprocesses with every aadhelper/XDG path under ``tmp_path``;
  :func:`coverage_environ` for a test that builds a subprocess's environment from scratch.
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import re
import shutil
import ssl
import subprocess
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import trustme

from aadhelper.secret_store import SERVICE, KeyringSecretStore
from aadhelper.testing.keyring_control import lock_keyring, unlock_keyring

# The test kit's own plugin (aad_* fixtures; also an entry point, registered under this same name, so never twice).
pytest_plugins = ["aadhelper.testing.pytest_plugin"]

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
#: Set by scripts/with-secret-service inside its private D-Bus session.
SECRET_SERVICE_ENV = "AADHELPER_TEST_SECRET_SERVICE"
#: The throwaway keyring's password, exported by scripts/with-secret-service so a test can unlock it again.
SECRET_SERVICE = "secret-service"
#: Tests that play another local user (chown, setuid) need root; CI runs as root.
ROOT = "root"
#: The kernel's MemoryDenyWriteExecute (Linux >= 6.3), which systemd >= 254 uses for the unit's
#: ``MemoryDenyWriteExecute=yes``. prctl options from <linux/prctl.h>.
MDWE = "PR_SET_MDWE"
PR_SET_MDWE = 65
PR_GET_MDWE = 66
PR_MDWE_REFUSE_EXEC_GAIN = 1
#: The JavaScript Azure SDK: node on PATH and tests/node's packages (``npm ci`` in scripts/setup).
NODE = "node"
NODE_PROJECT = Path(__file__).resolve().parent / "node"
# Longest AF_UNIX path we hand out, leaving room under the kernel's 108 bytes.
_MAX_SOCKET_PATH = 100


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires(*components): needs real components (executables, 'secret-service', "
        "'root', 'PR_SET_MDWE', 'node'); "
        "skipped locally when missing, failed when CI=true")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("requires"):
        for component in mark.args:
            require(component)
    if item.get_closest_marker("keyring"):
        require(SECRET_SERVICE)


def missing(component: str) -> str | None:
    """Why ``component`` is unavailable here, or None when it is available."""
    if component == SECRET_SERVICE:
        if os.environ.get(SECRET_SERVICE_ENV) != "1" or not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
            return "not inside scripts/with-secret-service (scripts/test runs pytest in it)"
        return None
    if component == ROOT:
        return None if os.geteuid() == 0 else "not running as root (needed to act as another user)"
    if component == MDWE:
        if ctypes.CDLL(None, use_errno=True).prctl(PR_GET_MDWE, 0, 0, 0, 0) < 0:
            return f"this kernel ({os.uname().release}) has no PR_SET_MDWE (Linux >= 6.3 has it)"
        return None
    if component == NODE:
        return _missing_node()
    return None if shutil.which(component) else f"{component!r} is not on PATH"


def _missing_node() -> str | None:
    """Why the JavaScript SDK cannot run here: node missing or older than @azure/identity's ``engines``, or
    tests/node's packages not installed."""
    node = shutil.which("node")
    if node is None:
        return "'node' is not on PATH (scripts/setup installs nodejs and npm as root)"
    installed = NODE_PROJECT / "node_modules" / "@azure" / "identity" / "package.json"
    if not installed.is_file():
        return f"{installed.parent} is missing (scripts/setup runs npm ci in {NODE_PROJECT})"
    needed = re.search(r"\d+", json.loads(installed.read_text()).get("engines", {}).get("node", ""))
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    major = re.match(r"v(\d+)", version)
    if needed and (major is None or int(major.group(1)) < int(needed.group())):
        return f"node {version or '(no version)'} is older than {needed.group()}, which @azure/identity needs"
    return None


def require(component: str) -> None:
    """Skip the running test when ``component`` is missing, or fail it when ``CI=true``."""
    reason = missing(component)
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"CI=true and a required component is missing: {reason}", pytrace=False)
    pytest.skip(f"needs {component}: {reason}")


@pytest.fixture(name="require")
def require_fixture() -> Callable[[str], None]:
    """The :func:`require` function, for tests that decide at run time what they need."""
    return require


# -- the real Secret Service ------------------------------------------------------------------------------

def _keyring_items(connection: Any) -> Iterator[Any]:
    import secretstorage

    return iter(secretstorage.get_default_collection(connection).search_items({"service": SERVICE}))


def _keyring_entry_names() -> set[str]:
    import secretstorage

    with closing(secretstorage.dbus_init()) as connection:
        return {item.get_attributes()["username"] for item in _keyring_items(connection)}


@pytest.fixture
def keyring_entries() -> Callable[[], set[str]]:
    """A function listing the names of the raw ``aadhelper`` entries in the Secret Service (chunks included)."""
    require(SECRET_SERVICE)
    return _keyring_entry_names


@pytest.fixture
def secret_service() -> Iterator[KeyringSecretStore]:
    """A KeyringSecretStore on the private gnome-keyring; entries the test created are deleted afterwards."""
    require(SECRET_SERVICE)
    import keyring
    from keyring.backends import SecretService

    backend = keyring.get_keyring()
    # A silent fallback (fail or file backend) must not let a keyring test pass.
    assert type(backend) is SecretService.Keyring, f"keyring chose {backend!r}, not the Secret Service"
    before = _keyring_entry_names()
    store = KeyringSecretStore()
    assert store.backend_name == "keyring.backends.SecretService.Keyring"
    yield store
    import secretstorage

    with closing(secretstorage.dbus_init()) as connection:
        for item in _keyring_items(connection):
            if item.get_attributes()["username"] not in before:
                item.delete()


@pytest.fixture
def locked_keyring(secret_service: KeyringSecretStore) -> Iterator[None]:
    """The default collection locked (as after a screen lock), unlocked again after the test."""
    lock_keyring()
    try:
        yield
    finally:
        unlock_keyring()




# -- TLS with trustme ---------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def trustme_ca() -> trustme.CA:
    """One throwaway certificate authority for the whole run."""
    return trustme.CA()


@pytest.fixture(scope="session")
def server_ssl_context(trustme_ca: trustme.CA) -> ssl.SSLContext:
    """A server context with a certificate for 127.0.0.1, ::1 and localhost, issued by ``trustme_ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme_ca.issue_cert("127.0.0.1", "::1", "localhost").configure_cert(context)
    return context


@pytest.fixture(scope="session")
def client_ssl_context(trustme_ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts ``trustme_ca`` only."""
    context = ssl.create_default_context()
    trustme_ca.configure_trust(context)
    return context


@pytest.fixture
def ca_pem_file(trustme_ca: trustme.CA, tmp_path: Path) -> Path:
    """The CA certificate as a PEM file, for subprocesses (SSL_CERT_FILE, GIT_SSL_CAINFO, curl --cacert)."""
    path = tmp_path / "ca.pem"
    trustme_ca.cert_pem.write_to_path(str(path))
    return path


# -- isolated environment for subprocesses -------------------------------------------------------------------

@pytest.fixture
def isolated_env(tmp_path: Path) -> dict[str, str]:
    """``os.environ`` with every aadhelper and XDG location under ``tmp_path`` (D-Bus address kept).

    The user's own ``AADHELPER_*`` settings are dropped (the test harness's ``AADHELPER_TEST_*`` stay).
    Directories exist (the runtime one 0700); the config file, the socket and its directory do not.
    """
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("AADHELPER_") or key.startswith("AADHELPER_TEST_")}
    home = tmp_path / "env"
    for variable, name in (("XDG_CONFIG_HOME", "config"), ("XDG_STATE_HOME", "state"),
                           ("XDG_CACHE_HOME", "cache"), ("XDG_DATA_HOME", "data"), ("XDG_RUNTIME_DIR", "run")):
        folder = home / name
        folder.mkdir(parents=True, mode=0o700)
        env[variable] = str(folder)
    runtime = home / "run"
    socket = runtime / "aadhelper" / "daemon.sock"
    assert len(str(socket)) <= _MAX_SOCKET_PATH, f"socket path too long for AF_UNIX: {socket}"
    env.update(
        AADHELPER_CONFIG=str(home / "config" / "aadhelper" / "config.toml"),
        AADHELPER_SOCKET=str(socket),
        AADHELPER_STATE_DIR=str(home / "state" / "aadhelper"),
    )
    return env


@pytest.fixture(autouse=True)
def _coverage_context(request: pytest.FixtureRequest) -> Iterator[None]:
    """Under ``scripts/test --coverage``: every line run while a test runs, in this process (trio tasks included,
    which coverage's own ``test_function`` context loses between two awaits of the test) and in the Python
    processes the test starts, is recorded under the test's id, so ``coverage report --contexts=REGEX`` can say
    what some tests cover. Does nothing otherwise.

    Not through ``monkeypatch``: an autouse fixture that requests it would set it up before every other fixture
    and so undo a test's own monkeypatching only after those fixtures' teardown.
    """
    encoded = os.environ.get("COVERAGE_PROCESS_CONFIG")  # coverage's serialized configuration (base64 JSON)
    if not encoded:
        yield
        return
    import coverage

    measuring = coverage.Coverage.current()
    config = json.loads(base64.b64decode(encoded))
    config["context"] = request.node.nodeid
    os.environ["COVERAGE_PROCESS_CONFIG"] = base64.b64encode(json.dumps(config).encode()).decode()
    if measuring is not None:
        measuring.switch_context(request.node.nodeid)
    try:
        yield
    finally:
        os.environ["COVERAGE_PROCESS_CONFIG"] = encoded
        if measuring is not None:
            measuring.switch_context("")


def coverage_environ() -> dict[str, str]:
    """coverage.py's variables (set under ``scripts/test --coverage``), for an environment a test builds from
    scratch, so the processes it starts are measured too; empty otherwise."""
    return {key: value for key, value in os.environ.items() if key.startswith("COVERAGE_")}
