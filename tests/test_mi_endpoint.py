"""The managed-identity endpoint of ``aadhelper exec`` (:mod:`aadhelper.mi_endpoint`, served by
:mod:`aadhelper.loopback_http`) in this process, in front of the test kit's FakeDaemon (a real Unix socket and the
real client): the protocol's replies, every refusal's JSON shape and status, and what bad input (malformed heads and
queries, oversize heads, slowloris, too many connections) does to it and to the other connections. The real SDKs
and the real daemon meet it in tests/test_exec_e2e.py."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aadhelper import mi_endpoint
from aadhelper.errors import AuthenticationFailed, AuthorityUnavailable, DaemonNotRunning, LoginRequired
from aadhelper.mi_endpoint import API_VERSION, MIN_VALID, Endpoint, child_environment
from aadhelper.testing import FakeDaemon, error_answer

SECRET = "s" * 43
ARM = "https://management.azure.com"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[FakeDaemon]:
    with FakeDaemon(tmp_path / "run" / "daemon.sock", access_token="fake-token") as fake:
        yield fake


@pytest.fixture
def endpoint(daemon: FakeDaemon) -> Iterator[Endpoint]:
    with Endpoint("graph", client_id="app-id", socket_path=daemon.socket_path, secret=SECRET) as served:
        yield served


def request(resource: str = ARM, *, secret: str | None = SECRET, version: str = API_VERSION,
            extra: str = "", path: str = mi_endpoint.PATH) -> bytes:
    header = f"X-IDENTITY-HEADER: {secret}\r\n" if secret is not None else ""
    return (f"GET {path}?api-version={version}&resource={resource}{extra} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Metadata: true\r\n{header}\r\n").encode()


def read_reply(conn: socket.socket) -> tuple[int, dict[str, str], dict[str, Any]]:
    """(status, headers, JSON body) of one reply on ``conn``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, f"connection closed before a reply: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = conn.recv(65536)
        assert chunk
        rest += chunk
    return int(lines[0].split()[1]), headers, json.loads(rest[:length])


def connect(endpoint: Endpoint) -> socket.socket:
    return socket.create_connection(("127.0.0.1", endpoint.port), timeout=30)


def ask(endpoint: Endpoint, data: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    with connect(endpoint) as conn:
        conn.sendall(data)
        return read_reply(conn)


def assert_refusal(reply: tuple[int, dict[str, str], dict[str, Any]], status: int, words: str) -> None:
    """A refusal the SDKs report after one request: that 4xx (never 408/429), JSON {statusCode, message}."""
    code, headers, body = reply
    assert code == status and 400 <= code < 500 and code not in (408, 429)
    assert headers["content-type"] == "application/json"
    assert set(body) == {"statusCode", "message"} and body["statusCode"] == status
    assert body["message"].startswith("aadhelper: ") and "\n" not in body["message"]
    assert words in body["message"], body["message"]


def test_token_reply_has_the_app_service_shape(endpoint: Endpoint, daemon: FakeDaemon) -> None:
    """If a request carries the secret, then the reply is the daemon's token with expires_on an integer string, the
    resource, Bearer and the profile's client id, asked of the daemon as R/.default with 600 s minimum validity."""
    status, headers, body = ask(endpoint, request())
    assert status == 200 and headers["cache-control"] == "no-store"
    assert body["access_token"] == "fake-token" and body["token_type"] == "Bearer"
    assert body["resource"] == ARM and body["client_id"] == "app-id"
    assert isinstance(body["expires_on"], str) and body["expires_on"].isdigit()
    assert int(body["expires_on"]) - time.time() > 300 and body["expires_in"].isdigit()
    token_requests = [r for r in daemon.requests if r["op"] == "token"]
    assert token_requests == [{"v": 1, "op": "token", "profile": "graph", "scopes": [f"{ARM}/.default"],
                               "min_valid": MIN_VALID}]
    assert MIN_VALID > 300


def test_identity_selectors_are_ignored(endpoint: Endpoint, daemon: FakeDaemon) -> None:
    """If a request names a user-assigned identity (client_id, object_id, mi_res_id), then it still gets the
    profile's token: the endpoint serves one identity and does not fail on them."""
    for extra in ("&client_id=00000000-0000-0000-0000-00000000abcd", "&object_id=x", "&mi_res_id=/subs/x"):
        status, _, body = ask(endpoint, request(extra=extra))
        assert status == 200 and body["access_token"] == "fake-token"


@pytest.mark.parametrize(("secret", "words"), [(None, "header is missing"), ("wrong", "header is wrong"),
                                               (SECRET[:-1], "header is wrong"), ("", "header is wrong")])
def test_missing_or_wrong_secret_is_refused_before_anything_else(endpoint: Endpoint, daemon: FakeDaemon,
                                                                 secret: str | None, words: str) -> None:
    """If the X-IDENTITY-HEADER is missing or wrong, then the reply is 401 JSON and the daemon is not asked, even when
    the rest of the request is also wrong."""
    assert_refusal(ask(endpoint, request(secret=secret)), 401, words)
    assert_refusal(ask(endpoint, request(secret=secret, version="2017-09-01", path="/other")), 401, words)
    assert [r for r in daemon.requests if r["op"] == "token"] == []


@pytest.mark.parametrize(("data", "status", "words"), [
    (request(version="2017-09-01"), 400, "api-version '2017-09-01' is not supported"),
    (request(resource=""), 400, "'resource' is missing"),
    (request(extra="&resource=https://vault.azure.net"), 400, "given more than once"),
    (request(extra="&=&&;"), 400, "malformed query string"),
    (request(resource="%ff%fe"), 400, "malformed query string"),
    (request(resource="x" * 3000), 400, "at most"),
    (request(path="/metadata/identity/oauth2/token"), 400, "no endpoint"),
    (request().replace(b"GET ", b"POST ", 1), 405, "method POST"),
], ids=["api-version", "no-resource", "repeated", "malformed", "not-utf8", "long-resource", "path", "method"])
def test_bad_requests_get_a_clear_refusal(endpoint: Endpoint, daemon: FakeDaemon, data: bytes, status: int,
                                          words: str) -> None:
    """If a request with the right secret is malformed (query, api-version, path, method), then it gets a 4xx JSON
    refusal saying what is wrong, the daemon is not asked, and the connection still serves a good request."""
    with connect(endpoint) as conn:
        conn.sendall(data)
        assert_refusal(read_reply(conn), status, words)
        conn.sendall(request())
        assert read_reply(conn)[0] == 200
    assert len([r for r in daemon.requests if r["op"] == "token"]) == 1


@pytest.mark.parametrize(("data", "status", "words"), [
    (b"GARBAGE\r\n\r\n", 400, "malformed request line"),
    (b"GET /msi/token HTTP/2.0\r\n\r\n", 400, "malformed request line"),
    (b"GET /msi/token HTTP/1.1\r\nBad Header\r\n\r\n", 400, "malformed header line"),
    (b"GET /msi/token HTTP/1.1\r\n continued: x\r\n\r\n", 400, "malformed header line"),
    (b"GET /msi/token HTTP/1.1\r\nX: \xff\r\n\r\n", 400, "not ASCII"),
    (request()[:-2] + b"Content-Length: 5\r\n\r\nhello", 400, "body is not supported"),
    (request()[:-2] + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "body is not supported"),
    (request()[:-2] + f"X-IDENTITY-HEADER: {SECRET}\r\n\r\n".encode(), 400, "more than once"),
    (request()[:-2] + b"".join(b"X-%d: y\r\n" % n for n in range(70)) + b"\r\n", 431, "header lines"),
    (request()[:-2] + b"X-Big: " + b"y" * 9000 + b"\r\n\r\n", 431, "exceeds 8192 bytes"),
    (b"GET /" + b"a" * 20000, 431, "exceeds 8192 bytes"),
], ids=["garbage", "version", "header", "folded", "non-ascii", "body", "chunked", "two-secrets", "many-headers",
        "big-header", "endless-line"])
def test_malformed_heads_are_refused_and_the_connection_closed(endpoint: Endpoint, daemon: FakeDaemon, data: bytes,
                                                               status: int, words: str) -> None:
    """If a request head is malformed, oversize or carries a body, then it gets a 4xx JSON refusal and the connection
    is closed (its framing is lost), while a new connection is served as usual."""
    with connect(endpoint) as conn:
        conn.sendall(data)
        assert_refusal(read_reply(conn), status, words)
        assert conn.recv(100) == b""
    assert ask(endpoint, request())[0] == 200


def test_daemon_errors_become_4xx_with_the_one_line_error(tmp_path: Path) -> None:
    """If the daemon answers with an error, then the reply is 403 for refusals (authority, configuration) and 424 when
    the authority or daemon is unavailable, with aadhelper's one-line error as the message: never 408, 429 or 5xx,
    which the SDKs would retry."""
    cases = [("auth_failed", 403, "invalid_scope AADSTS70011"), ("login_required", 403, "aadhelper login graph"),
             ("unknown_profile", 403, "no such profile"), ("authority_unavailable", 424, "HTTP 503"),
             ("keyring_locked", 403, "locked")]
    for code, status, words in cases:
        answer = error_answer(code, f"the authority refused: {words}", profile="graph", hint="aadhelper login graph")
        with (FakeDaemon(tmp_path / code / "d.sock", answer) as fake,
              Endpoint("graph", socket_path=fake.socket_path, secret=SECRET) as served):
            assert_refusal(ask(served, request()), status, words)
    assert mi_endpoint.status_of(DaemonNotRunning("gone")) == 424
    assert mi_endpoint.status_of(AuthorityUnavailable("x")) == 424
    assert mi_endpoint.status_of(AuthenticationFailed("x")) == mi_endpoint.status_of(LoginRequired("x")) == 403


def test_a_failure_inside_the_endpoint_is_a_424_not_a_traceback(capfd: pytest.CaptureFixture[str]) -> None:
    """If getting the token fails in an unexpected way, then the reply is a 424 JSON refusal naming the failure, and
    nothing is printed (no traceback on CMD's terminal)."""
    def broken(scope: str) -> dict[str, Any]:
        raise RuntimeError("a bug")

    with Endpoint("graph", fetch=broken, secret=SECRET) as served:
        assert_refusal(ask(served, request()), 424, "endpoint failed (RuntimeError)")
        assert ask(served, request())[0] == 424  # and it goes on serving
    assert capfd.readouterr() == ("", "")


def test_scope_allow_list_refuses_other_resources(daemon: FakeDaemon) -> None:
    """If exec was given --scope, then resources outside it are refused with 403 without asking the daemon, and the
    listed ones are served (with or without a trailing slash)."""
    with Endpoint("graph", scopes=[f"{ARM}/.default"], socket_path=daemon.socket_path, secret=SECRET) as served:
        assert_refusal(ask(served, request("https://vault.azure.net")), 403, "not one this aadhelper exec serves")
        assert [r for r in daemon.requests if r["op"] == "token"] == []
        assert ask(served, request(ARM))[0] == 200
        assert ask(served, request(ARM + "/"))[0] == 200


def test_keep_alive_connections_are_served_concurrently(endpoint: Endpoint) -> None:
    """If several connections each send a request before any reply is read, then every one is answered (a
    one-at-a-time server would deadlock), and each connection serves a second request (keep-alive)."""
    conns = [connect(endpoint) for _ in range(8)]
    try:
        for _ in range(2):
            for conn in conns:
                conn.sendall(request())
            for conn in reversed(conns):
                status, headers, body = read_reply(conn)
                assert status == 200 and headers["connection"] == "keep-alive" and body["access_token"]
    finally:
        for conn in conns:
            conn.close()


def test_connection_close_and_http10_end_the_connection(endpoint: Endpoint) -> None:
    """If a request says Connection: close, or is HTTP/1.0 without keep-alive, then the reply says close and the
    connection ends after it."""
    for data in (request()[:-2] + b"Connection: close\r\n\r\n", request().replace(b"HTTP/1.1", b"HTTP/1.0")):
        with connect(endpoint) as conn:
            conn.sendall(data)
            status, headers, _ = read_reply(conn)
            assert status == 200 and headers["connection"] == "close"
            assert conn.recv(100) == b""


class ManualClock:
    """A monotonic clock the test moves; the endpoint's head deadline is measured on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


def test_slowloris_head_is_cut_off_at_its_deadline_while_others_are_served(daemon: FakeDaemon) -> None:
    """If a client trickles a request head byte by byte past the head deadline (on a clock the test moves), then it
    gets a 400 JSON refusal and its connection is closed, while another connection is served meanwhile."""
    clock = ManualClock()
    with Endpoint("graph", socket_path=daemon.socket_path, secret=SECRET, clock=clock) as served:
        data = request()
        with connect(served) as slow:
            for byte in data[:40]:
                slow.sendall(bytes([byte]))
                assert ask(served, request())[0] == 200  # the others are served all along; also a pause for the byte
                clock.advance(1.0)
            assert_refusal(read_reply(slow), 400, "did not arrive within 10 s")
            assert slow.recv(100) == b""


def test_idle_keep_alive_connection_is_closed_quietly(daemon: FakeDaemon) -> None:
    """If a keep-alive connection sends nothing for the idle timeout, then it is closed without a reply."""
    with (Endpoint("graph", socket_path=daemon.socket_path, secret=SECRET, idle_timeout=0.05) as served,
          connect(served) as conn):
        conn.sendall(request())
        assert read_reply(conn)[0] == 200
        assert conn.recv(100) == b""


def test_a_connection_beyond_the_limit_closes_the_one_waiting_longest(daemon: FakeDaemon) -> None:
    """If the limit of connections is reached and all of them wait for a request (keep-alive, or a slowloris holding
    the slots), then a new connection is served and the one that has waited longest is closed (once the new one
    was refused, so that anyone reaching 127.0.0.1 could starve the child's SDK: found by the fault suite)."""
    with Endpoint("graph", socket_path=daemon.socket_path, secret=SECRET, max_connections=3) as served:
        held = [connect(served) for _ in range(3)]
        for conn in held:  # each is accepted, answered, and waits for its next request
            conn.sendall(request())
            assert read_reply(conn)[0] == 200
        extras = []
        for _ in range(2):  # kept open: each newcomer takes the slot of the one waiting longest
            extras.append(connect(served))
            extras[-1].sendall(request())
            assert read_reply(extras[-1])[0] == 200
        assert [conn.recv(100) for conn in held[:2]] == [b"", b""]
        held[2].sendall(request())  # the youngest of the held ones was never closed
        assert read_reply(held[2])[0] == 200
        for conn in held + extras:
            conn.close()


def test_a_connection_beyond_the_limit_is_closed_when_all_are_in_a_request(tmp_path: Path) -> None:
    """If the limit of connections is reached and every one is in the middle of a request, then a new connection is
    closed at once, and the requests in flight are answered."""
    release, entered = threading.Event(), threading.Semaphore(0)

    def slow_fetch(scope: str) -> dict[str, Any]:
        entered.release()
        release.wait(30)
        return {"access_token": "t", "token_type": "Bearer", "expires_on": int(time.time()) + 3600}

    with Endpoint("graph", fetch=slow_fetch, secret=SECRET, max_connections=2) as served:
        busy = [connect(served) for _ in range(2)]
        for conn in busy:
            conn.sendall(request())
        for _ in busy:  # both heads read, both handlers waiting (no reply can come before release)
            assert entered.acquire(timeout=30)
        with connect(served) as extra:
            assert extra.recv(100) == b""
        release.set()
        assert [read_reply(conn)[0] for conn in busy] == [200, 200]
        for conn in busy:
            conn.close()


def test_closed_endpoint_refuses_connections(daemon: FakeDaemon) -> None:
    """If the endpoint is closed, then its port refuses connections and open connections are cut."""
    served = Endpoint("graph", socket_path=daemon.socket_path, secret=SECRET).start()
    conn = connect(served)
    conn.sendall(request())
    assert read_reply(conn)[0] == 200
    served.close()
    assert conn.recv(100) == b""
    conn.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", served.port), timeout=5)


def test_child_environment_removes_other_sources_and_sets_the_endpoint() -> None:
    """If the caller's environment has other managed-identity or credential variables (even empty), then the child's
    has none of them, has the endpoint and secret, and keeps everything else (AZURE_TOKEN_CREDENTIALS untouched)."""
    base = {name: "" for name in mi_endpoint.REMOVED_VARIABLES}
    base.update(PATH="/bin", AZURE_CLIENT_ID="x", IDENTITY_ENDPOINT="http://169.254.169.254/old",
                AZURE_TOKEN_CREDENTIALS="dev")
    env = child_environment(base, "http://127.0.0.1:1/msi/token", SECRET)
    assert not set(mi_endpoint.REMOVED_VARIABLES) & set(env)
    assert env == {"PATH": "/bin", "AZURE_CLIENT_ID": "x", "AZURE_TOKEN_CREDENTIALS": "dev",
                   "IDENTITY_ENDPOINT": "http://127.0.0.1:1/msi/token", "IDENTITY_HEADER": SECRET,
                   "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    first, second = mi_endpoint.new_secret(), mi_endpoint.new_secret()
    assert len(first) >= 32 and first != second


@pytest.mark.parametrize(("given", "expected"), [
    ({}, {"NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}),
    ({"NO_PROXY": "localhost, .corp", "no_proxy": ""},
     {"NO_PROXY": "localhost,.corp,127.0.0.1", "no_proxy": "127.0.0.1"}),
    ({"NO_PROXY": "127.0.0.1,x", "no_proxy": "*"}, {"NO_PROXY": "127.0.0.1,x", "no_proxy": "*"}),
])
def test_child_proxy_exceptions_name_the_endpoint(given: dict[str, str], expected: dict[str, str]) -> None:
    """If the caller's NO_PROXY/no_proxy are unset, lists without the endpoint's host, or already cover it, then
    the child's name 127.0.0.1 in both spellings (appended, the user's entries kept) or stay as they were, so no
    proxy of the child's environment gets the request with its secret header."""
    env = child_environment({"HTTPS_PROXY": "http://proxy.invalid:3128", **given}, "http://127.0.0.1:1/msi/token",
                            SECRET)
    assert {key: env[key] for key in ("NO_PROXY", "no_proxy")} == expected
    assert env["HTTPS_PROXY"] == "http://proxy.invalid:3128"


def test_repr_hides_the_secret(endpoint: Endpoint) -> None:
    """If an endpoint is shown (repr, logs), then its secret is not."""
    assert SECRET not in repr(endpoint) and endpoint.url in repr(endpoint)



class CountingDaemon:
    """A daemon stand-in on a Unix socket that counts its connections and, with ``close_after_reply``, hangs up after
    each reply (as the daemon does with a connection left idle past its read timeout)."""

    def __init__(self, path: Path, *, close_after_reply: bool) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(8)
        self.close_after_reply = close_after_reply
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        from aadhelper import protocol

        with conn, conn.makefile("rb") as lines:
            for line in lines:
                request = protocol.decode(line)
                conn.sendall(protocol.encode(protocol.ok_reply(
                    access_token=f"token-{self.connections}", token_type="Bearer",
                    expires_on=int(time.time()) + 3600, profile=request.get("profile"), scopes=request["scopes"])))
                if self.close_after_reply:
                    return

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


@pytest.mark.parametrize("close_after_reply", [False, True], ids=["kept", "dropped"])
def test_daemon_connection_is_kept_and_replaced_when_the_daemon_dropped_it(tmp_path: Path,
                                                                           close_after_reply: bool) -> None:
    """If one HTTP connection asks three times, then the three token requests share one daemon connection; and if the
    daemon drops that connection after each reply (as it does with idle ones), then each next request reconnects
    and is served."""
    daemon = CountingDaemon(tmp_path / "run" / "daemon.sock", close_after_reply=close_after_reply)
    try:
        with (Endpoint("graph", socket_path=str(tmp_path / "run" / "daemon.sock"), secret=SECRET) as served,
              connect(served) as conn):
            for _ in range(3):
                conn.sendall(request())
                status, _, body = read_reply(conn)
                assert status == 200 and body["access_token"].startswith("token-")
    finally:
        daemon.close()
    assert daemon.connections == (3 if close_after_reply else 1)


def test_a_malformed_header_line_is_refused_without_quoting_its_value(endpoint: Endpoint) -> None:
    """If the secret header is mistyped into a malformed line (a space before the colon), then the refusal names
    the line's header and never shows its value (refusals reach the SDK's exception and its logs)."""
    with connect(endpoint) as conn:
        conn.sendall(request()[:-2] + f"X-IDENTITY-HEADER : {SECRET}\r\n\r\n".encode())
        status, _, body = read_reply(conn)
        assert status == 400 and SECRET not in str(body) and SECRET[:8] not in str(body)


def test_a_refused_client_that_keeps_dripping_loses_its_connection(endpoint: Endpoint) -> None:
    """If a client refused with `Connection: close` keeps sending a byte now and then, then the endpoint closes the
    connection after its drain time in all, not after each byte's wait: a slot cannot be held that way."""
    from aadhelper.loopback_http import DRAIN_SECONDS

    with connect(endpoint) as conn:
        conn.sendall(b"GET /msi/token HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert read_reply(conn)[0] == 401
        dripped = 0
        with contextlib.suppress(OSError):
            while dripped < 50 * DRAIN_SECONDS:  # one byte every 0.1 s for up to 50 drain times
                conn.sendall(b"x")
                dripped += 1
                time.sleep(0.1)
        assert dripped < 50 * DRAIN_SECONDS, "the endpoint kept draining a client that drips"


def test_a_daemon_that_takes_a_request_and_never_answers_is_asked_once(tmp_path: Path) -> None:
    """If the daemon accepts a token request and does not answer in time, then the endpoint's session reports that
    (DaemonTimedOut) after one wait, having sent the request once: not again on a new connection, and not to an
    autostarted second daemon, each of which would wait as long again."""
    from aadhelper import client
    from aadhelper.errors import DaemonTimedOut

    path = str(tmp_path / "d.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    os.chmod(tmp_path, 0o700)
    server.listen()
    received: list[bytes] = []

    def silent() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            received.append(conn.recv(65536))  # and never a reply

    threading.Thread(target=silent, daemon=True).start()
    session = client.Session(path, timeout=0.3)
    try:
        with pytest.raises(DaemonTimedOut):
            session.call({"op": "ping", "v": 1})
    finally:
        session.close()
        server.close()
    assert len(received) == 1


def test_the_endpoint_keeps_accepting_after_running_out_of_file_descriptors(daemon: FakeDaemon) -> None:
    """If accept() fails for a while with the listener still open (EMFILE: no file descriptor left), then the endpoint
    answers the connections that come once it succeeds again, instead of never accepting another."""
    import errno

    class Exhausted:
        """The endpoint's listener, whose first accept() calls fail as when the process is out of descriptors."""

        def __init__(self, listener: socket.socket, failures: int) -> None:
            self.listener, self.failures = listener, failures

        def accept(self) -> tuple[socket.socket, Any]:
            if self.failures > 0:
                self.failures -= 1
                time.sleep(0.01)
                raise OSError(errno.EMFILE, "Too many open files")
            return self.listener.accept()

        def __getattr__(self, name: str) -> Any:
            return getattr(self.listener, name)

    endpoint = Endpoint("graph", client_id="app-id", socket_path=daemon.socket_path, secret=SECRET)
    server = endpoint._server  # the test swaps the listener before the acceptor starts
    exhausted = Exhausted(server._listener, failures=5)
    server._listener = exhausted  # type: ignore[assignment]
    with endpoint:
        assert ask(endpoint, request())[0] == 200
    assert exhausted.failures == 0
