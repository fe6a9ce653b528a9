"""The token fetcher process: its messages, its side of the socket pair (bad input costs one request or ends
the link, never a crash), the daemon's side (a misbehaving or dying child fails the waiting fetches with one
clear line), and the real daemon's fetcher end to end (forked at start, restarted after a crash, gone with the
daemon)."""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from aadhelper import client, protocol
from aadhelper.config import Profile
from aadhelper.errors import AadhelperError, ProtocolError, SecretMissing, error_from_wire
from aadhelper.fetcher.child import serve_daemon
from aadhelper.fetcher.parent import ChildProcess, _Child
from aadhelper.fetcher.wire import LineLink, profile_from_wire, profile_to_wire, token_from_wire, token_to_wire
from aadhelper.secret_store import MemorySecretStore
from aadhelper.testing import SimulatedAuthority
from aadhelper.testing import daemon_process as testing_daemon
from aadhelper.tokens import Secret, Token
from tests.harness import (
    FETCHER_APP as APP,
)
from tests.harness import (  # noqa: F401 -- fetcher_daemon_env, tenant_authority: fixtures
    TENANT,
    DaemonProcess,
    add_profile,
    cli,
    exited,
    fetcher_daemon_env,
    running_fetcher,
    sensitive,
    tenant_authority,
    wait_for_log,
    wait_until,
)

SCOPE = "https://graph.microsoft.com/.default"


def profile(authority: str = "https://login.microsoftonline.com", ca_bundle: str | None = None) -> Profile:
    return Profile(name="graph", tenant=TENANT, client_id=APP, scopes=(SCOPE,), authority=authority,
                   credential="client_secret", ca_bundle=ca_bundle)


# -- messages ---------------------------------------------------------------------------------------------------


def test_profile_and_token_survive_the_wire() -> None:
    """If a profile and a token go through their wire form (and JSON), then they come back equal."""
    original = profile(ca_bundle="/etc/ca.pem")
    wire = protocol.decode(protocol.encode({"v": 1, "p": profile_to_wire(original)}))["p"]
    assert profile_from_wire(wire, original.scopes) == original
    token = Token(access_token=Secret("eyJ.x.y"), token_type="Bearer", expires_on=1_800_000_000.5,
                  refresh_on=1_799_999_000.0, scopes=(SCOPE,), obtained_at=1_799_996_400.25)
    wire = protocol.decode(protocol.encode({"v": 1, "t": token_to_wire(token)}))["t"]
    assert token_from_wire(wire) == token


@pytest.mark.parametrize("wire", [
    None, [], {"access_token": 5, "token_type": "Bearer", "expires_on": 1, "obtained_at": 0, "scopes": []},
    {"access_token": "a", "token_type": "Bearer", "expires_on": "soon", "obtained_at": 0, "scopes": []},
    {"access_token": "a", "token_type": "Bearer", "expires_on": True, "obtained_at": 0, "scopes": []},
    {"access_token": "a", "token_type": "Bearer", "expires_on": 1, "obtained_at": 0, "scopes": "x"},
    {"access_token": "a", "token_type": "Bearer", "expires_on": 1, "refresh_on": [], "obtained_at": 0, "scopes": []},
])
def test_malformed_tokens_are_protocol_errors(wire: object) -> None:
    """If a token on the wire is malformed, then reading it is a ProtocolError."""
    with pytest.raises(ProtocolError):
        token_from_wire(wire)


@pytest.mark.parametrize("wire", [None, "graph", {"name": "graph"}, {**profile_to_wire(profile()), "tenant": 3},
                                  {**profile_to_wire(profile()), "ca_bundle": 1}])
def test_malformed_profiles_are_protocol_errors(wire: object) -> None:
    with pytest.raises(ProtocolError):
        profile_from_wire(wire, (SCOPE,))


# -- the child's side -------------------------------------------------------------------------------------------


class FetcherLink:
    """The daemon's end of a socket pair whose other end an in-process :func:`serve_daemon` answers."""

    def __init__(self, sock: socket.socket) -> None:
        self.link = LineLink(trio.socket.from_stdlib_socket(sock))

    async def ask(self, **fields: Any) -> dict[str, Any]:
        await self.link.send({"v": protocol.VERSION, **fields})
        reply = await self.link.receive()
        assert reply is not None, "the fetcher hung up"
        return reply


@pytest.fixture
async def fetcher_link(store: MemorySecretStore) -> AsyncIterator[FetcherLink]:
    ours, theirs = socket.socketpair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_daemon, theirs, store)
        link = FetcherLink(ours)
        yield link
        link.link.finish()  # the fetcher exits at end of stream


@pytest.fixture
def store() -> MemorySecretStore:
    return MemorySecretStore()


async def test_child_answers_acquire_with_a_token(fetcher_link: FetcherLink, store: MemorySecretStore,
                                                  authority: SimulatedAuthority, ca_pem_file: Path) -> None:
    """If the daemon asks for a token of a profile whose secret is stored, then the reply carries the id and a token
    the authority issued."""
    secret = "s-" + secrets.token_urlsafe(12)
    authority.add_client(APP, tenant=TENANT, secret=secret)
    store.set("graph", "client_secret", Secret(secret))
    reply = await fetcher_link.ask(op="acquire", id=41, scopes=[SCOPE],
                                   profile=profile_to_wire(profile(authority.url, str(ca_pem_file))))
    assert reply["ok"] and reply["id"] == 41
    token = token_from_wire(reply["token"])
    assert authority.validate(token.header())["aud"] == "https://graph.microsoft.com"


@pytest.mark.parametrize("request_fields, code", [
    ({"op": "acquire", "scopes": [SCOPE], "profile": profile_to_wire(profile())}, "secret_missing"),
    ({"op": "acquire", "scopes": [SCOPE], "profile": {"name": "graph"}}, "protocol"),
    ({"op": "acquire", "scopes": "all", "profile": profile_to_wire(profile())}, "protocol"),
    ({"op": "sign_in_states", "profiles": [7]}, "protocol"),
    ({"op": "format_disk"}, "protocol"),
])
async def test_child_answers_bad_requests_with_an_error_and_keeps_going(
        fetcher_link: FetcherLink, request_fields: dict[str, Any], code: str) -> None:
    """If a request is malformed or cannot be served, then the reply is that error with the request's id, and the
    next request is answered."""
    reply = await fetcher_link.ask(id=7, **request_fields)
    assert reply["id"] == 7 and not reply["ok"] and reply["error"]["code"] == code
    assert "\n" not in reply["error"]["message"]
    states = await fetcher_link.ask(op="sign_in_states", id=8, profiles=["me"])
    assert states["id"] == 8 and states["login_required"]["me"]["code"] == "login_required" and states["unsaved"] == []


async def test_child_hangs_up_on_garbage(store: MemorySecretStore) -> None:
    """If the link carries something that is not a JSON line, then the fetcher stops (the daemon starts another)."""
    ours, theirs = socket.socketpair()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_daemon, theirs, store)
            link = trio.socket.from_stdlib_socket(ours)
            await link.send(b"\x00\xff not json\n")
            assert await link.recv(100) == b""


# -- the daemon's side ------------------------------------------------------------------------------------------


@pytest.fixture
def sleeper() -> Iterator[ChildProcess]:
    """A stand-in child process (the test plays the fetcher on the socket)."""
    process = subprocess.Popen(["sleep", "60"])
    yield ChildProcess(process.pid)
    process.kill()
    process.wait()


@pytest.mark.parametrize("answer", [b"{not json}\n", b'{"v": 99, "id": 1}\n', b""])
async def test_a_bad_or_vanishing_child_fails_the_waiting_fetch(sleeper: ChildProcess, answer: bytes) -> None:
    """If the fetcher answers garbage, a reply of another protocol version, or hangs up, then the waiting call fails
    with one line saying the fetcher stopped, and a garbling fetcher is killed."""
    ours, theirs = socket.socketpair()
    child = _Child(sleeper, LineLink(trio.socket.from_stdlib_socket(ours)), trio.current_time())
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child.read_replies)

            async def play_fetcher() -> None:
                request = await trio.to_thread.run_sync(theirs.recv, 65536)
                assert b'"op":"acquire"' in request
                if answer:
                    theirs.sendall(answer)
                else:
                    theirs.close()
                    os.kill(sleeper.pid, signal.SIGKILL)

            nursery.start_soon(play_fetcher)
            with pytest.raises(AadhelperError, match="token fetcher process stopped") as caught:
                await child.call(protocol.request("acquire"))
            assert "\n" not in caught.value.one_line()
            await child.exited.wait()
    assert child.gone and sleeper.returncode == -signal.SIGKILL


# -- the real daemon --------------------------------------------------------------------------------------------


def token_requests(authority: SimulatedAuthority) -> int:
    return sum(1 for r in authority.requests if r.endpoint == "token")


def process_name(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


@pytest.mark.requires("secret-service")
def test_daemon_forks_its_fetcher_and_restarts_it_after_a_crash(daemon_env: dict[str, str],
                                                                authority: SimulatedAuthority) -> None:
    """If the daemon runs, then its fetcher is a forked child named aadhelper-fetch at idle CPU priority. If the
    fetcher is killed, then cached tokens are still served without it, and the next fetch, right after the daemon
    saw it die, starts a new one that works."""
    with DaemonProcess(daemon_env) as daemon:
        first = running_fetcher(daemon)
        assert process_name(first) == "aadhelper-fetch"
        assert os.sched_getscheduler(first) == os.SCHED_IDLE
        assert os.sched_getscheduler(daemon.pid) == os.SCHED_OTHER
        header = cli(daemon_env, "header", "graph", check=True).stdout
        os.kill(first, signal.SIGKILL)
        death = wait_for_log(daemon, re.escape(f"token fetcher (pid {first}) stopped (killed by SIGKILL)"))
        assert cli(daemon_env, "header", "graph", check=True).stdout == header  # from the daemon's memory
        assert token_requests(authority) == 1
        client.invalidate("graph", socket_path=daemon.socket_path)
        fresh = cli(daemon_env, "header", "graph", check=True).stdout
        assert fresh != header and authority.validate(fresh.strip())
        second = running_fetcher(daemon, after=death.end())
        assert second != first and process_name(second) == "aadhelper-fetch"
        assert os.sched_getscheduler(second) == os.SCHED_IDLE
        log = daemon.log()
    assert f"token fetcher forked (pid {first})" in log
    assert f"token fetcher started (pid {second})" in log


@pytest.mark.requires("secret-service")
def test_every_fetcher_logs_at_the_configured_level(daemon_env: dict[str, str]) -> None:
    """If the config says `[daemon] log_level = "debug"` (no -v), then the forked fetcher and the one started after
    it was killed both log at debug level, as the daemon does."""
    with open(daemon_env["AADHELPER_CONFIG"], "a") as config:
        config.write('\n[daemon]\nlog_level = "debug"\n')
    log_path = Path(daemon_env["AADHELPER_STATE_DIR"]) / "daemon-log-level.log"
    daemon = testing_daemon.DaemonProcess(daemon_env, log_path).start()  # without the harness's -v
    try:
        running = re.compile(r"DEBUG aadhelper\.fetcher: token fetcher running \(pid (\d+),")
        wait_until(lambda: running.search(daemon.log()), timeout=30)
        first = int(running.findall(daemon.log())[0])
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: f"token fetcher (pid {first}) stopped" in daemon.log(), timeout=30)
        client.invalidate("graph", socket_path=daemon.socket_path)
        cli(daemon_env, "header", "graph", check=True)
        wait_until(lambda: len(running.findall(daemon.log())) == 2, timeout=30)
        second = int(running.findall(daemon.log())[1])
        assert second != first and f"token fetcher started (pid {second})" in daemon.log()
    finally:
        daemon.stop()


@pytest.mark.requires("secret-service")
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_fetcher_ends_with_the_daemon(daemon_env: dict[str, str], how: str) -> None:
    """If the daemon stops (SIGTERM) or is killed (SIGKILL), then its fetcher exits too: no process is left behind."""
    daemon = DaemonProcess(daemon_env).start()
    try:
        cli(daemon_env, "header", "graph", check=True)
        fetcher = daemon.fetcher_pid()
        assert fetcher is not None
    finally:
        if how == "SIGTERM":
            assert daemon.stop() == 0
        else:
            daemon.kill()
    wait_until(lambda: exited(fetcher), timeout=15)


def test_error_replies_rebuild_their_class() -> None:
    """A fetcher's error reply becomes the same error class in the daemon (so the cache treats it the same)."""
    error = SecretMissing("no client secret is stored for profile 'graph'", profile="graph", hint="store it")
    rebuilt = error_from_wire(protocol.decode(protocol.encode(protocol.error_reply(error.to_wire())))["error"])
    assert type(rebuilt) is SecretMissing and rebuilt.one_line() == error.one_line()


async def test_a_fetcher_of_another_build_is_refused_and_not_started_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the installed aadhelper is not the build the daemon started from (pip install -U under a running daemon),
    then a fetcher started afresh refuses to serve it: the request gets one line saying to restart the daemon, and
    no further fetcher is started for later requests."""
    from aadhelper.fetcher import wire
    from aadhelper.fetcher.parent import ProcessFetcher

    monkeypatch.setattr(wire, "_build", "0.0.1+the-daemons-own")
    with trio.fail_after(30):
        async with ProcessFetcher(secret_store="memory") as fetcher:
            for _ in range(2):
                with pytest.raises(AadhelperError, match="upgraded while the daemon ran") as caught:
                    await fetcher.sign_in_states(["me"])
                assert "restart the daemon" in caught.value.one_line()
            assert fetcher._child is not None and fetcher._child.refused is not None


def test_the_build_id_changes_with_any_module_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If a module file of the package changes (size or mtime), then the build id changes."""
    from aadhelper.fetcher import wire

    monkeypatch.setattr(wire, "_build", None)
    before = wire.build_id()
    target = Path(wire.__file__)
    info = target.stat()
    try:
        os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))
        monkeypatch.setattr(wire, "_build", None)
        assert wire.build_id() != before
    finally:
        os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))
