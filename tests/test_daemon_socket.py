"""The daemon's socket handling, in-process on a real Unix socket: bad input never hurts it."""

from __future__ import annotations

import errno
import os
import resource
import socket
import stat
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from aadhelper import client, listener, protocol
from aadhelper.cache import TokenSource
from aadhelper.config import Profile
from aadhelper.daemon import Daemon, DaemonInfo, serve
from aadhelper.errors import (
    AadhelperError,
    ConfigError,
    DaemonAlreadyRunning,
    DaemonNotRunning,
    ProtocolError,
    SecretMissing,
    UnknownProfile,
)
from aadhelper.fetcher import LocalFetcher, SignInStates
from aadhelper.listener import bind_unix_socket, check_peer
from aadhelper.tokens import Secret, TokenResponse
from tests.harness import DaemonProcess, wait_until


class NoSecrets:
    """A secret store with nothing in it (these tests never reach the authority)."""

    def get(self, profile: str, kind: str) -> Secret | None:
        return None

    def set(self, profile: str, kind: str, value: Secret) -> None:
        raise AssertionError("not expected")

    def delete(self, profile: str, kind: str) -> bool:
        return False


async def start_daemon(nursery: trio.Nursery, tmp_path: Path, fetcher: LocalFetcher | None = None) -> DaemonInfo:
    """An in-process daemon with an empty config file at ``tmp_path/config.toml``."""
    config = tmp_path / "config.toml"
    config.write_text("")
    info: DaemonInfo = await nursery.start(lambda task_status: serve(
        fetcher or LocalFetcher(NoSecrets()), config_path=str(config),
        socket_path=str(tmp_path / "run" / "daemon.sock"), handle_signals=False, task_status=task_status))
    return info


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[DaemonInfo]:
    async with trio.open_nursery() as nursery:
        yield await start_daemon(nursery, tmp_path)
        nursery.cancel_scope.cancel()


async def raw_exchange(path: str, payload: bytes, *, shutdown: bool = True) -> bytes:
    """Send raw bytes and return everything the daemon answers before closing."""
    def run() -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(protocol.READ_TIMEOUT + 5)
            sock.connect(path)
            sock.sendall(payload)
            if shutdown:
                sock.shutdown(socket.SHUT_WR)
            data = b""
            try:
                while chunk := sock.recv(65536):
                    data += chunk
            except ConnectionResetError:
                pass  # the daemon closed with our unread bytes pending: a closed connection is an answer too
            return data
    return await trio.to_thread.run_sync(run)


async def call(info: DaemonInfo, op: str, **fields: object) -> dict[str, Any]:
    return await trio.to_thread.run_sync(
        lambda: client.call(protocol.request(op, **fields), socket_path=info.socket_path))


async def test_ping_answers_and_socket_is_private(daemon: DaemonInfo) -> None:
    """If the daemon runs, then ping answers with its pid and the socket is 0600 in a 0700 directory."""
    with trio.fail_after(10):
        reply = await call(daemon, "ping")
    assert reply["pid"] == os.getpid()
    assert stat.S_IMODE(os.stat(daemon.socket_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(daemon.socket_path)).st_mode) == 0o700


@pytest.mark.parametrize("payload, message", [
    (b"this is not json\n", "not JSON"),
    (b"[1, 2]\n", "not a JSON object"),
    (b'{"v": 99, "op": "ping"}\n', "version 99"),
    (b'{"v": 1, "op": "steal"}\n', "unknown operation"),
    (b'{"v": 1}\n', "missing field 'op'"),
    (b'{"v": 1, "op": "token", "scopes": "x"}\n', "scopes"),
    (b'{"v": 1, "op": "token", "min_valid": -1}\n', "min_valid"),
    (b'{"v": 1, "op": "token", "profile": 5}\n', "profile"),
    (b"\xff\xfe\n", "not JSON"),
    (b'{"v": 1, "op": "ping", "x": ' + b"[" * 2000 + b"]" * 2000 + b"}\n", "nested too deeply"),
    (b'{"v": true, "op": "ping"}\n', "version True"),
    (b'{"v": 1.0, "op": "ping"}\n', "version 1.0"),
])
async def test_bad_requests_get_error_replies(daemon: DaemonInfo, payload: bytes, message: str) -> None:
    """If a client sends a malformed request, then it gets a protocol error reply and the daemon keeps answering."""
    with trio.fail_after(10):
        reply = protocol.decode((await raw_exchange(daemon.socket_path, payload)).splitlines()[0])
        assert reply["ok"] is False
        assert reply["error"]["code"] == "protocol"
        assert message in reply["error"]["message"]
        assert (await call(daemon, "ping"))["ok"] is True


async def test_request_ended_by_eof_instead_of_a_newline_is_answered(daemon: DaemonInfo) -> None:
    """If a client sends a request without its final newline and then closes its side, then it still gets the
    reply (it used to get nothing)."""
    with trio.fail_after(10):
        data = await raw_exchange(daemon.socket_path, b'{"v": 1, "op": "ping"}')
        assert protocol.decode(data.splitlines()[0])["ok"] is True


async def test_client_that_never_reads_loses_its_connection(daemon: DaemonInfo) -> None:
    """If a client pipelines thousands of requests and never reads a reply, then once the socket buffers are full the
    daemon drops it after WRITE_TIMEOUT instead of holding its connection slot for good, and keeps serving others."""
    def flood() -> tuple[int, bool]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(daemon.socket_path)
            sock.settimeout(protocol.WRITE_TIMEOUT * 4)
            sent = 0
            try:
                for _ in range(200_000):  # bounded: the daemon stops reading once its replies back up
                    sock.sendall(b'{"v": 1, "op": "status"}\n')
                    sent += 1
            except (TimeoutError, OSError):
                pass  # our own sends block (the daemon stopped reading) or the daemon closed: both expected
            replies, closed = 0, False
            try:
                while chunk := sock.recv(1 << 20):
                    replies += chunk.count(b"\n")
                closed = True
            except ConnectionResetError:
                closed = True
            except TimeoutError:
                closed = False
            return sent - replies, closed

    with trio.fail_after(protocol.WRITE_TIMEOUT * 12):
        unanswered, closed = await trio.to_thread.run_sync(flood)
        assert closed and unanswered > 0
        assert (await call(daemon, "ping"))["ok"] is True


async def test_oversized_request_is_refused(daemon: DaemonInfo) -> None:
    """If a request exceeds the size cap, then the daemon answers with an error and closes the connection."""
    with trio.fail_after(10):
        data = await raw_exchange(daemon.socket_path, b"x" * (protocol.MAX_REQUEST_BYTES + 10), shutdown=False)
        if data:  # the reply, unless the reset overtook it
            reply = protocol.decode(data.splitlines()[0])
            assert "larger than" in reply["error"]["message"]
        assert (await call(daemon, "ping"))["ok"] is True


async def test_half_written_request_is_dropped(daemon: DaemonInfo) -> None:
    """If a client writes half a request and goes quiet, then the daemon closes the connection after its read
    timeout without replying, and keeps answering others; if it ends the half request with EOF, then that is a
    malformed request and gets its protocol error."""
    with trio.fail_after(protocol.READ_TIMEOUT + 10):
        data = await raw_exchange(daemon.socket_path, b'{"v": 1, "op": "pi', shutdown=False)
        assert data == b""
        data = await raw_exchange(daemon.socket_path, b'{"v": 1, "op": "pi')  # EOF mid-line
        assert protocol.decode(data.splitlines()[0])["error"]["code"] == "protocol"
        assert (await call(daemon, "ping"))["ok"] is True


async def test_several_requests_on_one_connection(daemon: DaemonInfo) -> None:
    """If a client sends two requests on one connection, then it gets two replies in order."""
    with trio.fail_after(10):
        data = await raw_exchange(daemon.socket_path, protocol.encode(protocol.request("ping")) * 2)
        assert [protocol.decode(line)["ok"] for line in data.splitlines()] == [True, True]


async def test_unknown_profile_and_empty_config_are_typed_errors(daemon: DaemonInfo) -> None:
    """If a client asks for a profile that does not exist, then it gets UnknownProfile; with no profile name and no
    default, a ConfigError that says how to pick one."""
    with trio.fail_after(10):
        with pytest.raises(UnknownProfile):
            await call(daemon, "token", profile="nope")
        with pytest.raises(ConfigError):
            await call(daemon, "token")


async def test_second_daemon_on_same_socket_is_refused(daemon: DaemonInfo) -> None:
    """If a daemon already owns the socket, then binding another fails with DaemonAlreadyRunning."""
    with pytest.raises(DaemonAlreadyRunning):
        bind_unix_socket(daemon.socket_path)


def test_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    """If a dead daemon left its socket file behind, then a new daemon replaces it."""
    path = str(tmp_path / "d" / "daemon.sock")
    os.makedirs(os.path.dirname(path), mode=0o700)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens
    sock, lock_fd = bind_unix_socket(path)
    try:
        assert stat.S_ISSOCK(os.stat(path).st_mode)
    finally:
        sock.close()
        os.close(lock_fd)


def test_non_socket_file_at_socket_path_is_not_deleted(tmp_path: Path) -> None:
    """If a regular file sits where the socket should be, then the daemon refuses rather than deleting it."""
    path = tmp_path / "d" / "daemon.sock"
    path.parent.mkdir(mode=0o700)
    path.write_text("precious")
    with pytest.raises(ConfigError, match="not a socket"):
        bind_unix_socket(str(path))
    assert path.read_text() == "precious"


def test_peer_check_accepts_only_own_uid_and_root() -> None:
    """If a peer's uid differs from the daemon's (and is not root), then the check refuses it."""
    assert check_peer(1000, 1000)
    assert check_peer(0, 1000)
    assert not check_peer(1001, 1000)


async def test_client_without_daemon_says_how_to_start_one(tmp_path: Path) -> None:
    """If no daemon runs, then the client raises DaemonNotRunning with the command that starts one."""
    with pytest.raises(DaemonNotRunning) as caught:
        client.call(protocol.request("ping"), socket_path=str(tmp_path / "none.sock"))
    assert "aadhelper daemon" in caught.value.one_line()


def test_protocol_error_has_one_line_message() -> None:
    """If a reply is not JSON, then decode raises ProtocolError whose message is one line without the payload."""
    with pytest.raises(ProtocolError) as caught:
        protocol.decode(b"secret-looking-garbage")
    assert "secret-looking-garbage" not in caught.value.one_line()


async def test_broken_config_is_reported_per_request_and_recovers(tmp_path: Path) -> None:
    """If the config file is broken while the daemon runs, then requests and status report the ConfigError (naming
    the file) while the daemon keeps running, and fixing the file is picked up without a restart."""
    config = tmp_path / "config.toml"
    async with trio.open_nursery() as nursery:
        info = await start_daemon(nursery, tmp_path)
        with trio.fail_after(10):
            config.write_text("[profiles.p\ntenant = ")
            with pytest.raises(ConfigError) as caught:
                await call(info, "token", profile="p")
            assert str(config) in caught.value.one_line()
            status = await call(info, "status")
            assert status["daemon"]["config_error"]["code"] == "config"
            config.write_text('[profiles.p]\ntenant = "t.example.com"\nclient_id = "c"\n'
                              'scopes = ["https://graph.microsoft.com/.default"]\n')
            # The profile is usable again: the failure now is the missing secret, not the config.
            with pytest.raises(SecretMissing):
                await call(info, "token", profile="p")
        nursery.cancel_scope.cancel()


class FetcherDown(LocalFetcher):
    """A fetcher that cannot answer (as while a fetcher process restarts)."""

    async def sign_in_states(self, profiles: Sequence[str]) -> SignInStates:
        raise AadhelperError("the token fetcher process stopped during the request")


async def test_status_answers_while_the_fetcher_cannot(tmp_path: Path) -> None:
    """If the fetcher cannot say whether a user profile is signed in, then status still answers, for every
    profile, without a login verdict it does not have."""
    async with trio.open_nursery() as nursery:
        info = await start_daemon(nursery, tmp_path, FetcherDown(NoSecrets()))
        (tmp_path / "config.toml").write_text(
            '[profiles.me]\ntenant = "organizations"\nclient_id = "c"\ncredential = "user"\n'
            'scopes = ["https://graph.microsoft.com/.default"]\n')
        with trio.fail_after(10):
            status = await call(info, "status")
        assert [p["name"] for p in status["profiles"]] == ["me"]
        assert status["profiles"][0]["tokens"] == []
        nursery.cancel_scope.cancel()


# -- the accept loop: connection cap and running out of descriptors ------------------------------------


def connect_and_send(path: str, payload: bytes) -> socket.socket:
    """A non-blocking client that has connected and sent ``payload`` (the kernel queues it until accepted)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.sendall(payload)
    sock.setblocking(False)
    return sock


async def reply_of(sock: socket.socket) -> bytes | None:
    """The reply line waiting on ``sock`` once the daemon has done all it can, or None when there is none."""
    await trio.testing.wait_all_tasks_blocked()
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return None


async def wait_for_reply(sock: socket.socket) -> bytes:
    while (data := await reply_of(sock)) is None:
        await trio.sleep(0.01)
    return data


PING = protocol.encode(protocol.request("ping"))


async def test_clients_over_the_connection_cap_wait_for_a_free_slot(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """If more clients connect than the daemon serves at once, then the extra one waits (not refused, not
    answered) until a connection ends, and is then answered."""
    monkeypatch.setattr(listener, "MAX_CONNECTIONS", 2)
    async with trio.open_nursery() as nursery:
        info = await start_daemon(nursery, tmp_path)
        with trio.fail_after(10):
            # Two idle connections take both slots (the daemon waits for their request line).
            held = [connect_and_send(info.socket_path, b"") for _ in range(2)]
            waiting = connect_and_send(info.socket_path, PING)
            try:
                assert await reply_of(waiting) is None
                held[0].close()
                assert protocol.decode(await wait_for_reply(waiting))["ok"] is True
            finally:
                for sock in (*held, waiting):
                    sock.close()
        nursery.cancel_scope.cancel()


def test_running_out_of_descriptors_pauses_accepting_without_dying(isolated_env: dict[str, str]) -> None:
    """If accept() fails because the daemon has no file descriptor left, then it logs why, keeps trying, and
    answers the waiting client once a descriptor is free again.

    A real daemon process whose descriptor limit the test lowers (prlimit) to the lowest number it has free, so
    that accept() fails with EMFILE while everything already open keeps working.
    """
    env = dict(isolated_env, AADHELPER_SECRET_STORE="memory")
    with DaemonProcess(env) as daemon:
        soft, hard = resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE)
        used = {int(fd) for fd in os.listdir(f"/proc/{daemon.pid}/fd")}
        lowest_free = min(set(range(len(used) + 1)) - used)
        resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (lowest_free, hard))
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as waiting:
                waiting.settimeout(30)
                waiting.connect(daemon.socket_path)  # queued by the kernel: no descriptor needed yet
                waiting.sendall(PING)
                def paused_accepting() -> bool:
                    daemon.check_alive()  # raises (with the log) if the daemon died instead of waiting
                    return "cannot accept a connection: Too many open files" in daemon.log()

                wait_until(paused_accepting, timeout=30)
                resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (soft, hard))
                assert protocol.decode(waiting.makefile("rb").readline())["ok"] is True
        finally:
            if daemon.alive():
                resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (soft, hard))
        assert client.ping(socket_path=daemon.socket_path)["pid"] == daemon.pid


async def test_an_unexpected_accept_error_is_not_retried_forever() -> None:
    """If accept() fails for a reason other than a shortage (the listening socket itself is broken), then the
    accept loop raises it instead of spinning on it."""
    class BrokenListener(trio.socket.SocketType):  # trio's base for socket stand-ins; only accept() is used
        async def accept(self) -> tuple[trio.socket.SocketType, object]:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    async def never_called(line: bytes) -> dict[str, object]:
        raise AssertionError("no connection was accepted")

    with trio.fail_after(10), pytest.raises(ExceptionGroup) as caught:
        await listener.serve_connections(BrokenListener(), never_called)
    assert caught.group_contains(OSError, match=os.strerror(errno.EINVAL))


# -- the safety nets: a bug in the daemon or in a token source ----------------------------------------


async def test_a_bug_while_answering_is_an_error_reply_and_the_daemon_goes_on(
        daemon: DaemonInfo, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """If answering a request hits a bug (an unexpected exception), then that client gets "internal error in the
    daemon" (exit 1) without the exception's text, the log has the traceback, and other requests are answered."""
    async def broken_ping(self: object, message: dict[str, object]) -> dict[str, object]:
        raise RuntimeError("bug-detail-not-for-clients")

    monkeypatch.setattr(Daemon, "_op_ping", broken_ping)
    with trio.fail_after(10):
        with pytest.raises(AadhelperError) as caught:
            await call(daemon, "ping")
        assert (await call(daemon, "status"))["ok"] is True
    assert type(caught.value) is AadhelperError and caught.value.exit_code == 1
    assert "internal error in the daemon" in caught.value.one_line()
    assert "bug-detail" not in caught.value.one_line()
    assert "RuntimeError: bug-detail-not-for-clients" in caplog.text


class BuggySource:
    """A token source with a bug: every fetch raises something that is not an AadhelperError."""

    def __init__(self) -> None:
        self.calls = 0

    async def acquire(self, scopes: tuple[str, ...]) -> TokenResponse:
        self.calls += 1
        raise KeyError("bug-detail-not-for-clients")


class BuggyFetcher(LocalFetcher):
    def __init__(self) -> None:
        super().__init__(NoSecrets())
        self.buggy = BuggySource()

    def source(self, profile: Profile) -> TokenSource:
        return self.buggy


async def test_a_bug_in_a_token_source_is_an_error_reply_and_the_daemon_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """If fetching a token hits a bug in the token source, then the client gets one "internal error" line naming
    the profile (exit 1), the log has the traceback, and the daemon keeps answering, this profile included."""
    fetcher = BuggyFetcher()
    async with trio.open_nursery() as nursery:
        info = await start_daemon(nursery, tmp_path, fetcher)
        (tmp_path / "config.toml").write_text(
            '[profiles.p]\ntenant = "t.example.com"\nclient_id = "c"\nscopes = ["https://graph.microsoft.com/.default"]\n')
        with trio.fail_after(10):
            with pytest.raises(AadhelperError) as caught:
                await call(info, "token", profile="p")
            assert (await call(info, "ping"))["ok"] is True
            with pytest.raises(AadhelperError) as again:
                await call(info, "token", profile="p")
        nursery.cancel_scope.cancel()
    for error in (caught.value, again.value):
        assert type(error) is AadhelperError and error.exit_code == 1
        assert "internal error" in error.one_line() and "'p'" in error.one_line()
        assert "bug-detail" not in error.one_line()
    assert fetcher.buggy.calls >= 1
    assert "KeyError: 'bug-detail-not-for-clients'" in caplog.text
