"""The config file broken while the daemon runs, and bad input on the git credential helper's stdin."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from ..authority import SimulatedAuthority
from ..daemon_process import DaemonProcess
from .base import SHARED, Case, Shared, TwoProfileCase
from .measure import POLL, CliRun, Group, Result, alive, requests_since, run_cli
from .world import GIT_HELPER, FaultWorld


class ConfigCase(TwoProfileCase):
    """The config file broken while the daemon runs: the last good configuration keeps serving."""

    def __init__(self, name: str, breaker: Callable[[Path], object]) -> None:
        super().__init__(f"config {name}", "config")
        self.breaker = breaker
        #: The file's good text while it is broken.
        self.good: str | None = None

    def attack(self, world: FaultWorld, daemon: DaemonProcess, env: dict[str, str], cold: str,
               result: Result) -> tuple[CliRun, DaemonProcess]:
        path = world.config_path(self.config)
        self.good = path.read_text()
        self.breaker(path)
        result.expected_exits = frozenset({3})
        return run_cli(env, "token", "fs-no-such-profile"), daemon

    def restore(self, world: FaultWorld) -> None:
        path = world.config_path(self.config)
        good, self.good = self.good, None
        if good is None:
            return
        with contextlib.suppress(OSError):  # a daemon blocked opening a FIFO is released
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        _remove(path)
        path.write_text(good)
        path.chmod(0o600)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    elif path.exists() or path.is_symlink():
        path.unlink()


_GARBAGE: Final = "[profiles.x\ntenant = "


def _garbage_atomically(path: Path) -> None:
    new = path.with_name(path.name + ".new")
    new.write_text(_GARBAGE)
    new.chmod(0o600)
    new.replace(path)


def _garbage_in_place(path: Path) -> None:
    """As ``echo ... > config.toml`` does: the file is empty for a moment (here long enough for a request to see
    it: the case's client asks every :data:`POLL` s), then holds garbage."""
    with path.open("w"):
        pass
    time.sleep(2 * POLL + 0.5)
    path.write_text(_GARBAGE)


def _symlink_loop(path: Path) -> None:
    _remove(path)
    path.symlink_to(path)


def _fifo(path: Path) -> None:
    _remove(path)
    os.mkfifo(path, 0o600)


def config_cases() -> list[Case]:
    return [
        ConfigCase("garbage (replaced atomically)", _garbage_atomically),
        ConfigCase("emptied, then garbage written", _garbage_in_place),
        # We run as root here, so a mode of 000 would not stop the read: a symlink loop does (ELOOP).
        ConfigCase("unreadable", _symlink_loop),
        ConfigCase("huge (64 MB)", lambda p: os.truncate(p, 64 * 1024**2)),
        ConfigCase("replaced by a FIFO", _fifo),
    ]


GIT_HOST: Final = "dev.azure.com"


class GitCase(Case):
    """Bad input on the git credential helper's stdin, against the shared daemon."""

    group: Group = "git"

    def __init__(self, name: str, stdin: Callable[[str, str], bytes]) -> None:
        self.name, self.stdin = name, stdin
        self.authority: SimulatedAuthority | None = None

    def prepare(self, world: FaultWorld) -> None:
        self.authority = world.authority()
        world.add_profile(SHARED, self.profile, self.authority, git_url=f"https://{GIT_HOST}/{self.profile}/")

    def run(self, shared: Shared) -> Result:
        assert self.authority is not None
        # Served, a usage error, or a malformed request (9): anything but a crash (1) or a traceback.
        result = Result(self.name, self.group, expected_exits=frozenset({0, 2, 3, 9}))
        since, start = time.time(), time.monotonic()
        # -v: the helper's diagnostics go to stderr; it must still never print a traceback.
        result.cli = run_cli(shared.world.daemon_env(SHARED), "-v", "get", stdin=self.stdin(GIT_HOST, self.profile),
                             program=GIT_HELPER)
        result.window = time.time() - since
        result.requests = len(requests_since(self.authority, since))
        result.bound = 1
        result.daemon_alive = alive(shared.daemon)
        if shared.control is not None:
            result.others = shared.control.served(since=start)
        return result


def git_cases() -> list[Case]:
    """Each request names the case's own profile (host and path), so a helper that reads it right gets a token."""
    return [
        GitCase("git: malformed lines",
                lambda host, path: f"protocol=https\nhost={host}\npath={path}/\nno equals sign\n=\n\n".encode()),
        GitCase("git: invalid UTF-8",
                lambda host, path: f"protocol=https\nhost={host}\npath={path}/\xff\n\n".encode("latin-1")),
        GitCase("git: NUL bytes", lambda host, path: f"protocol=https\nhost={host}\x00\npath={path}/\n\n".encode()),
        GitCase("git: huge value (16 MB)",
                lambda host, path: f"protocol=https\nhost={host}\npath={path}/".encode() + b"a" * 16 * 1024**2
                + b"\n\n"),
        GitCase("git: no terminating blank line",
                lambda host, path: f"protocol=https\nhost={host}\npath={path}/".encode()),
    ]
