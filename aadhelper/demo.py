"""``aadhelper demo``: the whole tool end to end against the built-in simulated authority, in a throwaway home.

It starts the simulated Entra authority and a protected API on loopback, adds a profile with the real CLI,
runs the daemon in this process with an in-memory secret store (so it needs no keyring and runs anywhere),
prints a header through the real thin client, shows a background refresh of a short-lived token while
clients keep being answered at once, calls the API with ``curl -H "$(aadhelper header demo)"``, and cleans up.
Nothing touches the user's config, keyring or socket.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

from . import client, paths
from .daemon import DaemonInfo, serve
from .fetcher import LocalFetcher
from .secret_chunks import CLIENT_SECRET
from .secret_store import MemorySecretStore
from .testing.authority import SimulatedAuthority
from .testing.resource import ProtectedResource
from .tokens import Secret

TENANT = "contoso.onmicrosoft.com"
APP = "00000000-demo-4000-8000-000000000001"
SCOPE = "https://graph.microsoft.com/.default"
LIFETIME = 20  # seconds: short, so a background refresh happens during the demo
MIN_VALID = 5


def say(text: str = "") -> None:
    print(text, flush=True)


def step(text: str) -> None:
    say(f"\n== {text}")


def masked(header: str) -> str:
    """A header shortened for the screen (the demo's tokens are throwaway, but long)."""
    return header if len(header) < 60 else f"{header[:45]}...{header[-8:]}  ({len(header)} chars)"


@contextmanager
def isolated_home() -> Iterator[dict[str, str]]:
    """Environment for the CLI with every path in a fresh private temp folder; removed afterwards."""
    home = Path(tempfile.mkdtemp(prefix="aadhelper-demo-"))
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AADHELPER_")}
        runtime = home / "run"
        runtime.mkdir(mode=0o700)
        env.update(AADHELPER_CONFIG=str(home / "config.toml"), AADHELPER_SOCKET=str(runtime / "daemon.sock"),
                   AADHELPER_STATE_DIR=str(home / "state"), AADHELPER_NO_AUTOSTART="1",
                   XDG_CONFIG_HOME=str(home / "xdg-config"), XDG_RUNTIME_DIR=str(runtime))
        yield env
    finally:
        shutil.rmtree(home, ignore_errors=True)


class BackgroundDaemon:
    """The daemon on its own trio loop in a thread of this process (so the demo can seed its memory store)."""

    def __init__(self, store: MemorySecretStore, env: dict[str, str]) -> None:
        self._store = store
        self._env = env
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self.info: DaemonInfo | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as self._scope:
            async with trio.open_nursery() as nursery:
                self.info = await nursery.start(lambda task_status: serve(
                    LocalFetcher(self._store), config_path=self._env["AADHELPER_CONFIG"],
                    socket_path=self._env["AADHELPER_SOCKET"], handle_signals=False, task_status=task_status))
                self._ready.set()

    def __enter__(self) -> BackgroundDaemon:
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("the daemon did not start")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None and self._scope is not None:
            trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(10)


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*paths.console_script(), *args], env=env, capture_output=True, text=True, timeout=60,
                          check=False)


def timed(function: Callable[[], object], runs: int) -> float:
    """Median wall time of ``function`` in milliseconds."""
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def run_demo() -> int:
    started = time.monotonic()
    with isolated_home() as env, SimulatedAuthority(token_lifetime=LIFETIME) as authority, \
            ProtectedResource(authority) as api:
        step("A simulated Entra ID authority and a protected API on loopback")
        authority.add_tenant(TENANT)
        demo_secret = Secret(os.urandom(16).hex())
        authority.add_client(APP, tenant=TENANT, secret=demo_secret.reveal())
        say(f"authority: {authority.url}/{TENANT}/oauth2/v2.0/token   api: {api.url}")
        say(f"tokens it issues live {LIFETIME} s, so you can watch the daemon refresh one")

        step("Add a profile (the real CLI; config in a temp folder)")
        command = ["profile", "add", "demo", "--tenant", TENANT, "--client-id", APP, "--scope", SCOPE,
                   "--authority", authority.url, "--min-valid", str(MIN_VALID)]
        say("$ aadhelper " + " ".join(command))
        result = cli(env, *command)
        if result.returncode:
            say(result.stderr)
            return result.returncode
        say("(with a real keyring you would now run `aadhelper secret set demo`; the demo keeps it in memory)")
        store = MemorySecretStore()
        store.set("demo", CLIENT_SECRET, demo_secret)

        step("Start the daemon")
        with BackgroundDaemon(store, env) as daemon:
            assert daemon.info is not None
            say(f"listening on {daemon.info.socket_path}")

            step("Ask for a header (first call: the daemon fetches a token)")
            say("$ aadhelper header demo")
            first = cli(env, "header", "demo")
            if first.returncode:
                say(first.stderr)
                return first.returncode
            say(masked(first.stdout.strip()))
            ms = timed(lambda: cli(env, "header", "demo"), 10)
            say(f"10 more calls: median {ms:.1f} ms per `aadhelper header` process (the token is in memory)")
            say(f"authority token requests so far: {authority.count(grant_type='client_credentials')}")

            step("Background refresh: keep asking every second while the token ages")
            previous = first.stdout.strip()
            waits = []
            for second in range(1, 19):
                time.sleep(1)
                begin = time.perf_counter()
                now = client.get_token("demo", socket_path=env["AADHELPER_SOCKET"])
                waits.append((time.perf_counter() - begin) * 1000)
                header = f"Authorization: {now['token_type']} {now['access_token']}"
                left = now["expires_on"] - time.time()
                change = "  <- refreshed in the background" if header != previous else ""
                say(f"t+{second:2d}s  token valid for {left:4.1f} s more{change}")
                previous = header
            say(f"authority token requests: {authority.count(grant_type='client_credentials')}; slowest client wait "
                f"during all that: {max(waits):.1f} ms (nobody waited for the authority)")

            step("Use the header with curl")
            header = cli(env, "header", "demo").stdout.strip()
            if shutil.which("curl"):
                say(f'$ curl -H "$(aadhelper header demo)" {api.url}/v1.0/me')
                out = subprocess.run(curl_command(header, f"{api.url}/v1.0/me"), capture_output=True, text=True,
                                     timeout=30, check=False)
                say(out.stdout.strip()[:300] or out.stderr.strip())
            else:
                say("(curl is not installed; skipping)")
            say(f"the API answered {api.count(status=200)} authorized request(s)")
        step("Stopped the daemon and the authority; removed the temp folder")
    say(f"demo finished in {time.monotonic() - started:.0f} s")
    return 0


def curl_command(header: str, url: str) -> list[str]:
    """The demo's curl call of its loopback API. ``--noproxy '*'``: curl follows ALL_PROXY/HTTP_PROXY, and a proxy
    (which NO_PROXY rarely exempts 127.0.0.1 from) cannot reach this machine's loopback, so the call would fail."""
    return ["curl", "-sS", "--noproxy", "*", "-H", header, url]


def main() -> int:
    try:
        return run_demo()
    except KeyboardInterrupt:
        sys.stderr.write("demo interrupted\n")
        return 130
