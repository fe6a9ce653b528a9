"""Process faults around the token fetcher: a keyring that stops answering (unit, and the real gnome-keyring
stopped with SIGSTOP), a fetcher child that dies at once or never answers, the fetcher SIGSTOPped or killed while
the real daemon runs, and a rotated refresh token the keyring refuses when the daemon stops."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from aadhelper.errors import AadhelperError, KeyringUnavailable
from aadhelper.fetcher import KEYRING_DEADLINE, AsyncSecrets
from aadhelper.fetcher_process import FETCH_DEADLINE, ChildProcess, ProcessFetcher
from aadhelper.secret_store import MemorySecretStore
from aadhelper.tokens import Secret

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
