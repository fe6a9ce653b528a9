"""Process faults around the token fetcher: a keyring that stops answering (unit, and the real gnome-keyring
stopped with SIGSTOP), a fetcher child that dies at once or never answers, the fetcher SIGSTOPped or killed while
the real daemon runs, and a rotated refresh token the keyring refuses when the daemon stops."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import pytest
import trio
import trio.testing

from aadhelper import client
from aadhelper.errors import AadhelperError, KeyringUnavailable
from aadhelper.fetcher.local import KEYRING_DEADLINE, AsyncSecrets
from aadhelper.fetcher.parent import FETCH_DEADLINE, RESTART_INTERVAL, ChildProcess, ProcessFetcher
from aadhelper.secret_store import MemorySecretStore
from aadhelper.testing import SimulatedAuthority
from aadhelper.tokens import Secret
from tests.harness import AADHELPER, DaemonProcess, cli, running_fetcher, wait_for_log

TENANT = "contoso.onmicrosoft.com"
SCOPE = "https://graph.microsoft.com/.default"
APP = "22222222-0000-0000-0000-000000000001"


# -- a keyring that stops answering -----------------------------------------------------------------------------


class BlockingStore(MemorySecretStore):
    """An in-memory store whose reads block until ``gate`` is set, as a Secret Service whose process is stopped."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.reads = 0

    def get(self, profile: str, kind: str) -> Secret | None:
        self.reads += 1
        self.entered.set()
        self.gate.wait()
        return super().get(profile, kind)


async def failure_of(call: Callable[[], Awaitable[object]]) -> BaseException:
    """Run ``call`` until it and every other task block; its exception (the test fails if it has not ended)."""
    outcome: list[BaseException] = []

    async def run() -> None:
        try:
            await call()
        except Exception as exc:
            outcome.append(exc)
        else:
            outcome.append(AssertionError("returned"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert outcome, "still waiting"
    return outcome[0]


async def test_a_hung_keyring_call_fails_after_its_deadline_and_later_calls_fail_at_once(
        mock_clock: trio.testing.MockClock) -> None:
    """If a keyring read blocks, then it fails as KeyringUnavailable after KEYRING_DEADLINE (one line naming the
    keyring and what to check); calls made while it still blocks fail at once without queueing behind it; once the
    keyring answers, the next call works."""
    store = BlockingStore()
    store.set("me", "refresh_token", Secret("rt"))
    async_secrets = AsyncSecrets(store)
    try:
        async with trio.open_nursery() as nursery:
            outcome: list[BaseException] = []

            async def first() -> None:
                try:
                    await async_secrets.get("me", "refresh_token")
                except Exception as exc:
                    outcome.append(exc)

            nursery.start_soon(first)
            await trio.to_thread.run_sync(store.entered.wait)
            mock_clock.jump(KEYRING_DEADLINE - 0.5)
            await trio.testing.wait_all_tasks_blocked()
            assert not outcome  # not yet
            mock_clock.jump(1.0)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        (error,) = outcome
        assert isinstance(error, KeyringUnavailable)
        line = error.one_line()
        assert f"did not answer within {KEYRING_DEADLINE:.0f} s" in line and "keyring" in line and "'me'" in line
        assert "\n" not in line and "gnome-keyring" in line

        mock_clock.jump(5.0)
        later = await failure_of(lambda: async_secrets.set("me", "refresh_token", Secret("rt2")))
        assert isinstance(later, KeyringUnavailable) and re.search(r"has not answered for 1[56] s", str(later))
        assert store.reads == 1
    finally:
        store.gate.set()
    await async_secrets.answering()
    assert await async_secrets.get("me", "refresh_token") == Secret("rt")
    assert store.reads == 2


# -- a fetcher child that dies at once, or never answers ---------------------------------------------------------


class DyingFetcher(ProcessFetcher):
    """A ProcessFetcher whose every child has exited before the daemon could send it anything."""

    def __init__(self) -> None:
        super().__init__(secret_store="memory")
        self.starts = 0

    def _execute(self) -> tuple[ChildProcess, socket.socket]:
        self.starts += 1
        pid = os.posix_spawn("/bin/true", ["true"], os.environ)
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped: the daemon's ChildProcess does
        ours, theirs = socket.socketpair()
        theirs.close()
        return ChildProcess(pid), ours


async def test_a_fetcher_that_dies_at_once_is_not_restarted_per_request(
        autojump_clock: trio.testing.MockClock) -> None:
    """If every fetcher child dies before answering, then requests arriving ten times a second for 30 s start at
    most one child per restart delay (1 s, doubling): a handful, not one per request; each request fails with one
    line."""
    fetcher = DyingFetcher()
    errors: set[str] = set()
    async with fetcher:
        end = trio.current_time() + 30
        while trio.current_time() < end:
            with pytest.raises(AadhelperError) as caught:
                await fetcher.call({"v": 1, "op": "unsaved_sign_ins"})
            errors.add(re.sub(r"\d+ s", "N s", caught.value.one_line()))
            await trio.sleep(0.1)
    assert 2 <= fetcher.starts <= 6, fetcher.starts
    assert any("keeps stopping; starting it again in N s" in e for e in errors), errors
    assert all("\n" not in e for e in errors)


async def test_a_fetch_the_child_never_answers_fails_after_the_fetch_deadline(
        autojump_clock: trio.testing.MockClock) -> None:
    """If the fetcher child takes a request and never answers (stopped, or starved of CPU), then the daemon's call
    fails after FETCH_DEADLINE with one line saying so, instead of waiting forever."""
    children: list[subprocess.Popen[bytes]] = []

    class SilentFetcher(ProcessFetcher):
        def _execute(self) -> tuple[ChildProcess, socket.socket]:
            ours, theirs = socket.socketpair()
            with theirs:  # the child holds the other end, which closes when it dies
                children.append(subprocess.Popen(["sleep", "600"], pass_fds=[theirs.fileno()]))
            return ChildProcess(children[-1].pid), ours

    try:
        async with SilentFetcher(secret_store="memory") as fetcher:
            began = trio.current_time()
            with pytest.raises(AadhelperError) as caught:
                await fetcher.call({"v": 1, "op": "acquire"})
            assert trio.current_time() - began == pytest.approx(FETCH_DEADLINE)
            assert f"did not answer within {FETCH_DEADLINE:.0f} s" in caught.value.one_line()
            assert "\n" not in caught.value.one_line()
    finally:
        for child in children:
            child.kill()
            child.wait()


async def test_a_request_right_after_the_fetcher_died_waits_for_its_restart(
        mock_clock: trio.testing.MockClock) -> None:
    """If the fetcher child dies and a request comes within RESTART_INTERVAL of its start, then the request waits for
    the restart (at most RESTART_INTERVAL) and is answered by the new child, instead of failing."""
    async with ProcessFetcher(secret_store="memory") as fetcher:
        assert await fetcher.unsaved_sign_ins() == ()  # real time passes; the mock clock stands still
        first = fetcher._child
        assert first is not None
        first.process.kill()
        await first.exited.wait()
        answers: list[tuple[str, ...]] = []

        async def request() -> None:
            answers.append(await fetcher.unsaved_sign_ins())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(request)
            await trio.testing.wait_all_tasks_blocked()
            assert not answers and fetcher._child is first  # waiting for the restart, not failed
            mock_clock.jump(RESTART_INTERVAL)
        assert answers == [()] and fetcher._child is not first


# -- the real daemon -------------------------------------------------------------------------------------------

# The fetcher tests' world (fixtures `authority`, `daemon_env`): profile `graph` with its secret stored.
from tests.harness import fetcher_daemon_env, tenant_authority  # noqa: E402, F401 -- fixtures


def keyring_pid() -> int:
    """The pid of the process that owns org.freedesktop.secrets on the session bus (as scripts/with-secret-service
    finds it)."""
    reply = subprocess.run(["dbus-send", "--session", "--print-reply=literal", "--dest=org.freedesktop.DBus",
                            "/org/freedesktop/DBus", "org.freedesktop.DBus.GetConnectionUnixProcessID",
                            "string:org.freedesktop.secrets"], capture_output=True, text=True, check=True, timeout=10)
    return int(reply.stdout.split()[-1])


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    """Process ``pid`` stopped (SIGSTOP) for the block, continued (SIGCONT) however the block ends."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.mark.requires("secret-service")
def test_a_stopped_keyring_costs_fetches_one_line_and_the_daemon_recovers_when_it_answers(
        daemon_env: dict[str, str], authority: SimulatedAuthority) -> None:
    """If the Secret Service's process is stopped (SIGSTOP), then a cached token is still served; a fetch fails after
    KEYRING_DEADLINE with one line naming the keyring and its fix (exit 4), and the next one fails at once the same
    way instead of queueing. Once the keyring runs again, the daemon says it answered and the next fetch works."""
    with DaemonProcess(daemon_env) as daemon:
        header = cli(daemon_env, "header", "graph", check=True).stdout
        with stopped(keyring_pid()):
            assert cli(daemon_env, "header", "graph", check=True).stdout == header
            client.invalidate("graph", socket_path=daemon.socket_path)
            hung = cli(daemon_env, "header", "graph")
            again = cli(daemon_env, "header", "graph")
        for result, what in ((hung, f"did not answer within {KEYRING_DEADLINE:.0f} s"), (again, "has not answered")):
            assert result.returncode == 4, result.stderr
            (line,) = result.stderr.strip().splitlines()
            assert what in line and "OS keyring" in line and "'graph'" in line and "gnome-keyring" in line
        wait_for_log(daemon, "the OS keyring answered again")
        fresh = cli(daemon_env, "header", "graph", check=True).stdout
        assert fresh != header and authority.validate(fresh.strip())


@pytest.mark.requires("secret-service")
def test_a_stopped_fetcher_still_lets_the_daemon_serve_cached_tokens(daemon_env: dict[str, str],
                                                                      authority: SimulatedAuthority) -> None:
    """If the token fetcher process is stopped (SIGSTOP), then the daemon still serves cached tokens at once; a
    request that needs a fetch waits for it (bounded by FETCH_DEADLINE), and is answered once the fetcher runs
    again."""
    with DaemonProcess(daemon_env) as daemon:
        fetcher = running_fetcher(daemon)
        header = cli(daemon_env, "header", "graph", check=True).stdout
        cold = None
        try:
            with stopped(fetcher):
                assert cli(daemon_env, "header", "graph", check=True).stdout == header
                client.invalidate("graph", socket_path=daemon.socket_path)
                cold = subprocess.Popen([AADHELPER, "header", "graph"], env=daemon_env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
                assert cli(daemon_env, "status", check=True).returncode == 0  # the daemon answers meanwhile
                assert cold.poll() is None
            out, err = cold.communicate(timeout=FETCH_DEADLINE + 10)
        finally:
            if cold is not None and cold.poll() is None:
                cold.kill()
                cold.wait()
        assert cold.returncode == 0, err
        assert out != header and authority.validate(out.strip())


#: Seconds a busy loop spins at most (it stops itself even if the test is killed).
BUSY_LOOP_LIMIT = 120


@contextmanager
def busy_loops(count: int) -> Iterator[None]:
    """``count`` processes spinning at normal CPU priority (each stops itself after BUSY_LOOP_LIMIT seconds)."""
    code = f"import time\nend = time.monotonic() + {BUSY_LOOP_LIMIT}\nwhile time.monotonic() < end:\n    pass\n"
    loops = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]
    try:
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


@pytest.mark.requires("secret-service")
def test_a_fetcher_starved_of_cpu_by_busy_loops_still_answers(daemon_env: dict[str, str],
                                                             authority: SimulatedAuthority) -> None:
    """If two busy loops at normal priority take both CPUs while the fetcher runs at idle priority, then fetches
    still succeed (the idle fetcher gets the CPU it needs well within FETCH_DEADLINE), and its priority stays idle:
    the daemon's serving loop still goes first."""
    with DaemonProcess(daemon_env) as daemon:
        fetcher = running_fetcher(daemon)
        header = cli(daemon_env, "header", "graph", check=True).stdout
        with busy_loops(2):
            for _ in range(3):
                client.invalidate("graph", socket_path=daemon.socket_path)
                result = cli(daemon_env, "header", "graph")
                assert result.returncode == 0, result.stderr
                assert result.stdout != header and authority.validate(result.stdout.strip())
                header = result.stdout
            assert os.sched_getscheduler(fetcher) == os.SCHED_IDLE
