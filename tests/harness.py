"""Test harness for end-to-end tests: the real daemon as a subprocess, the real CLI, and a leak check.

- :class:`DaemonProcess` runs ``.venv/bin/aadhelper daemon -v`` with an isolated environment, waits until it
  answers a ping, and stops it with SIGTERM (SIGKILL as a last resort) even when the test fails.
- :func:`cli` runs the installed ``aadhelper`` console script and returns the completed process.
- :data:`SENSITIVE` collects every secret and token value a test has seen; :func:`assert_no_leaks` fails when
  any of them appears in a daemon log or a CLI's stderr, which every test using this harness checks.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from aadhelper import client
from aadhelper.errors import DaemonNotRunning

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


class DaemonProcess:
    """The daemon as a real subprocess; a context manager."""

    def __init__(self, env: Mapping[str, str], *, extra_args: Iterable[str] = (), log_path: Path | None = None) -> None:
        self.env = dict(env)
        self.socket_path = self.env["AADHELPER_SOCKET"]
        self.args = [AADHELPER, "daemon", "-v", *extra_args]
        state = Path(self.env.get("AADHELPER_STATE_DIR", "/tmp"))
        state.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path or state / f"daemon-test-{time.monotonic_ns()}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> DaemonProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.args, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the daemon exited with {self.process.returncode}:\n{self.log()}")
            try:
                client.ping(socket_path=self.socket_path, timeout=1.0)
                return self
            except DaemonNotRunning:
                time.sleep(0.02)
        self.kill()
        raise AssertionError(f"the daemon did not answer within {timeout} s:\n{self.log()}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"the daemon ignored SIGTERM for {timeout} s:\n{self.log()}") from None
        self._record_log()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._record_log()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _record_log(self) -> None:
        _OUTPUTS.append((f"daemon log {self.log_path}", self.log()))

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        if self.alive():
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


__all__ = ["AADHELPER", "DaemonProcess", "assert_no_leaks", "cli", "sensitive", "token_of", "wait_until"]
