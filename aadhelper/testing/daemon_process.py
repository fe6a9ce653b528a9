"""``aadhelper daemon`` as a child process, for tests, benchmarks and users' own CI.

:class:`DaemonProcess` starts the installed console script with a given environment (point
``AADHELPER_SOCKET`` and ``AADHELPER_CONFIG`` somewhere private), writes its output to a log file, waits until it
answers a ping, and stops it with SIGTERM (SIGKILL as a last resort). A context manager stops it even when the
block fails.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from .. import client, paths


class DaemonProcess:
    """One daemon process; ``env`` must contain ``AADHELPER_SOCKET``."""

    def __init__(self, env: Mapping[str, str], log_path: Path, *, args: Iterable[str] = ()) -> None:
        self.env = dict(env)
        self.socket_path = self.env["AADHELPER_SOCKET"]
        self.log_path = log_path
        self.command = [*paths.console_script(), "daemon", *args]
        self.process: subprocess.Popen[bytes] | None = None

    def spawn(self) -> Self:
        """Start the process without waiting for it to answer."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=log)
        return self

    def start(self, timeout: float = 20.0) -> Self:
        """Start and wait until it answers a ping; a daemon that exits or stays silent is an error with its log."""
        self.spawn()
        # Pings every 5 ms: tests start hundreds of daemons, and each answers within ~0.3 s.
        if client.wait_for_daemon(self.socket_path, timeout, exited=lambda: not self.alive(), grace=0.0,
                                  interval=0.005):
            return self
        self.check_alive()
        self.kill()
        raise RuntimeError(f"the daemon did not answer within {timeout} s:\n{self.log()}")

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def fetcher_pid(self) -> int | None:
        """The pid of the daemon's token fetcher process (read from /proc, so Linux only); None when none runs."""
        # Children are listed under the thread that started them, not necessarily the main one.
        for task in Path(f"/proc/{self.pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                children = (task / "children").read_text().split()
                if children:
                    return int(children[0])
        return None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_alive(self) -> None:
        """Raise with the end of the log when the process has exited."""
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"the daemon exited with {self.process.returncode}:\n{self.log()[-2000:]}")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; returns the exit code (None if never started)."""
        if self.process is None:
            return None
        terminate(self.process, timeout)
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def terminate(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; waits for the process either way."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
