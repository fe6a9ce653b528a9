"""The fault-injection suite of issue 9 §3: each case attacks a real daemon process and measures what users see.

One table of cases (:func:`all_cases`), run by ``scripts/faults`` (which prints the figures) and by
``tests/test_fault_suite.py`` (which asserts them: :meth:`Result.problems`). A case measures, over a window
of a client asking every :data:`POLL` seconds:

* **daemon alive** at the end (it answers a ping);
* **other clients served**: a healthy profile of the same daemon asked alongside; answered within
  :data:`PROMPT` seconds;
* **cached token served**: every request made while the token fetched before the fault still had the
  profile's minimum validity got a token;
* **authority requests** the faulted app sent in the window, counted by the simulated authority itself (by the
  daemon's ``status`` when no request can reach the authority: connection refused, a TLS failure), against
  the bound of one request per backoff step (1 s doubling to 5 min, each step at least half its nominal size);
* **anything lost**: a cached token, a stored secret, a sign-in (refresh token) or a configuration the daemon
  had before the fault and no longer has after it (losses the design accepts are shown apart);
* the **one line** the CLI printed for a client without a token, and its exit code: never a traceback.

How the authority faults reach a refresh: the authority issues tokens of :data:`LIFETIME` s and the profile's
``min_valid`` is :data:`MIN_VALID` s, so the daemon refreshes about 30 s after the first token (the spacing
floor of :mod:`aadhelper.refresh_policy`) and that refresh meets the fault while the old token is still
servable: the case sees the cached token served while it has its minimum validity left, then the error line, then
the backoff. Every authority case has an authority of its own and they all run at once against one shared
daemon; config and process faults get a daemon each; the keyring lock and stop cases touch the keyring every
case shares, so they run alone while the authority cases wait for their refresh (:func:`run_cases`); the D-Bus
gone case brings a bus and keyring of its own.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import ssl
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from .. import cache, client, protocol, refresh_policy
from ..errors import AadhelperError
from ..grants.client_credentials import SECRET_KIND as CLIENT_SECRET
from ..grants.http import MAX_REPLY_BYTES
from ..grants.refresh import SECRET_KIND as REFRESH_TOKEN
from ..tokens import Secret
from .authority import SimulatedAuthority
from .daemon_process import DaemonProcess
from .fault_world import AADHELPER, GIT_HELPER, SCOPE, TENANT, USER, USER_CLIENT, FaultWorld
from .faults import Fault, http_date
from .grants import DEVICE_CODE_GRANT

#: Seconds between two requests of a polling client.
POLL: Final = 0.2
#: A request answered later than this (seconds) counts as not served.
PROMPT: Final = 5.0
#: Token lifetime of the faulted authorities, and the profiles' min_valid: see the module docstring.
LIFETIME: Final = 40
MIN_VALID: Final = 5
#: The lower bound of the jitter ``cache._backoff`` applies to each backoff step (it scales by 0.5-1.0).
JITTER_FLOOR: Final = 0.5
#: Uses of an injected fault: more than any case can send, so the fault lasts the whole window.
FOR_EVER: Final = 100_000


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

Group = Literal["authority", "config", "git", "process", "keyring"]
SHARED: Final = "shared"
CONTROL: Final = "fs-control"


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


# -- the cases ------------------------------------------------------------------------------------------------

@dataclass
class Shared:
    """What the cases running side by side share: the world, its daemon, the control client, the timing."""

    world: FaultWorld
    daemon: DaemonProcess
    timing: Timing
    control: Poller | None = None
    #: Authority cases that have their first token (the keyring cases wait for all of them).
    ready: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    #: When (monotonic) the first authority case's refresh meets its fault.
    first_bite: float = math.inf


class Case:
    """One row: ``prepare`` (before the shared daemon starts: profiles go into its config) then ``run``."""

    name: str
    group: Group
    #: Runs alone (it breaks something every case shares: the keyring).
    exclusive: bool = False
    #: See :attr:`Result.known_defect`.
    known_defect: KnownDefect | None = None

    def prepare(self, world: FaultWorld) -> None:
        """Add what the case needs to the world before any daemon starts."""

    def run(self, shared: Shared) -> Result:
        raise NotImplementedError

    @property
    def profile(self) -> str:
        return "fs-" + "".join(c if c.isalnum() else "-" for c in self.name.lower()).strip("-")[:40]


class AuthorityCase(Case):
    """An authority fault met by a background refresh while the old token is still servable (module docstring)."""

    group: Group = "authority"

    def __init__(self, name: str, fault: Callable[[], Fault] | None = None, *,
                 how: Literal["fault", "refused", "tls"] = "fault", exits: frozenset[int] = frozenset({7}),
                 known_defect: KnownDefect | None = None) -> None:
        self.name, self.fault, self.how, self.exits = name, fault, how, exits
        self.known_defect = known_defect
        self.authority: SimulatedAuthority | None = None

    def prepare(self, world: FaultWorld) -> None:
        if self.how == "tls":
            import trustme

            # Its certificate comes from a CA nobody trusts; the profile names the world's CA as usual.
            self.authority = world.authority(token_lifetime=LIFETIME, ssl_context=world.server_context(trustme.CA()))
        else:
            self.authority = world.authority(token_lifetime=LIFETIME)
        world.add_profile(SHARED, self.profile, self.authority, min_valid=MIN_VALID)

    def run(self, shared: Shared) -> Result:
        authority, daemon, timing = self.authority, shared.daemon, shared.timing
        assert authority is not None
        result = Result(self.name, self.group, expected_exits=self.exits)
        env = shared.world.daemon_env(SHARED)
        start = time.monotonic()
        expires = start  # no cached token (TLS: the very first request fails)
        bites = start
        if self.how != "tls":
            try:
                reply = client.get_token(self.profile, socket_path=daemon.socket_path)
            finally:
                shared.ready.release()
            # expires_on is whole seconds, rounded down: the token lives up to 1 s longer than this.
            expires = start + float(reply["expires_on"]) - time.time()
            # The refresh that meets the fault: the spacing floor after the first request.
            bites = start + refresh_policy.MIN_SPACING
            shared.first_bite = min(shared.first_bite, bites)
        else:
            shared.ready.release()
        injected, before = time.time(), entry_requests(daemon, self.profile)
        if self.how == "fault":
            assert self.fault is not None
            authority.inject(self.fault(), times=FOR_EVER)
        elif self.how == "refused":
            authority.stop()
        cli: Background | None = None
        with Poller(daemon, self.profile) as poller:
            if self.how == "tls":
                cli = Background(lambda: run_cli(env, "token", self.profile))
            # The failed refresh leaves the old token served while it has min_valid left; then a client hears why.
            sleep_until(max(bites, expires - MIN_VALID) + 1.5)
            cli = cli or Background(lambda: run_cli(env, "token", self.profile))
            sleep_until(bites + timing.observe)
        result.cli = cli.result()
        end = time.time()
        result.daemon_alive = alive(daemon)
        if shared.control is not None:
            result.others = shared.control.served(since=start)
        if self.how == "tls":
            result.cached = None
        else:
            result.cached = poller.served(until=expires - MIN_VALID - 0.5)
        if self.how == "fault":
            times = requests_since(authority, injected)
            result.window = end - (times[0] if times else injected)
            result.requests = len(times)
            result.body_sent = max((r.body_sent or 0 for r in authority.requests), default=0)
        else:
            result.counted_by = "daemon"
            result.requests = entry_requests(daemon, self.profile) - before
            result.window = end - injected
        # A TLS failure is a configuration error: one request, never retried.
        result.bound = 1 if self.how == "tls" else backoff_bound(result.window)
        result.bad_output = poller.bad_output()
        authority.clear_faults()
        if self.how == "refused":
            authority.start()
        if shared.world.store.get(self.profile, CLIENT_SECRET) is None:
            result.lost.append("the stored client secret")
        return result


#: Found by this suite: a Retry-After of 0 s, or an HTTP-date already past, replaces the backoff step with no wait.
RETRY_AFTER_ZERO: Final = KnownDefect(
    "authority requests", "found by the fault suite: Retry-After 0 (or a past date) means no backoff; only the "
    "request budget stops the retries (cache.py, for the lead)")


def _authority_cases() -> list[Case]:
    fields: list[tuple[str, Callable[[], Fault], frozenset[int]]] = [
        ("200 without access_token", lambda: Fault.reply_fields(access_token=Fault.REMOVE), frozenset({7})),
        ("expires_in missing", lambda: Fault.reply_fields(expires_in=Fault.REMOVE), frozenset({7})),
        ("expires_in 0", lambda: Fault.reply_fields(expires_in=0), frozenset({7})),
        ("expires_in negative", lambda: Fault.reply_fields(expires_in=-3600), frozenset({7})),
        ("expires_in huge (1e999)", lambda: Fault.reply_fields(expires_in=Fault.raw("1e999")), frozenset({0, 7})),
        ("expires_in 10^18", lambda: Fault.reply_fields(expires_in=10**18), frozenset({0, 7})),
        ('expires_in "inf"', lambda: Fault.reply_fields(expires_in="inf"), frozenset({7})),
        ('expires_in "nan"', lambda: Fault.reply_fields(expires_in="nan"), frozenset({7})),
        ("expires_in NaN (bare)", lambda: Fault.reply_fields(expires_in=float("nan")), frozenset({7})),
        ('expires_in "soon" (a string)', lambda: Fault.reply_fields(expires_in="soon"), frozenset({7})),
        ("token_type not Bearer", lambda: Fault.reply_fields(token_type="pop"), frozenset({7})),
    ]
    cases: list[Case] = []
    for code in (500, 502, 503):
        cases.append(AuthorityCase(f"HTTP {code}", lambda code=code: Fault.status(code)))  # type: ignore[misc]
        cases.append(AuthorityCase(f"HTTP {code} + Retry-After 10",
                                   lambda code=code: Fault.status(code, retry_after=10)))  # type: ignore[misc]
    cases += [
        AuthorityCase("429 Retry-After 60 s", lambda: Fault.throttle(60)),
        # A fault is one fixed reply: a date that stays ahead for the whole window, as a fresh one each time would.
        AuthorityCase("429 Retry-After HTTP-date", lambda: Fault.throttle(http_date(time.time() + 600))),
        AuthorityCase("429 Retry-After HTTP-date in the past (clock skew)",
                      lambda: Fault.throttle(http_date(time.time() - 600)), known_defect=RETRY_AFTER_ZERO),
        AuthorityCase("429 Retry-After 0", lambda: Fault.throttle(0), known_defect=RETRY_AFTER_ZERO),
        AuthorityCase("connection refused", how="refused"),
        AuthorityCase("reset mid-body", Fault.reset_mid_body),
        AuthorityCase("accept, never answer", Fault.hang),
        AuthorityCase("drip 1 byte/s", lambda: Fault.drip(1.0)),
        AuthorityCase("100 MB body", Fault.huge_body),
        AuthorityCase("endless chunked body", Fault.endless_body),
        AuthorityCase("malformed JSON", lambda: Fault.malformed('{"access_token": ', content_type="application/json")),
        AuthorityCase("HTML instead of JSON", Fault.malformed),
        *(AuthorityCase(name, fault, exits=exits) for name, fault, exits in fields),
        AuthorityCase("TLS: untrusted certificate", how="tls", exits=frozenset({3})),
    ]
    return cases


class TwoProfileCase(Case):
    """A daemon of its own with a cached profile ``-a`` and a cold one ``-b`` on one authority (long tokens)."""

    #: Whether the cold profile's requests count as "other clients" (not when the fault takes what it needs).
    measures_others = True

    def __init__(self, name: str, group: Group) -> None:
        self.name, self.group = name, group
        self.authority: SimulatedAuthority | None = None

    @property
    def config(self) -> str:
        return self.profile

    def prepare(self, world: FaultWorld) -> None:
        self.authority = world.authority()
        world.add_profiles(self.config, [f"{self.profile}-a", f"{self.profile}-b"], self.authority)

    def run(self, shared: Shared) -> Result:
        world, timing = shared.world, shared.timing
        assert self.authority is not None
        cached, cold = f"{self.profile}-a", f"{self.profile}-b"
        daemon = world.daemon(self.config)
        env = world.daemon_env(self.config)
        result = Result(self.name, self.group)
        try:
            world.token(daemon, cached)
            since = time.time()
            with Poller(daemon, cached) as poller:
                cli, daemon = self.attack(world, daemon, env, cold, result)
                others = Poller(daemon, cold)
                with others:
                    time.sleep(self.observe(timing))
            result.cli = cli
            # Tokens live only in the daemon's memory (by design): a restarted daemon has none to serve.
            result.cached = None if result.accepted_loss else poller.served()
            # Without its keyring the cold profile cannot be served: the CLI column shows what it hears instead.
            result.others = others.served() if self.measures_others else (0, 0)
            result.bad_output = poller.bad_output() + others.bad_output()
            result.daemon_alive = alive(daemon)
            times = requests_since(self.authority, since)
            result.requests = len(times)
            result.window = time.time() - since
            result.bound = backoff_bound(result.window)
        finally:
            self.restore(world)
        return result

    def observe(self, timing: Timing) -> float:
        return timing.observe

    def attack(self, world: FaultWorld, daemon: DaemonProcess, env: dict[str, str], cold: str,
               result: Result) -> tuple[CliRun, DaemonProcess]:
        """Break something; the CLI's run for ``cold`` and the daemon to watch from now on."""
        raise NotImplementedError

    def restore(self, world: FaultWorld) -> None:
        """Undo the attack (idempotent)."""


_GOOD_CONFIGS: dict[str, str] = {}


class ConfigCase(TwoProfileCase):
    """The config file broken while the daemon runs: the last good configuration keeps serving."""

    def __init__(self, name: str, breaker: Callable[[Path], object]) -> None:
        super().__init__(f"config {name}", "config")
        self.breaker = breaker

    def attack(self, world: FaultWorld, daemon: DaemonProcess, env: dict[str, str], cold: str,
               result: Result) -> tuple[CliRun, DaemonProcess]:
        path = world.config_path(self.config)
        _GOOD_CONFIGS[self.config] = path.read_text()
        self.breaker(path)
        result.expected_exits = frozenset({3})
        return run_cli(env, "token", "fs-no-such-profile"), daemon

    def restore(self, world: FaultWorld) -> None:
        path = world.config_path(self.config)
        good = _GOOD_CONFIGS.pop(self.config, None)
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


def _config_cases() -> list[Case]:
    return [
        ConfigCase("garbage (replaced atomically)", _garbage_atomically),
        ConfigCase("emptied, then garbage written", _garbage_in_place),
        # We run as root here, so a mode of 000 would not stop the read: a symlink loop does (ELOOP).
        ConfigCase("unreadable", _symlink_loop),
        ConfigCase("huge (64 MB)", lambda p: os.truncate(p, 64 * 1024**2)),
        ConfigCase("replaced by a FIFO", _fifo),
    ]


class FetcherCase(TwoProfileCase):
    """A process fault of the daemon's fetcher or of the daemon itself."""

    def __init__(self, name: str, how: Literal["kill idle", "kill mid-request", "stop", "kill daemon"], *,
                 known_defect: KnownDefect | None = None) -> None:
        super().__init__(name, "process")
        self.how, self.known_defect = how, known_defect
        self.stopped: int | None = None
        self.timing = Timing()

    def attack(self, world: FaultWorld, daemon: DaemonProcess, env: dict[str, str], cold: str,
               result: Result) -> tuple[CliRun, DaemonProcess]:
        assert self.authority is not None
        fetcher = daemon.fetcher_pid()
        if fetcher is None:
            raise RuntimeError("the daemon runs no fetcher process")
        if self.how == "kill idle":
            os.kill(fetcher, signal.SIGKILL)
            result.expected_exits = frozenset({0})
            return run_cli(env, "token", cold), daemon
        if self.how == "stop":
            os.kill(fetcher, signal.SIGSTOP)
            self.stopped = fetcher
            cli = Background(lambda: run_cli(env, "token", cold))
            time.sleep(self.timing.stopped)
            self.restore(world)
            result.expected_exits = frozenset({0, 7})
            result.note = f"fetcher stopped {self.timing.stopped:.0f} s"
            return cli.result(), daemon
        release, reached = threading.Event(), threading.Event()
        self.authority.inject(Fault.hold(release, reached=reached))
        cli = Background(lambda: run_cli(env, "token", cold))
        try:
            if not reached.wait(20):
                raise RuntimeError("the request never reached the authority")
            if self.how == "kill mid-request":
                os.kill(fetcher, signal.SIGKILL)
                # The fetch died with the process: one line saying so (exit 1, by design), or a retry's outcome.
                result.expected_exits = frozenset({0, 1, 7})
            else:
                daemon.kill()
                result.expected_exits = frozenset({8})
        finally:
            release.set()
        run = cli.result()
        if self.how == "kill daemon":
            daemon = world.daemon(self.config)
            # Tokens live only in the daemon's memory: a new daemon fetches them again (by design).
            result.accepted_loss.append("cached tokens (in memory only, by design)")
            result.note = "daemon restarted"
        return run, daemon

    def restore(self, world: FaultWorld) -> None:
        if self.stopped is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.stopped, signal.SIGCONT)
            self.stopped = None


#: Issue 9 §2: "a cold request right after the fetcher died waits for its restart instead of exit 1". Still so on
#: main with process-faults merged: a request sent before the daemon noticed the death goes to the dead child.
FETCHER_RESTART: Final = KnownDefect(
    "client exit 1", "issue 9 §2: a request right after the fetcher died, before the daemon noticed, gets exit 1 "
    "instead of waiting for the restart (fetcher_process.py, for the lead)")


class RotationCase(Case):
    """kill -9 of the daemon (or its fetcher) while the authority's reply to a refresh-token refresh (which rotated
    the refresh token) is on its way, with or without the authority's reuse grace window (an authority that revokes
    the whole grant when a used refresh token comes back, as strict OAuth servers do).

    The daemon's death must lose nothing: its fetcher still receives the reply and stores the rotated token. The
    fetcher's death before the reply reaches it cannot be saved client-side without a grace window (the authority
    committed a rotation nobody received): that loss is shown as accepted, as tests/test_refresh_e2e.py pins it."""

    group: Group = "process"

    def __init__(self, name: str, *, grace: float, victim: Literal["daemon", "fetcher"] = "daemon",
                 known_defect: KnownDefect | None = None) -> None:
        self.name, self.grace, self.victim, self.known_defect = name, grace, victim, known_defect
        self.authority: SimulatedAuthority | None = None

    def prepare(self, world: FaultWorld) -> None:
        self.authority = world.authority()
        self.authority.refresh_token_reuse_grace = self.grace
        self.authority.add_client(USER_CLIENT, tenant=TENANT, public=True)
        self.authority.add_user(USER, tenant=TENANT)
        world.add_profile(self.profile, self.profile, self.authority, credential="user")
        world.store.set(self.profile, REFRESH_TOKEN, Secret(_device_sign_in(world, self.authority)))

    def run(self, shared: Shared) -> Result:
        world, authority = shared.world, self.authority
        assert authority is not None
        # The waiting client: the daemon's death (8); the fetcher's: one line saying the fetch died with it (1, by
        # design), or a retry's outcome: served with grace, else the revoked sign-in (6), or a failure (7).
        result = Result(self.name, self.group,
                        expected_exits=frozenset({8} if self.victim == "daemon" else {0, 1, 6, 7}))
        env = world.daemon_env(self.profile)
        daemon = world.daemon(self.profile)
        fetcher = daemon.fetcher_pid()
        since = time.time()
        release, reached = threading.Event(), threading.Event()
        authority.inject(Fault.hold_reply(release, reached=reached, grant_type="refresh_token"))
        cli = Background(lambda: run_cli(env, "token", self.profile))
        try:
            if not reached.wait(20):
                raise RuntimeError("the refresh never reached the authority")
            if self.victim == "daemon":
                daemon.kill()
            elif fetcher is not None:
                os.kill(fetcher, signal.SIGKILL)
        finally:
            release.set()
        result.cli = cli.result()
        if self.victim == "daemon":
            daemon = world.daemon(self.profile)
            result.accepted_loss.append("cached tokens (in memory only, by design)")
        with Poller(daemon, self.profile) as poller:
            time.sleep(shared.timing.observe)
        # The daemon refreshes with what the keyring holds: the rotated token, or the sign-in is lost.
        if not any(s.token for s in poller.samples):
            errors = {s.error for s in poller.samples if s.error}
            lost = f"the sign-in: {sorted(errors)[0] if errors else 'no answer'}"
            unavoidable = self.victim == "fetcher" and not self.grace
            (result.accepted_loss if unavoidable else result.lost).append(lost)
        result.bad_output = poller.bad_output()
        result.daemon_alive = alive(daemon)
        result.requests = len(requests_since(authority, since))
        result.window = time.time() - since
        result.bound = backoff_bound(result.window)
        result.note = f"reuse grace {self.grace:.0f} s"
        return result


def _device_sign_in(world: FaultWorld, authority: SimulatedAuthority) -> str:
    """Sign in as :data:`USER` the way ``aadhelper login`` would, directly over HTTPS; the refresh token."""
    context = ssl.create_default_context(cafile=str(world.ca_bundle))
    base = f"{authority.url}/{TENANT}/oauth2/v2.0"

    def post(url: str, form: dict[str, str]) -> dict[str, Any]:
        request = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(), method="POST")
        with urllib.request.urlopen(request, context=context, timeout=10) as reply:
            answer: dict[str, Any] = json.loads(reply.read())
            return answer

    started = post(f"{base}/devicecode", {"client_id": USER_CLIENT,
                                          "scope": f"{SCOPE} openid profile offline_access"})
    authority.approve(started["user_code"], user=USER)
    tokens = post(f"{base}/token", {"grant_type": DEVICE_CODE_GRANT, "client_id": USER_CLIENT,
                                    "device_code": started["device_code"]})
    return str(tokens["refresh_token"])


def _process_cases() -> list[Case]:
    return [
        RotationCase("kill -9 daemon mid-refresh, rotation", grace=0.0),
        RotationCase("kill -9 daemon mid-refresh, rotation, grace", grace=60.0),
        RotationCase("kill -9 fetcher mid-refresh, rotation", grace=0.0, victim="fetcher"),
        RotationCase("kill -9 fetcher mid-refresh, rotation, grace", grace=60.0, victim="fetcher"),
        FetcherCase("kill -9 fetcher, idle", "kill idle", known_defect=FETCHER_RESTART),
        FetcherCase("kill -9 fetcher mid-request", "kill mid-request"),
        FetcherCase("SIGSTOP fetcher", "stop"),
        FetcherCase("kill -9 daemon mid-request", "kill daemon"),
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


def _git_cases() -> list[Case]:
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


class KeyringCase(TwoProfileCase):
    """The keyring locked, or its D-Bus peer stopped, while the daemon runs (runs alone: the keyring is shared)."""

    exclusive = True

    def __init__(self, name: str, how: Literal["lock", "stop"]) -> None:
        super().__init__(name, "keyring")
        self.how = how
        self.stopped: int | None = None
        self.locked = False
        self.timing = Timing()

    def attack(self, world: FaultWorld, daemon: DaemonProcess, env: dict[str, str], cold: str,
               result: Result) -> tuple[CliRun, DaemonProcess]:
        result.expected_exits = frozenset({4})
        if self.how == "lock":
            _lock_keyring()
            self.locked = True
            run = run_cli(env, "token", cold)
            self.restore(world)
            return run, daemon
        pid = _keyring_pid()
        os.kill(pid, signal.SIGSTOP)
        self.stopped = pid
        try:
            cli = Background(lambda: run_cli(env, "token", cold))
            time.sleep(self.timing.keyring_stopped)
        finally:
            self.restore(world)
        run = cli.result()
        # Served once the keyring came back, or a keyring error before: either way no hang.
        result.expected_exits = frozenset({0, 4})
        result.note = (f"gnome-keyring stopped {self.timing.keyring_stopped:.0f} s; the client was answered after "
                       f"{run.seconds:.0f} s")
        return run, daemon

    def observe(self, timing: Timing) -> float:
        return timing.keyring_observe

    def restore(self, world: FaultWorld) -> None:
        if self.stopped is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.stopped, signal.SIGCONT)
            self.stopped = None
        if self.locked:
            _unlock_keyring()
            self.locked = False


class BusGoneCase(TwoProfileCase):
    """The daemon's D-Bus session bus killed while it runs: a bus and gnome-keyring of the case's own (so it does
    not take the suite's keyring with it, and runs alongside the others)."""

    def __init__(self) -> None:
        super().__init__("keyring's D-Bus gone", "keyring")
        self.measures_others = False
        self.processes: list[subprocess.Popen[bytes]] = []
        self.secrets: dict[str, str] = {}

    def prepare(self, world: FaultWorld) -> None:
        self.authority = world.authority()
        for name in (f"{self.profile}-a", f"{self.profile}-b"):
            self.secrets[name] = world.add_profile(self.config, name, self.authority, store=False)

    def run(self, shared: Shared) -> Result:
        folder = shared.world.root / self.profile
        for sub in ("home", "data", "run"):
            (folder / sub).mkdir(parents=True, mode=0o700)
        bus = subprocess.Popen(["dbus-daemon", "--session", "--nofork", "--print-address=1"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.processes.append(bus)
        assert bus.stdout is not None
        address = bus.stdout.readline().decode().strip()
        env = {**shared.world.daemon_env(self.config), "DBUS_SESSION_BUS_ADDRESS": address,
               "XDG_DATA_HOME": str(folder / "data"), "XDG_RUNTIME_DIR": str(folder / "run")}
        keyring = subprocess.Popen(["gnome-keyring-daemon", "--foreground", "--unlock", "--components=secrets"],
                                   env={**env, "HOME": str(folder / "home")}, stdin=subprocess.PIPE,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.processes.append(keyring)
        assert keyring.stdin is not None
        keyring.stdin.write(b"throwaway")
        keyring.stdin.close()
        shared.world.extra_env[self.config] = env
        deadline = time.monotonic() + 10
        for name, secret in self.secrets.items():
            # The keyring takes its bus name a moment after it starts: retry until the secret is stored.
            while run_cli(env, "secret", "set", name, stdin=f"{secret}\n".encode()).exit_code != 0:
                if time.monotonic() > deadline:
                    raise RuntimeError("the case's own gnome-keyring did not come up")
                time.sleep(0.1)
        return super().run(shared)

    def attack(self, world: FaultWorld, daemon: DaemonProcess, env: dict[str, str], cold: str,
               result: Result) -> tuple[CliRun, DaemonProcess]:
        self.processes[0].kill()
        self.processes[0].wait()
        result.expected_exits = frozenset({4})
        return run_cli(env, "token", cold), daemon

    def restore(self, world: FaultWorld) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def _keyring_cases() -> list[Case]:
    return [KeyringCase("keyring locked", "lock"), KeyringCase("keyring's D-Bus peer stopped", "stop"),
            BusGoneCase()]


def _keyring_pid() -> int:
    """The pid of the process that owns org.freedesktop.secrets on the session bus."""
    from jeepney import DBusAddress, new_method_call
    from jeepney.io.blocking import open_dbus_connection

    bus = DBusAddress("/org/freedesktop/DBus", bus_name="org.freedesktop.DBus", interface="org.freedesktop.DBus")
    with open_dbus_connection(bus="SESSION") as connection:
        reply = connection.send_and_get_reply(
            new_method_call(bus, "GetConnectionUnixProcessID", "s", ("org.freedesktop.secrets",)), timeout=5)
    return int(reply.body[0])


def _lock_keyring() -> None:
    import secretstorage

    with contextlib.closing(secretstorage.dbus_init()) as connection:
        secretstorage.get_default_collection(connection).lock()


def _unlock_keyring() -> None:
    """Unlock with the throwaway keyring's password (scripts/with-secret-service exports it): gnome-keyring's
    internal interface takes it directly, as ``gnome-keyring-daemon --unlock`` does (no display for a prompt)."""
    import secretstorage
    from secretstorage.util import DBusAddressWrapper, format_secret, open_session

    password = os.environ.get("AADHELPER_TEST_KEYRING_PASSWORD", "")
    with contextlib.closing(secretstorage.dbus_init()) as connection:
        service = DBusAddressWrapper("/org/freedesktop/secrets", "org.freedesktop.Secret.Service", connection)
        (path,) = service.call("ReadAlias", "s", "default")
        internal = DBusAddressWrapper("/org/freedesktop/secrets",
                                      "org.gnome.keyring.InternalUnsupportedGuiltRiddenInterface", connection)
        master = format_secret(open_session(connection), password.encode(), "text/plain")
        internal.call("UnlockWithMasterPassword", "o(oayays)", path, master)


def all_cases() -> list[Case]:
    """Every case, in table order (fresh objects: a case keeps state between prepare and run)."""
    return [*_authority_cases(), *_config_cases(), *_git_cases(), *_process_cases(), *_keyring_cases()]


# -- running --------------------------------------------------------------------------------------------------

def run_cases(cases: Sequence[Case], timing: Timing, *, progress: Callable[[str], None] = lambda _: None
              ) -> list[Result]:
    """Run ``cases`` against real daemons in a fresh world; the results in the order of ``cases``.

    Needs a Secret Service (run inside ``scripts/with-secret-service``). The authority cases start first, all at
    once; once each has its first token they wait ~30 s for their refresh, and in that time the exclusive cases
    (the keyring ones) run alone; then every other case runs alongside the authority cases' windows.
    """
    for case in cases:
        if isinstance(case, (FetcherCase, KeyringCase)):
            case.timing = timing
    results: dict[str, Result] = {}
    with FaultWorld() as world:
        control_authority = world.authority()
        world.add_profile(SHARED, CONTROL, control_authority)
        # The shared daemon's profiles first; the cases with daemons of their own get ready while the authority
        # cases wait for their refresh.
        first = [c for c in cases if isinstance(c, AuthorityCase)]
        in_shared = [*first, *(c for c in cases if isinstance(c, GitCase))]
        for case in in_shared:
            case.prepare(world)
        shared = Shared(world, world.daemon(SHARED), timing)
        world.token(shared.daemon, CONTROL)

        def start(chosen: Sequence[Case]) -> list[threading.Thread]:
            threads = [threading.Thread(target=lambda c=c: results.__setitem__(c.name, _run_one(c, shared)),
                                        name=f"case-{c.name}", daemon=True) for c in chosen]
            for thread in threads:
                thread.start()
            return threads

        with Poller(shared.daemon, CONTROL) as control:
            shared.control = control
            progress(f"faults: {len(first)} authority cases at once, each ~{30 + timing.observe:.0f} s or more")
            threads = start(first)
            for case in cases:
                if case not in in_shared:
                    case.prepare(world)
            for _ in first:
                shared.ready.acquire(timeout=60)
            for case in [c for c in cases if c.exclusive]:
                progress(f"faults: {case.name} (alone)")
                results[case.name] = _run_one(case, shared)
                if time.monotonic() > shared.first_bite:
                    results[case.name].note += " (overlapped the authority cases' refreshes)"
            rest = [c for c in cases if not c.exclusive and c not in first]
            progress(f"faults: {len(rest)} more cases at once")
            threads += start(rest)
            for thread in threads:
                thread.join(300)
        for result in results.values():  # the temporary folder's name means nothing in a table
            if result.cli is not None:
                result.cli.stderr = result.cli.stderr.replace(str(world.root), "$TMP")
    return [results.get(c.name) or Result(c.name, c.group, note="did not finish") for c in cases]


def _run_one(case: Case, shared: Shared) -> Result:
    start = time.monotonic()
    try:
        result = case.run(shared)
    except Exception as exc:  # one broken case must not lose the others' rows
        result = Result(case.name, case.group, note=f"case failed: {type(exc).__name__}: {exc}")
        result.lost.append("(the case could not run)")
    result.seconds = time.monotonic() - start
    result.known_defect = case.known_defect
    return result


# -- the table ------------------------------------------------------------------------------------------------

COLUMNS: Final = ("case", "daemon alive", "others served", "cached token served", "authority requests (window)",
                  "lost", "client saw (exit)", "verdict")


def row(result: Result) -> tuple[str, ...]:
    def ratio(pair: tuple[int, int] | None) -> str:
        if pair is None:
            return "n/a (none cached)"
        return f"{'yes' if pair[0] == pair[1] else 'NO'} {pair[0]}/{pair[1]}"

    bound = f", bound {result.bound}" if result.bound is not None else ""
    by = "" if result.counted_by == "authority" else ", daemon's count"
    read = f", longest body read {result.body_sent / 1024**2:.1f} MB" if result.body_sent > 64 * 1024 else ""
    requests = f"{result.requests} in {math.ceil(result.window)} s{bound}{by}{read}"
    cli = result.cli
    saw = f"{cli.line} ({cli.exit_code})" if cli is not None else "-"
    problems = result.problems()
    verdict = "ok" if not problems else "FAIL: " + "; ".join(problems)
    if problems and result.known_defect:
        verdict += f" (known: {result.known_defect.what})"
    lost = "; ".join(result.lost + result.accepted_loss) or "nothing"
    name = result.case + (f" [{result.note}]" if result.note else "")
    return (name, "yes" if result.daemon_alive else "NO", ratio(result.others if result.others[1] else None)
            if result.others[1] else "-", ratio(result.cached), requests, lost, saw, verdict)


def table(results: Sequence[Result]) -> str:
    """A Markdown table, one row per case."""
    rows = [COLUMNS, *(row(r) for r in results)]
    cells = [[cell.replace("|", "\\|") for cell in r] for r in rows]
    lines = ["| " + " | ".join(r) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("---" for _ in COLUMNS) + "|")
    return "\n".join(lines)
