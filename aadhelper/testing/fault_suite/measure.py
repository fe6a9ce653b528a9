"""What a fault case measures and how: the polling client, the CLI run, the result and its expectations, the
backoff bound."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from ... import cache, client, protocol
from ...errors import AadhelperError
from ...grants.http import MAX_REPLY_BYTES
from ..authority import SimulatedAuthority
from ..daemon_process import DaemonProcess
from .world import AADHELPER

POLL: Final = 0.2
#: A request answered later than this (seconds) counts as not served.
PROMPT: Final = 5.0
#: Token lifetime of the faulted authorities, and the profiles' min_valid: see the module docstring.

#: The lower bound of the jitter ``cache._backoff`` applies to each backoff step (it scales by 0.5-1.0).
JITTER_FLOOR: Final = 0.5
#: Uses of an injected fault: more than any case can send, so the fault lasts the whole window.


def _socket_buffers() -> int:
    """The most a TCP connection's send and receive buffers can hold here (Linux autotuning maxima)."""
    total = 0
    for name in ("tcp_rmem", "tcp_wmem"):
        try:
            total += int(Path(f"/proc/sys/net/ipv4/{name}").read_text().split()[2])
        except (OSError, IndexError, ValueError):
            total += 32 * 1024 * 1024
    return total


#: Most body bytes the authority may push into one reply the daemon reads: the daemon's limit plus what the
#: kernel's socket buffers take before the reader stops. More means the body was buffered, not cut off.
MAX_BODY_READ: Final = MAX_REPLY_BYTES + _socket_buffers()
#: Longest a CLI call of a case may take (a client's own limit is protocol.REPLY_TIMEOUT).
CLI_TIMEOUT: Final = protocol.REPLY_TIMEOUT + 15

Group = Literal["authority", "config", "git", "process", "keyring", "socket"]


def backoff_bound(window: float) -> int:
    """Most authority requests one entry may send in ``window`` seconds from its first failed request: one per
    backoff step, each step at least :data:`JITTER_FLOOR` of 1 s doubling to 5 min."""
    count, at, step = 1, 0.0, cache.BACKOFF_START
    while True:
        at += JITTER_FLOOR * min(step, cache.BACKOFF_MAX)
        if at > window:
            return count
        count, step = count + 1, step * 2


@dataclass
class Timing:
    """How long a case watches: ``observe`` seconds after the fault bites (a refresh, a broken file, a kill)."""

    observe: float = 40.0
    #: How long the fetcher stays stopped (SIGSTOP) in its case.
    stopped: float = 20.0
    #: The keyring cases' window and how long the keyring stays stopped: short, because they run alone while the
    #: authority cases wait for their refresh (see :func:`run_cases`).
    keyring_observe: float = 4.0
    keyring_stopped: float = 10.0

    @classmethod
    def brief(cls) -> Timing:
        """For the tests: shorter windows, the same cases."""
        return cls(observe=12.0, stopped=8.0, keyring_observe=3.0, keyring_stopped=6.0)


@dataclass(frozen=True)
class KnownDefect:
    """A defect on main that a case shows: the words of the :meth:`Result.problems` line it causes, and what it is
    (for the lead: where it lives). Once it is fixed the case passes; remove it from the case then."""

    symptom: str
    what: str


@dataclass
class Sample:
    """One request of a polling client: when it started (monotonic), how long it took, and what it got."""

    start: float
    seconds: float
    token: str | None
    error: str | None
    exit_code: int | None


@dataclass
class CliRun:
    exit_code: int | None
    stdout: str
    stderr: str
    seconds: float

    @property
    def line(self) -> str:
        lines = [line for line in self.stderr.strip().splitlines() if line.strip()]
        if self.exit_code is None:
            return f"(no answer within {CLI_TIMEOUT:.0f} s)"
        if not lines:
            return "(served)" if self.exit_code == 0 else "(nothing on stderr)"
        return lines[0] if len(lines) == 1 else f"{lines[0]} (+{len(lines) - 1} more lines)"


@dataclass
class Result:
    """What one case measured; the table's row and the tests' assertions."""

    case: str
    group: Group
    daemon_alive: bool = False
    others: tuple[int, int] = (0, 0)
    cached: tuple[int, int] | None = None
    requests: int = 0
    window: float = 0.0
    bound: int | None = None
    counted_by: str = "authority"
    lost: list[str] = field(default_factory=list)
    #: Losses the design accepts (tokens live only in a killed daemon's memory; a sign-in a strict authority
    #: revoked after a rotation nobody received): shown, not counted as problems.
    accepted_loss: list[str] = field(default_factory=list)
    cli: CliRun | None = None
    #: Exit codes the CLI may end with in this case.
    expected_exits: frozenset[int] = frozenset({7})
    #: Lines a polling client or the CLI saw that contain "Traceback" or span several lines.
    bad_output: list[str] = field(default_factory=list)
    note: str = ""
    seconds: float = 0.0
    #: Most body bytes the authority sent in one streamed reply (huge, endless, drip faults).
    body_sent: int = 0
    #: A defect known to make this case fail on main (shown; the tests allow its symptom and nothing else).
    known_defect: KnownDefect | None = None

    def unexplained_problems(self) -> list[str]:
        """The problems a known defect does not explain."""
        known = self.known_defect
        return [p for p in self.problems() if known is None or known.symptom not in p]

    def problems(self) -> list[str]:
        """Every expectation of issue 9 this case missed; empty when it passed."""
        found = []
        if not self.daemon_alive:
            found.append("the daemon died")
        if self.others[0] != self.others[1]:
            found.append(f"other clients served {self.others[0]} of {self.others[1]}")
        if self.cached is not None and self.cached[0] != self.cached[1]:
            found.append(f"cached token served {self.cached[0]} of {self.cached[1]}")
        if self.bound is not None and self.requests > self.bound:
            found.append(f"{self.requests} authority requests in {self.window:.0f} s (bound {self.bound})")
        found += [f"lost: {what}" for what in self.lost]
        if self.cli is not None:
            if self.cli.exit_code not in self.expected_exits:
                found.append(f"client exit {self.cli.exit_code}, expected {sorted(self.expected_exits)}")
            if "Traceback" in self.cli.stderr or len(self.cli.stderr.strip().splitlines()) > 1:
                found.append("the client printed more than one line (or a traceback)")
        found += [f"bad output: {line[:80]}" for line in self.bad_output]
        if self.body_sent > MAX_BODY_READ:
            found.append(f"the daemon read {self.body_sent / 1024**2:.0f} MB of one reply")
        return found


# -- measuring tools ----------------------------------------------------------------------------------------

class Poller:
    """A client asking the daemon for one profile's token every :data:`POLL` seconds, in a thread."""

    def __init__(self, daemon: DaemonProcess, profile: str) -> None:
        self.socket_path, self.profile = daemon.socket_path, profile
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"poll-{profile}", daemon=True)
        self._busy_since: float | None = None

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        # A request still waiting (a wedged daemon) is not waited for: it counts as unserved below.
        self._thread.join(PROMPT)

    def _run(self) -> None:
        while not self._stop.is_set():
            start = self._busy_since = time.monotonic()
            token = error = code = None
            try:
                reply = client.call(protocol.request("token", profile=self.profile), socket_path=self.socket_path)
                token = str(reply.get("access_token"))
            except AadhelperError as exc:
                error, code = exc.one_line(), exc.exit_code
            except Exception as exc:  # a client bug is a finding too, not a silently dead poller
                error = f"unexpected {type(exc).__name__} in the client: {exc}"
            self.samples.append(Sample(start, time.monotonic() - start, token, error, code))
            self._busy_since = None
            self._stop.wait(POLL)

    def served(self, until: float | None = None, since: float = 0.0) -> tuple[int, int]:
        """(served promptly, asked) among requests started between ``since`` and ``until``; one still waiting
        counts as asked."""
        chosen = [s for s in self.samples if s.start >= since and (until is None or s.start < until)]
        ok = sum(1 for s in chosen if s.token is not None and s.seconds <= PROMPT)
        waiting = self._busy_since is not None and time.monotonic() - self._busy_since > PROMPT
        return ok, len(chosen) + (1 if waiting and until is None else 0)

    def bad_output(self) -> list[str]:
        return [s.error for s in self.samples if s.error and ("Traceback" in s.error or "\n" in s.error)]


def run_cli(env: dict[str, str], *args: str, stdin: bytes = b"", program: str = AADHELPER) -> CliRun:
    start = time.monotonic()
    try:
        done = subprocess.run([program, *args], env=env, input=stdin, capture_output=True, timeout=CLI_TIMEOUT,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        return CliRun(None, "", (exc.stderr or b"").decode(errors="replace"), time.monotonic() - start)
    return CliRun(done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"),
                  time.monotonic() - start)


class Background:
    """A function run in a thread; ``result()`` waits for it."""

    def __init__(self, function: Callable[[], CliRun]) -> None:
        self._result: CliRun | None = None
        self._thread = threading.Thread(target=self._run, args=(function,), daemon=True)
        self._thread.start()

    def _run(self, function: Callable[[], CliRun]) -> None:
        self._result = function()

    def result(self) -> CliRun:
        self._thread.join(CLI_TIMEOUT + 5)
        return self._result or CliRun(None, "", "", CLI_TIMEOUT)


def entry_requests(daemon: DaemonProcess, profile: str) -> int:
    """The daemon's own count of authority requests in the last hour for ``profile`` (all its scope sets)."""
    try:
        reply = client.status(socket_path=daemon.socket_path)
    except AadhelperError:
        return 0
    total = 0
    for entry in reply.get("profiles", []):
        if entry.get("name") == profile:
            total += sum(int(t.get("requests_last_hour", 0)) for t in entry.get("tokens", []))
    return total


def alive(daemon: DaemonProcess) -> bool:
    try:
        client.ping(socket_path=daemon.socket_path, timeout=PROMPT)
    except AadhelperError:
        return False
    return daemon.alive()


def sleep_until(deadline: float) -> None:
    time.sleep(max(0.0, deadline - time.monotonic()))


def requests_since(authority: SimulatedAuthority, since: float) -> list[float]:
    return [r.time for r in authority.requests if r.endpoint == "token" and r.time >= since]
