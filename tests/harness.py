"""Test harness for end-to-end tests: the real daemon as a subprocess, the real CLI, and a leak check.

- :class:`DaemonProcess` is :class:`aadhelper.testing.daemon_process.DaemonProcess` (``aadhelper daemon -v`` as a
  subprocess, started when it answers a ping, stopped with SIGTERM even when the test fails) whose log is recorded.
- :func:`cli` runs the installed ``aadhelper`` console script and returns the completed process.
- :data:`SENSITIVE` collects every secret and token value a test has seen; :func:`assert_no_leaks` fails when
  any of them appears in a daemon log or a CLI's stderr, which every test using this harness checks.

And every helper more than one test module uses (test modules never import each other; tests/test_suite_rules.py
checks): the CLI without a daemon (:func:`cli_env`, :func:`run`, :func:`run_in_process`), the two-app world of the
end-to-end tests (fixtures ``app_secrets``, ``authority``, ``env``), the signed-in user's world (:func:`user_authority`,
:func:`sign_in_user`, :func:`seed`, :func:`stored`, :func:`header`), the daemon's log (:func:`wait_for_log`),
secret-value helpers, :func:`in_order` and a counting proxy. The fake daemon and device-code sign-in are the
product's test kit (:mod:`aadhelper.testing`), used from there.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import secrets
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from aadhelper import secret_store
from aadhelper.cache import TokenCache
from aadhelper.config import Profile
from aadhelper.secret_store import KeyringSecretStore
from aadhelper.testing import GRAPH, SimulatedAuthority, device_sign_in
from aadhelper.testing import daemon_process as testing_daemon
from aadhelper.testing.directory import ADO
from aadhelper.tokens import Secret, Token, TokenResponse

BIN = Path(sys.executable).parent
AADHELPER = str(BIN / "aadhelper")

#: Values that must never appear in logs or error output (secrets and tokens seen by tests).
SENSITIVE: set[str] = set()
#: Text every daemon and CLI run wrote to stderr, checked against SENSITIVE.
_OUTPUTS: list[tuple[str, str]] = []


def sensitive(*values: str) -> None:
    SENSITIVE.update(v for v in values if v)


def cli(env: Mapping[str, str], *args: str, input: str | None = None, timeout: float = 60,
        check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``aadhelper ARGS`` and record its stderr for the leak check."""
    result = subprocess.run([AADHELPER, *args], env=dict(env), input=input if input is not None else "",
                            capture_output=True, text=True, timeout=timeout)
    _OUTPUTS.append((f"aadhelper {' '.join(args)} (stderr)", result.stderr))
    if check and result.returncode != 0:
        raise AssertionError(f"aadhelper {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
    return result


def token_of(env: Mapping[str, str], *args: str) -> str:
    """``aadhelper token ARGS``: the token (registered as sensitive)."""
    token = cli(env, "token", *args, check=True).stdout.strip()
    sensitive(token)
    return token


class DaemonProcess(testing_daemon.DaemonProcess):
    """The daemon as a real subprocess (verbose log in the state dir), whose log joins the leak check."""

    def __init__(self, env: Mapping[str, str], *, extra_args: Iterable[str] = (), log_path: Path | None = None) -> None:
        state = Path(env.get("AADHELPER_STATE_DIR", "/tmp"))
        super().__init__(env, log_path or state / f"daemon-test-{time.monotonic_ns()}.log", args=["-v", *extra_args])

    def start(self, timeout: float = 20.0) -> DaemonProcess:
        try:
            super().start(timeout)
        except RuntimeError as exc:
            raise AssertionError(str(exc)) from None
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        code = super().stop(timeout)
        _OUTPUTS.append((f"daemon log {self.log_path}", self.log()))
        return code

    def kill(self) -> None:
        super().kill()
        _OUTPUTS.append((f"daemon log {self.log_path}", self.log()))

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        assert_no_leaks()


def assert_no_leaks() -> None:
    """No secret or token seen so far appears in any recorded daemon log or CLI stderr."""
    for where, text in _OUTPUTS:
        for value in SENSITIVE:
            assert value not in text, f"a secret or token value leaked into {where}"


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def in_order(*steps: Callable[[Path], object]) -> Callable[[Path], None]:
    """One step that runs ``steps`` on the same path in turn (a lambda holds one expression, and a tuple of
    calls returning None is not one the type checker accepts)."""
    def run(path: Path) -> None:
        for step in steps:
            step(path)
    return run


def exited(pid: int) -> bool:
    """True once process ``pid`` has exited; a zombie nobody reaped yet counts as exited."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


def wait_for_log(daemon: DaemonProcess, pattern: str, timeout: float = 30, after: int = 0) -> re.Match[str]:
    """The first match of ``pattern`` in the daemon's log (from offset ``after``), waiting for it: tests wait on what
    the daemon and its fetcher report, not on the kernel's view of them."""
    found: list[re.Match[str]] = []

    def seen() -> bool:
        daemon.check_alive()
        match = re.compile(pattern).search(daemon.log(), after)
        if match:
            found.append(match)
        return match is not None

    try:
        wait_until(seen, timeout=timeout)
    except AssertionError:
        tail = daemon.log()[-3000:]
        raise AssertionError(f"no {pattern!r} in the daemon's log within {timeout} s:\n{tail}") from None
    return found[0]


def running_fetcher(daemon: DaemonProcess, after: int = 0) -> int:
    """The pid of a fetcher that says it runs (with its name and priority set), from the daemon's log."""
    return int(wait_for_log(daemon, r"token fetcher running \(pid (\d+), SCHED_IDLE\)", after=after)[1])


# -- the CLI without a daemon: config in tmp_path, the in-memory secret store ---------------------------------

#: ``aadhelper profile add`` arguments of a client-secret profile ``graph`` and a user profile ``ado``.
GRAPH_PROFILE = ["profile", "add", "graph", "--tenant", "contoso.onmicrosoft.com",
                 "--client-id", "11111111-2222-3333-4444-555555555555", "--scope", "https://graph.microsoft.com/.default"]
ADO_PROFILE = ["profile", "add", "ado", "--tenant", "common", "--client-id", "22222222-2222-3333-4444-555555555555",
               "--scope", "499b84ac-1321-427f-aa17-267ca6975798/.default", "--user",
               "--git-url", "https://dev.azure.com/contoso", "--git-url", "https://Contoso.VisualStudio.com/",
               "--git-username", "me@contoso.com"]


def cli_env(isolated_env: dict[str, str]) -> dict[str, str]:
    """conftest's isolated environment without AZURE_* settings, with the in-memory store and no autostart."""
    env = {k: v for k, v in isolated_env.items() if not k.startswith("AZURE_")}
    env.update(AADHELPER_SECRET_STORE="memory", AADHELPER_NO_AUTOSTART="1")
    return env


def run_in_process(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> secret_store.MemorySecretStore:
    """Prepare `main()` to run in this process with env's variables and one in-memory store the test can see."""
    for key in [k for k in os.environ if k.startswith(("AADHELPER_", "AZURE_"))]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        # Not the store's kind: the store is the test's (below), and `secret set`/`login` refuse a memory store.
        if key.startswith("AADHELPER_") and key != secret_store.STORE_ENV:
            monkeypatch.setenv(key, value)
    store = secret_store.MemorySecretStore()
    monkeypatch.setattr(secret_store, "open_secret_store", lambda kind=None: store)
    return store


def run(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run the installed `aadhelper` with stdin from a pipe (:func:`cli`, named for the CLI verb tests)."""
    return cli(env, *args, input=stdin)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("aadhelper: ")
    return lines[0]


# -- two client-secret apps and their profiles `graph` and `other` (the end-to-end tests' world) ---------------

TENANT = "contoso.onmicrosoft.com"
GRAPH_SCOPE = f"{GRAPH}/.default"
APP, OTHER_APP = "11111111-0000-0000-0000-000000000001", "11111111-0000-0000-0000-000000000002"


@pytest.fixture(name="app_secrets")
def two_app_secrets() -> dict[str, str]:
    """The client secrets of APP and OTHER_APP (fixture ``app_secrets``), registered as sensitive."""
    values = {APP: "app-secret-" + secrets.token_urlsafe(16), OTHER_APP: "other-secret-" + secrets.token_urlsafe(16)}
    sensitive(*values.values())
    return values


@pytest.fixture(name="authority")
def two_app_authority(server_ssl_context: ssl.SSLContext, app_secrets: dict[str, str]) -> Iterator[SimulatedAuthority]:
    """The simulated authority over HTTPS with both apps (fixture ``authority``)."""
    with SimulatedAuthority(ssl_context=server_ssl_context) as authority:
        authority.add_tenant(TENANT)
        for app, secret in app_secrets.items():
            authority.add_client(app, tenant=TENANT, secret=secret)
        yield authority


def add_profile(env: dict[str, str], name: str, authority_url: str, ca: Path, *, tenant: str = TENANT,
                client_id: str = APP) -> None:
    cli(env, "profile", "add", name, "--tenant", tenant, "--client-id", client_id, "--scope", GRAPH_SCOPE,
        "--authority", authority_url, "--ca-bundle", str(ca), check=True)


@pytest.fixture(name="env")
def two_profile_env(isolated_env: dict[str, str], ca_pem_file: Path, authority: SimulatedAuthority,
                    app_secrets: dict[str, str], secret_service: KeyringSecretStore) -> dict[str, str]:
    """Two working profiles, `graph` and `other`, with their secrets in the real Secret Service (fixture ``env``)."""
    env = dict(isolated_env, AADHELPER_NO_AUTOSTART="1")
    add_profile(env, "graph", authority.url, ca_pem_file)
    add_profile(env, "other", authority.url, ca_pem_file, client_id=OTHER_APP)
    cli(env, "secret", "set", "graph", input=app_secrets[APP] + "\n", check=True)
    cli(env, "secret", "set", "other", input=app_secrets[OTHER_APP] + "\n", check=True)
    return env


# -- a user who signs in to a public app (the refresh-token tests' world) --------------------------------------

CLIENT = "22222222-0000-0000-0000-000000000001"
USER = "me@contoso.onmicrosoft.com"
RESOURCES = (GRAPH, ADO, "https://management.azure.com", "https://vault.azure.net", "https://storage.azure.com")
#: The kind a user profile's refresh token is stored as.
KIND = "refresh_token"


@contextmanager
def user_authority(server_ssl_context: ssl.SSLContext, *, device_code_interval: int) -> Iterator[SimulatedAuthority]:
    """The simulated authority over HTTPS with the public client (several resources) and the user."""
    with SimulatedAuthority(ssl_context=server_ssl_context) as authority:
        authority.add_tenant(TENANT)
        authority.add_client(CLIENT, tenant=TENANT, public=True, resources=RESOURCES)
        authority.add_user(USER, tenant=TENANT)
        authority.device_code_interval = device_code_interval
        yield authority


def sign_in_user(authority: SimulatedAuthority, context: ssl.SSLContext, scope: str = f"{GRAPH}/.default") -> str:
    """Sign in as USER the way `aadhelper login` would (the kit's device-code sign-in); returns the refresh token."""
    tokens = device_sign_in(authority, tenant=TENANT, client_id=CLIENT, user=USER,
                            scope=f"{scope} openid profile offline_access", ssl_context=context)
    token: str = tokens["refresh_token"]
    return token


@pytest.fixture(name="authority")
def user_app_authority(server_ssl_context: ssl.SSLContext) -> Iterator[SimulatedAuthority]:
    """:func:`user_authority` polled every second, as `aadhelper login` sees it (fixture ``authority``)."""
    with user_authority(server_ssl_context, device_code_interval=1) as authority:
        yield authority


@pytest.fixture(name="env")
def user_profile_env(isolated_env: dict[str, str], ca_pem_file: Path, authority: SimulatedAuthority,
                     secret_service: KeyringSecretStore) -> dict[str, str]:
    """A user profile `me`, as in the issue: tenant organizations, a public client, --user, Graph by default
    (fixture ``env``)."""
    env = dict(isolated_env, AADHELPER_NO_AUTOSTART="1")
    cli(env, "profile", "add", "me", "--tenant", "organizations", "--client-id", CLIENT, "--user",
        "--scope", GRAPH_SCOPE, "--authority", authority.url, "--ca-bundle", str(ca_pem_file), check=True)
    return env


def stored(store: KeyringSecretStore) -> str | None:
    """The refresh token of profile `me` in the real Secret Service (registered as sensitive for the leak checks)."""
    value = store.get("me", KIND)
    if value is None:
        return None
    sensitive(value.reveal())
    return value.reveal()


def seed(authority: SimulatedAuthority, context: ssl.SSLContext, store: KeyringSecretStore, *,
         max_value_chars: int | None = None) -> str:
    """Sign in directly (as a finished `aadhelper login` would have) and store the refresh token of profile `me`."""
    token = sign_in_user(authority, context)
    sensitive(token)
    target = store if max_value_chars is None else KeyringSecretStore(max_value_chars=max_value_chars)
    target.set("me", KIND, Secret(token))
    return token


def header(env: dict[str, str], *args: str) -> str:
    """``aadhelper header me ARGS``: the header line (its token registered as sensitive)."""
    result = cli(env, "header", "me", *args, check=True)
    value = result.stdout.strip()
    assert value.startswith("Authorization: Bearer ")
    sensitive(value.split()[-1])
    return value


# -- one client-secret profile `graph` whose app the test registers (the fetcher tests' world) ------------------

FETCHER_APP = "22222222-0000-0000-0000-000000000001"


@pytest.fixture(name="authority")
def tenant_authority(server_ssl_context: ssl.SSLContext) -> Iterator[SimulatedAuthority]:
    """The simulated authority over HTTPS with the tenant only (fixture ``authority``)."""
    with SimulatedAuthority(ssl_context=server_ssl_context) as authority:
        authority.add_tenant(TENANT)
        yield authority


@pytest.fixture(name="daemon_env")
def fetcher_daemon_env(isolated_env: dict[str, str], ca_pem_file: Path, authority: SimulatedAuthority,
                       secret_service: KeyringSecretStore) -> dict[str, str]:
    """Profile `graph` of FETCHER_APP (registered now, secret in the Secret Service; fixture ``daemon_env``)."""
    secret = "fetch-" + secrets.token_urlsafe(12)
    sensitive(secret)
    authority.add_client(FETCHER_APP, tenant=TENANT, secret=secret)
    env = dict(isolated_env, AADHELPER_NO_AUTOSTART="1")
    add_profile(env, "graph", authority.url, ca_pem_file, client_id=FETCHER_APP)
    cli(env, "secret", "set", "graph", input=secret + "\n", check=True)
    return env


# -- secret values ---------------------------------------------------------------------------------------------

#: A value that looks like a chunk header (its prefix is public: chunking writes it).
HEADER_LIKE = "aadhelper-chunked:v1;slot=0;count=1;sha256=" + "0" * 64


def token(length: int, seed: int = 0) -> str:
    """A token-looking string of ``length`` characters, the same for the same ``seed``."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
    return "".join(random.Random(seed).choices(alphabet, k=length))


def assert_no_secret(text: str, *values: Secret) -> None:
    """No 8-character run of any value (past a header-looking prefix, which is public) appears in ``text``."""
    for value in values:
        plain = value.reveal().removeprefix(HEADER_LIKE)
        leaked = [plain[i:i + 8] for i in range(max(1, len(plain) - 7)) if plain[i:i + 8] in text]
        assert not leaked, f"secret material in {text!r}"


# -- a proxy that only counts ----------------------------------------------------------------------------------

class CountingProxy:
    """A loopback "proxy" that records the first line of each connection and closes it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() (closing alone does not, on Linux)
        self.sock.close()
        self._thread.join(5)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                data = b""
                try:
                    while b"\r\n" not in data and len(data) < 4096:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                except OSError:
                    pass
                self.lines.append(data.split(b"\r\n", 1)[0].decode(errors="replace"))


@pytest.fixture(name="counting_proxy")
def counting_proxy_server() -> Iterator[CountingProxy]:
    """A running :class:`CountingProxy` (fixture ``counting_proxy``)."""
    with CountingProxy() as proxy:
        yield proxy


# -- the token cache's unit-test kit: a scripted token source on trio's clock ---------------------------------

BASE = 1_800_000_000.0
PROFILE = Profile(name="graph", tenant="contoso", client_id="app", scopes=("https://graph.microsoft.com/.default",),
                  authority="https://login.microsoftonline.com", credential="client_secret")


def wall() -> float:
    """Unix time that moves with trio's (mock) clock."""
    return BASE + trio.current_time()


class ScriptedSource:
    """A token source whose replies, latency and failures the test scripts."""

    def __init__(self, lifetime: float = 3600, latency: float = 1.0, refresh_in: float | None = None) -> None:
        self.lifetime = lifetime
        self.latency = latency
        self.refresh_in = refresh_in
        self.calls = 0
        self.failures: list[Exception] = []
        self.issued: list[Token] = []
        #: When each call arrived (the authority's view of the spacing).
        self.times: list[float] = []

    async def acquire(self, scopes: tuple[str, ...]) -> TokenResponse:
        self.calls += 1
        now = wall()
        self.times.append(now)
        await trio.sleep(self.latency)
        if self.failures:
            raise self.failures.pop(0)
        token = Token(access_token=Secret(f"token-{self.calls}"), token_type="Bearer", expires_on=now + self.lifetime,
                      refresh_on=now + self.refresh_in if self.refresh_in else None, scopes=scopes, obtained_at=now)
        self.issued.append(token)
        return TokenResponse(token=token)


def open_cache(source: ScriptedSource, **kwargs: Any) -> TokenCache:
    """A cache whose every profile gets ``source``, with a seeded random generator."""
    factory: Callable[[Profile], ScriptedSource] = lambda profile: source  # noqa: E731
    return TokenCache(factory, clock=wall, rng=random.Random(7), **kwargs)


__all__ = [
    "AADHELPER",
    "ADO",
    "ADO_PROFILE",
    "APP",
    "BASE",
    "CLIENT",
    "FETCHER_APP",
    "GRAPH_PROFILE",
    "GRAPH_SCOPE",
    "HEADER_LIKE",
    "KIND",
    "OTHER_APP",
    "PROFILE",
    "RESOURCES",
    "TENANT",
    "USER",
    "CountingProxy",
    "DaemonProcess",
    "ScriptedSource",
    "add_profile",
    "assert_no_leaks",
    "assert_no_secret",
    "cli",
    "cli_env",
    "counting_proxy_server",
    "exited",
    "fetcher_daemon_env",
    "header",
    "one_error_line",
    "open_cache",
    "run",
    "run_in_process",
    "running_fetcher",
    "seed",
    "sensitive",
    "sign_in_user",
    "stored",
    "tenant_authority",
    "token",
    "token_of",
    "two_app_authority",
    "two_app_secrets",
    "two_profile_env",
    "user_app_authority",
    "user_authority",
    "user_profile_env",
    "wait_for_log",
    "wait_until",
    "wall",
]
