"""Socket abuse and a starved fetcher (issue 10's "Done means", issue 9 §3): each case attacks a daemon of its own
from the outside while its cached and cold profiles are asked as usual.

Every attack is bounded in count and time, runs only on the daemon's Unix socket (nothing leaves the machine) and
stops when the case's window ends. They run one at a time after the other cases (:func:`run.run_cases`): a flood or
two busy loops would otherwise slow every other case's daemon and blur its figures. The other-uid cases need root
(CI runs as root); they play the user ``nobody``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from ..daemon_process import DaemonProcess
from .base import Shared, TwoProfileCase
from .measure import CliRun, Result, Timing, run_cli
from .world import FaultWorld

#: The other local user the cases play.
NOBODY: Final = 65534
#: How long a socket case watches (seconds): the attacks are continuous, a few seconds show their effect.
WINDOW: Final = 6.0

Attack = Callable[[str, threading.Event], str]


def _exchange(path: str, payload: bytes, *, half_close: bool = True, timeout: float = 2.0) -> bytes:
    """Send ``payload`` on a new connection and return what the daemon answered before closing (or the timeout)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        with contextlib.suppress(OSError):
            sock.sendall(payload)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        data = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                data += chunk
        return data


def _repeat(payload: Callable[[], bytes], *, half_close: bool = True, limit: int = 2000) -> Attack:
    """An attack sending ``payload()`` on one connection after another; reports how many the daemon answered."""
    def attack(path: str, stop: threading.Event) -> str:
        sent = answered = 0
        while not stop.is_set() and sent < limit:
            sent += 1
            with contextlib.suppress(OSError):
                answered += bool(_exchange(path, payload(), half_close=half_close))
        return f"{sent} sent, {answered} answered"
    return attack


def _huge_lines(path: str, stop: threading.Event) -> str:
    sent = 0
    line = b"x" * (10 * 1024 * 1024)
    while not stop.is_set() and sent < 10:
        sent += 1
        with contextlib.suppress(OSError):
            _exchange(path, line, half_close=False)
    return f"{sent} lines of 10 MB"


def _slowloris(path: str, stop: threading.Event) -> str:
    """200 connections dripping one byte each half second, reopened when the daemon drops them."""
    conns: list[socket.socket] = []
    opened = dropped = 0
    try:
        while not stop.is_set():
            while len(conns) < 200:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(1.0)
                try:
                    sock.connect(path)
                except OSError:
                    sock.close()
                    break
                conns.append(sock)
                opened += 1
            for sock in list(conns):
                try:
                    sock.send(b"{")
                except OSError:
                    dropped += 1
                    conns.remove(sock)
                    sock.close()
            stop.wait(0.5)
    finally:
        for sock in conns:
            sock.close()
    return f"{opened} slow connections, {dropped} dropped by the daemon"


def _burst(path: str, stop: threading.Event) -> str:
    """5,000 clients at once, each one ping: the real thin client from 5,000 threads released together."""
    import resource

    from ... import client, protocol
    from ...errors import AadhelperError

    count = 5000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 2 * count:  # each client holds a socket; the test runner has more
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * count) if hard != resource.RLIM_INFINITY
                                                    else 4 * count, hard))
    barrier = threading.Barrier(count)
    failures: list[str] = []

    def one() -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(30)
        try:
            client.call(protocol.request("ping"), socket_path=path, timeout=60)
        except AadhelperError as exc:
            failures.append(exc.code)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    return f"{count} clients at once, {len(failures)} failed"


def _non_readers(path: str, stop: threading.Event) -> str:
    """50 clients pipelining status requests that never read a reply."""
    conns = []
    dropped = 0
    for _ in range(50):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(0.5)
        sock.connect(path)
        conns.append(sock)
    try:
        line = b'{"v": 1, "op": "status"}\n' * 2000
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.sendall(line)
        stop.wait(WINDOW)
        for sock in conns:
            sock.setblocking(False)
            try:
                while sock.recv(1 << 20):
                    pass
            except BlockingIOError:
                pass  # still open: the daemon has not dropped it
            except OSError:
                dropped += 1
            else:
                dropped += 1  # end of stream: dropped
    finally:
        for sock in conns:
            sock.close()
    return f"50 non-reading clients, {dropped} dropped by the daemon"


def other_uid_client(uid: int = NOBODY) -> str:
    """A Python script that drops to ``uid``, connects to the socket named by its argument and prints what it is
    told. It only reads: the daemon answers a refused peer at once and closes, and an unread request of ours could
    turn that answer into a reset."""
    return f"""
import os, socket, sys
os.setgid({uid}); os.setuid({uid})
with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
    sock.settimeout(5)
    sock.connect(sys.argv[1])
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
sys.stdout.write(data.decode())
"""


def _other_uid(path: str, stop: threading.Event) -> str:
    """A process of another uid reaching the socket (a hard link in a directory it may enter; the socket file made
    connectable): the daemon must refuse it by SO_PEERCRED."""
    folder = Path(tempfile.mkdtemp(prefix="aadfaults-other-"))
    link = folder / "daemon.sock"
    mode = os.stat(path).st_mode & 0o777
    try:
        folder.chmod(0o755)
        os.link(path, link)
        os.chmod(path, 0o666)
        refused = tries = 0
        while not stop.is_set() and tries < 20:
            tries += 1
            done = subprocess.run([sys.executable, "-c", other_uid_client(), str(link)],
                                  capture_output=True, text=True, timeout=10, check=False)
            refused += "permission denied" in done.stdout
            stop.wait(0.2)
        return f"{tries} connections as uid {NOBODY}, {refused} refused"
    finally:
        os.chmod(path, mode)
        shutil.rmtree(folder, ignore_errors=True)


def _busy_loops(path: str, stop: threading.Event) -> str:
    """Two busy loops at normal priority (one per core here), each ending by itself after the window."""
    code = f"import time\nend = time.monotonic() + {WINDOW + 10}\nwhile time.monotonic() < end: pass\n"
    loops = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
    stop.wait(WINDOW + 10)
    for loop in loops:
        loop.kill()
        loop.wait()
    return "2 busy loops"


class SocketCase(TwoProfileCase):
    """An attack on the daemon's socket (or its CPU) while its profiles are used as usual."""

    def __init__(self, name: str, attack: Attack, *, expected: frozenset[int] = frozenset({0}),
                 squat: bool = False) -> None:
        super().__init__(name, "socket")
        self._attack, self._expected, self._squat = attack, expected, squat
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._report: list[str] = []
        self._squatted: Path | None = None

    def observe(self, timing: Timing) -> float:
        return min(timing.observe, WINDOW)

    def attack(self, world: FaultWorld, daemon: DaemonProcess, env: dict[str, str], cold: str,
               result: Result) -> tuple[CliRun, DaemonProcess]:
        result.expected_exits = self._expected
        self._worker = threading.Thread(target=lambda: self._report.append(self._attack(daemon.socket_path,
                                                                                        self._stop)), daemon=True)
        self._worker.start()
        time.sleep(0.5)  # the attack is under way
        if self._squat:
            # Another user created the socket's directory first: the client must refuse it, not talk to it.
            self._squatted = Path(tempfile.mkdtemp(prefix="squatted-", dir=world.root))
            self._squatted.chmod(0o755)
            os.chown(self._squatted, NOBODY, NOBODY)
            return run_cli({**env, "AADHELPER_SOCKET": str(self._squatted / "daemon.sock")}, "token", cold), daemon
        return run_cli(env, "token", cold), daemon

    def restore(self, world: FaultWorld) -> None:
        self._stop.set()
        if self._worker is not None:
            self._worker.join(120)
        if self._squatted is not None:
            shutil.rmtree(self._squatted, ignore_errors=True)

    def run(self, shared: Shared) -> Result:
        result = super().run(shared)
        if self._report:
            result.note = self._report[0]
        return result


def socket_cases() -> list[SocketCase]:
    return [
        SocketCase("socket: random bytes", _repeat(lambda: os.urandom(2048))),
        SocketCase("socket: invalid JSON", _repeat(lambda: b'{"v": 1, "op": \n')),
        SocketCase("socket: wrong types", _repeat(lambda: b'{"v": true, "op": "token", "scopes": 5}\n')),
        SocketCase("socket: 10 MB line", _huge_lines),
        SocketCase("socket: slowloris (200 connections)", _slowloris),
        SocketCase("socket: 5,000 connections at once", _burst),
        SocketCase("socket: half-closed requests", _repeat(lambda: b'{"v": 1, "op": "ping"}')),
        SocketCase("socket: clients that never read", _non_readers),
        SocketCase("socket: squatted fallback directory", lambda path, stop: "", expected=frozenset({10}),
                   squat=True),
        SocketCase("socket: client of another uid", _other_uid),
        SocketCase("fetcher starved by two busy loops", _busy_loops),
    ]
