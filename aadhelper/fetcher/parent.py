"""The daemon's side of the token fetcher process: start it, send it fetches, match its replies, restart it.

The first child is forked by :meth:`ProcessFetcher.fork` before the daemon's trio loop (and any thread)
exists (the start-up recipe is :func:`aadhelper.daemon_start.run_daemon`): it starts with every module already
loaded and connects to the keyring while the daemon binds its socket, so the daemon's start-to-first-token time
stays that of one process. A later child (after the first one died) is executed afresh (``python -m
aadhelper.fetcher.child``), because forking a process that runs trio and threads is not safe. Either runs
:func:`aadhelper.fetcher.child.run`. What they say to each other is :mod:`aadhelper.fetcher.wire`.

**Restarts, and no version skew (decided).** Two shapes were possible: fork once and let the child's death end
the daemon (oidc-agent's; systemd's ``Restart=on-failure`` or the next client's autostart brings it back), or
start a new child and make it prove it runs the daemon's code. The second is kept: a fetcher crash (a bug in one
profile's grant, the OOM killer) then costs the requests waiting on it one line and the next fetch a child start
(a fresh interpreter's imports; ~0.3 s on this machine, measured by tests/test_fetcher.py's restart test), while
every cached token of every profile stays served; ending the daemon would drop them all, and a user profile's
next request would wait for a refresh (a full start-to-first-token each, scripts/bench row 7: ~0.26 s, more for
many profiles). What the executed child proves: the daemon passes its :func:`~aadhelper.fetcher.wire.build_id`,
taken when it started; the child compares its own and, after an upgrade under a running daemon, refuses with a
failed ``hello``. The daemon then starts no more children and answers every fetch with one line saying to
restart it.

If the child dies (a bug, the OOM killer), the fetches waiting on it fail with an error that says so, and
the next fetch starts a new child, at most one start per :data:`RESTART_INTERVAL`: a fetch that comes sooner
waits for that start (at most :data:`RESTART_INTERVAL`) rather than failing. A child that stops before answering
anything (it cannot start) doubles the delay before the next start, up to :data:`RESTART_MAX`, and fetches
meanwhile fail at once with one line: such a child is never started per request. At shutdown the daemon closes
its end: the child finishes what may not be interrupted (a refresh-token exchange whose new token must reach the
keyring), tries once more to store a rotated refresh token the keyring refused, and exits; after
:data:`STOP_GRACE` seconds it is killed.

A child that does not answer (stopped with SIGSTOP, or starved of CPU) costs a fetch one clear line after
:data:`FETCH_DEADLINE`, never a hang; the daemon meanwhile serves what it has cached. The child is left running:
killing it could drop a rotated refresh token on its way to the keyring, and its late reply is simply dropped.

The child runs on whichever CPU is free: keyring and authority work no longer take the serving loop's
thread, nor its GIL. It runs at idle CPU priority (:func:`aadhelper.process_setup.run_at_idle_priority`), and
stays there while a client waits: an unprivileged process can lower a priority but never raise one again
(leaving ``SCHED_IDLE`` needs ``CAP_SYS_NICE`` or an ``RLIMIT_NICE`` of 20, which desktops and systemd do not
grant), so the wait is bounded by :data:`FETCH_DEADLINE` instead. Measured on 2 CPUs with two busy loops at
normal priority (15 cold fetches each): p50 0.44 s, max 3.0 s at idle priority, against p50 0.33 s, max 0.43 s
at normal priority; the first fetch of a new child (imports, keyring session, TLS handshake) took 5.4-5.8 s at
idle priority. None failed: all far inside the deadline.

Tests and readers learn the child's state from the log, not from ``/proc``: the daemon logs each start ("token
fetcher forked/started (pid N)") and stop ("token fetcher (pid N) stopped (...)"), and the child logs "token
fetcher running (pid N, SCHED_IDLE)" (debug) once it has its name and priority. Polling the kernel for a
child's name or death raced with the child under CPU load.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from ..config import Profile
from ..errors import AadhelperError, LoginRequired, ProtocolError
from ..tokens import TokenResponse
from . import wire
from .local import SignInStates
from .wire import LineLink, error_of_reply, token_from_wire

if TYPE_CHECKING:
    from types import TracebackType

log = logging.getLogger("aadhelper.fetcher")

CHILD_MODULE = "aadhelper.fetcher.child"
#: Seconds the daemon gives the child at shutdown to finish a refresh exchange.
STOP_GRACE = 10.0
#: Least seconds between two starts of the child (a child that cannot start must not be started per request) ...
RESTART_INTERVAL = 1.0
#: ... doubled after each child that stopped without answering anything, up to this (seconds).
RESTART_MAX = 60.0
#: Longest the daemon waits for the child's answer to a fetch (seconds): longer than a fetch may legitimately take
#: (a keyring read, the authority exchange, a keyring write: each has its own deadline in the child), shorter than
#: the client's 60 s, so a stopped or starved child costs a request one clear line, not a hang.
FETCH_DEADLINE = 40.0
#: Longest the daemon waits for the child's answer to a question for ``status`` (seconds): status must answer
#: even when the child cannot.
STATE_DEADLINE = 5.0
#: Upper end of the descriptors closed in a forked fetcher (os.closerange uses close_range(2) where it can).
MAX_FD = 2**20


@dataclass(eq=False)
class _Call:
    done: trio.Event = field(default_factory=trio.Event)
    reply: dict[str, Any] | None = None


class ChildProcess:
    """A fetcher process this daemon started (forked or executed), waited for with a pidfd where there is one."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._pidfd: int | None = None
        if hasattr(os, "pidfd_open"):
            with contextlib.suppress(OSError):  # kernels before 5.3
                self._pidfd = os.pidfd_open(pid)

    async def wait(self) -> int:
        """The exit code (negative: the signal that killed it), once it has exited."""
        if self.returncode is None:
            if self._pidfd is not None:
                await trio.lowlevel.wait_readable(self._pidfd)
                _, status = os.waitpid(self.pid, 0)
                os.close(self._pidfd)
                self._pidfd = None
            else:
                _, status = await trio.to_thread.run_sync(os.waitpid, self.pid, 0, abandon_on_cancel=True)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


class _Child:
    """One running fetcher process and the calls waiting for its replies."""

    def __init__(self, process: ChildProcess, link: LineLink, started: float) -> None:
        self.process = process
        self.link = link
        self.started = started
        self.pending: dict[int, _Call] = {}
        self.gone = False
        #: Whether the child has answered anything (one that stops before that must not be restarted per request).
        self.answered = False
        #: Why the child refused to serve (its failed hello: another build of aadhelper), else None.
        self.refused: AadhelperError | None = None
        self.stopping = False
        #: Set once the process has exited and been reaped (by :meth:`read_replies`).
        self.exited = trio.Event()
        self._ids = itertools.count(1)

    async def call(self, message: dict[str, Any], deadline: float = FETCH_DEADLINE) -> dict[str, Any]:
        """Send a request and wait for its reply; raises when the child stops first or does not answer within
        ``deadline`` seconds (the child goes on; its late reply is dropped)."""
        if self.gone:
            raise self.stopped()
        call_id = next(self._ids)
        waiting = self.pending[call_id] = _Call()
        try:
            with trio.move_on_after(deadline):
                try:
                    await self.link.send({**message, "id": call_id})
                except (OSError, trio.ClosedResourceError):
                    raise self.stopped() from None
                await waiting.done.wait()
        finally:
            del self.pending[call_id]
        if not waiting.done.is_set():
            log.warning("the token fetcher (pid %d) did not answer a %s request within %.0f s: stopped (SIGSTOP) or "
                        "starved of CPU?", self.process.pid, message.get("op"), deadline)
            raise AadhelperError(f"the token fetcher process did not answer within {deadline:.0f} s",
                                 hint="see the daemon's log; is the fetcher stopped, or the machine overloaded?")
        if waiting.reply is None:
            raise self.stopped()
        return waiting.reply

    async def read_replies(self) -> None:
        """Hand each reply to its call until the child's end closes; then fail the calls still waiting."""
        try:
            while True:
                reply = await self.link.receive()
                if reply is None:
                    break
                if reply.get("op") == wire.HELLO:
                    self.refused = error_of_reply(reply)
                    if self.refused is not None:
                        log.error("the token fetcher (pid %d) refused to start: %s", self.process.pid,
                                  self.refused.one_line())
                    continue
                self.answered = True
                waiting = self.pending.get(reply.get("id"))  # type: ignore[arg-type]
                if waiting is not None:  # else its caller gave up (cancelled)
                    waiting.reply = reply
                    waiting.done.set()
        except ProtocolError as exc:
            log.error("the token fetcher (pid %d) sent a malformed reply (%s); stopping it", self.process.pid,
                      exc.one_line())
            self.process.kill()
        except (OSError, trio.ClosedResourceError) as exc:
            log.error("lost the link to the token fetcher (pid %d): %s", self.process.pid, exc)
            self.process.kill()
        finally:
            self.gone = True
            self.link.close()
            for waiting in self.pending.values():
                waiting.done.set()
        status = await self.process.wait()
        self.exited.set()
        if self.stopping:
            log.info("token fetcher (pid %d) stopped (%s)", self.process.pid, _describe_status(status))
        else:
            log.warning("the token fetcher (pid %d) stopped (%s); the next fetch starts it again", self.process.pid,
                        _describe_status(status))

    def stopped(self) -> AadhelperError:
        if self.refused is not None:
            return self.refused.copy()
        return FetcherStopped("the token fetcher process stopped during the request",
                              hint="see the daemon's log; the next request starts it again")

    async def stop(self) -> None:
        """End the link; give the child STOP_GRACE seconds to finish, then kill it."""
        self.stopping = True
        self.link.finish()
        with trio.CancelScope(shield=True):
            with trio.move_on_after(STOP_GRACE):
                await self.exited.wait()
                return
            log.warning("the token fetcher (pid %d) did not stop within %.0f s; killing it", self.process.pid,
                        STOP_GRACE)
            self.process.kill()
            await self.exited.wait()


class FetcherStopped(AadhelperError):
    """The child process stopped before it answered (the wire code stays the base's ``error``)."""


class ProcessFetcher:
    """A :class:`~aadhelper.fetcher.Fetcher` whose work runs in a child process."""

    def __init__(self, *, secret_store: str | None = None, verbose: bool = False, log_level: str = "info") -> None:
        self._secret_store = secret_store
        self._verbose = verbose
        #: The daemon's log level (``AADHELPER_LOG_LEVEL``/``[daemon] log_level``), which every fetcher logs at.
        self._log_level = log_level
        self._early: tuple[ChildProcess, socket.socket] | None = None
        self._child: _Child | None = None
        self._nursery_cm: Any = None
        self._nursery: trio.Nursery | None = None
        self._starting = trio.Lock()
        #: Seconds from a child's start before another may replace it (grows while children die unanswering).
        self._restart_delay = RESTART_INTERVAL

    def fork(self) -> None:
        """Fork the first fetcher now: before trio runs, while this process has no other thread, after the fetch
        modules are loaded and frozen (:func:`aadhelper.daemon_start.run_daemon` does it in that order)."""
        if threading.active_count() != 1:
            raise RuntimeError("forking the token fetcher needs a process without threads")
        from . import child as fetcher_child

        wire.build_id()  # taken now, from the files this process loaded (see the module docstring)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:  # the fetcher: never returns into the daemon's code
            code = 1
            try:
                ours.close()
                _keep_only_standard_fds_and(theirs.fileno())
                code = fetcher_child.run(theirs, secret_store=self._secret_store, verbose=self._verbose,
                                         log_level=self._log_level)
            except BaseException:  # nothing may escape into the daemon's code
                log.exception("the token fetcher failed")
            finally:
                logging.shutdown()
                os._exit(code)
        theirs.close()
        self._early = (ChildProcess(pid), ours)

    async def __aenter__(self) -> ProcessFetcher:
        self._nursery_cm = trio.open_nursery()
        self._nursery = await self._nursery_cm.__aenter__()
        await self._running_child()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            if self._child is not None:
                await self._child.stop()
        finally:
            assert self._nursery is not None
            self._nursery.cancel_scope.cancel()
            await self._nursery_cm.__aexit__(exc_type, exc, tb)

    def source(self, profile: Profile) -> _RemoteSource:
        return _RemoteSource(self, profile)

    async def sign_in_states(self, profiles: Sequence[str]) -> SignInStates:
        reply = await self.call(wire.sign_in_states_request(profiles), deadline=STATE_DEADLINE, idempotent=True)
        return wire.sign_in_states_from_wire(reply)

    async def credential_states(self, profiles: Sequence[Profile]) -> dict[str, dict[str, Any]]:
        reply = await self.call(wire.credential_states_request(profiles), deadline=STATE_DEADLINE, idempotent=True)
        return wire.credential_states_from_wire(reply)

    async def login_required(self, profile: str) -> LoginRequired | None:
        return (await self.sign_in_states([profile]))[0].get(profile)

    async def unsaved_sign_ins(self) -> tuple[str, ...]:
        return (await self.sign_in_states([]))[1]

    async def call(self, message: dict[str, Any], deadline: float = FETCH_DEADLINE, *,
                   idempotent: bool = False) -> dict[str, Any]:
        """One request to the child; its error reply is raised as the error it carries.

        A request can reach a child that has just died, before the daemon has read its end of stream. An
        ``idempotent`` one (a question, a client-credentials fetch) then waits for the next child and is asked once
        more; a refresh-token exchange is not repeated on its own (the dead child may have rotated the token).
        """
        child = await self._running_child()
        try:
            reply = await child.call(message, deadline)
        except FetcherStopped:
            if not idempotent:
                raise
            log.info("the token fetcher stopped during a %s request; asking the next one", message.get("op"))
            reply = await (await self._running_child()).call(message, deadline)
        error = error_of_reply(reply)
        if error is not None:
            raise error
        return reply

    async def _running_child(self) -> _Child:
        async with self._starting:
            child = self._child
            if child is not None and child.refused is not None:
                raise child.refused.copy()  # another build is installed: only a new daemon can use it
            if child is not None and not child.gone:
                return child
            if child is not None:
                wait = child.started + self._restart_delay - trio.current_time()
                if wait > RESTART_INTERVAL:
                    raise AadhelperError(f"the token fetcher process keeps stopping; starting it again in "
                                         f"{math.ceil(wait)} s", hint="see the daemon's log")
                # Right after one crash: worth waiting for (under the lock, so concurrent requests share the start).
                await trio.sleep(max(0.0, wait))
                self._restart_delay = RESTART_INTERVAL if child.answered \
                    else min(2 * self._restart_delay, RESTART_MAX)
            self._child = child = await self._start()
            return child

    async def _start(self) -> _Child:
        assert self._nursery is not None, "ProcessFetcher used outside `async with`"
        if self._early is not None:
            (process, ours), self._early = self._early, None
            how = "forked"
        else:
            process, ours = self._execute()
            how = "started"
        child = _Child(process, LineLink(trio.socket.from_stdlib_socket(ours)), trio.current_time())
        self._nursery.start_soon(child.read_replies)
        log.info("token fetcher %s (pid %d)", how, process.pid)
        return child

    def _execute(self) -> tuple[ChildProcess, socket.socket]:
        """A fetcher from a fresh interpreter (posix_spawn: quick, and safe in a process with threads)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = [sys.executable, "-m", CHILD_MODULE, "--fd", str(theirs.fileno()), "--build", wire.build_id()]
        if self._secret_store:
            argv += ["--secret-store", self._secret_store]
        if self._verbose:
            argv.append("--verbose")
        argv += ["--log-level", self._log_level]
        try:
            with theirs:
                os.set_inheritable(theirs.fileno(), True)
                pid = os.posix_spawn(sys.executable, argv, os.environ,
                                     file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)])
        except OSError as exc:
            ours.close()
            raise AadhelperError(f"cannot start the token fetcher process: {exc.strerror or exc}",
                                 hint="check the Python installation the daemon runs from") from None
        return ChildProcess(pid), ours


class _RemoteSource:
    """A profile's token source in the fetcher process."""

    def __init__(self, fetcher: ProcessFetcher, profile: Profile) -> None:
        self._fetcher = fetcher
        self._profile = profile

    async def acquire(self, scopes: tuple[str, ...]) -> TokenResponse:
        try:
            reply = await self._fetcher.call(wire.acquire_request(self._profile, scopes),
                                             idempotent=self._profile.credential != "user")
        except AadhelperError as exc:
            if exc.profile is None:  # the fetcher process's own failures know no profile; the user wants it
                exc.profile = self._profile.name
            raise
        return TokenResponse(token=token_from_wire(reply.get("token")))

    def __repr__(self) -> str:
        return f"_RemoteSource(profile={self._profile.name!r})"


def _keep_only_standard_fds_and(keep: int) -> None:
    """In the forked fetcher: close what the daemon had open besides stdio (a systemd socket, for one)."""
    os.closerange(3, keep)
    os.closerange(keep + 1, MAX_FD)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    if devnull != 0:
        os.close(devnull)


def _describe_status(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"
