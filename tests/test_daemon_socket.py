"""The daemon's socket handling, in-process on a real Unix socket: bad input never hurts it."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from aadhelper import client, protocol
from aadhelper.daemon import DaemonInfo, serve
from aadhelper.errors import (
    AadhelperError,
    ConfigError,
    DaemonNotRunning,
    LoginRequired,
    ProtocolError,
    SecretMissing,
    UnknownProfile,
)
from aadhelper.fetcher import LocalFetcher
from aadhelper.listener import DaemonAlreadyRunning, bind_unix_socket, check_peer
from aadhelper.tokens import Secret


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


async def call(info: DaemonInfo, op: str, **fields: object) -> dict[str, object]:
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
            assert status["daemon"]["config_error"]["code"] == "config"  # type: ignore[index]
            config.write_text('[profiles.p]\ntenant = "t.example.com"\nclient_id = "c"\n'
                              'scopes = ["https://graph.microsoft.com/.default"]\n')
            # The profile is usable again: the failure now is the missing secret, not the config.
            with pytest.raises(SecretMissing):
                await call(info, "token", profile="p")
        nursery.cancel_scope.cancel()


class FetcherDown(LocalFetcher):
    """A fetcher that cannot answer (as while a fetcher process restarts)."""

    async def login_required(self, profile: str) -> LoginRequired | None:
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
        assert [p["name"] for p in status["profiles"]] == ["me"]  # type: ignore[index, union-attr]
        assert status["profiles"][0]["tokens"] == []  # type: ignore[index]
        nursery.cancel_scope.cancel()
