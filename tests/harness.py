"""Test harness for end-to-end tests: the real daemon as a subprocess, the real CLI, and a leak check.

- :class:`DaemonProcess` is :class:`aadhelper.testing.daemon_process.DaemonProcess` (``aadhelper daemon -v`` as a
  subprocess, started when it answers a ping, stopped with SIGTERM even when the test fails) whose log is recorded.
- :func:`cli` runs the installed ``aadhelper`` console script and returns the completed process.
- :data:`SENSITIVE` collects every secret and token value a test has seen; :func:`assert_no_leaks` fails when
  any of them appears in a daemon log or a CLI's stderr, which every test using this harness checks.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import trio

from aadhelper.cache import TokenCache
from aadhelper.config import Profile
from aadhelper.testing import daemon_process as testing_daemon
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


def wait_until(predicate: object, timeout: float = 10.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def exited(pid: int) -> bool:
    """True once process ``pid`` has exited; a zombie nobody reaped yet counts as exited."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"




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


__all__ = ["AADHELPER", "BASE", "PROFILE", "DaemonProcess", "ScriptedSource", "assert_no_leaks", "cli", "exited",
           "open_cache", "sensitive", "token_of", "wait_until", "wall"]
