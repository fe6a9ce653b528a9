"""A small HTTP/1.1 server on 127.0.0.1 that answers ``GET`` requests with JSON, hardened against bad input: the
transport of ``aadhelper exec``'s managed-identity endpoint (:mod:`aadhelper.mi_endpoint`, which decides what each
request means).

Why not ``http.server``: it bounds a line, not a request head, and its timeout is per ``recv``, so a client sending
one byte every few seconds (slowloris) holds a thread for ever. Here:

* a thread per connection, with keep-alive: SDK processes keep several connections open at once (one per
  credential object), so a one-at-a-time server would deadlock them; at most ``max_connections`` are open at
  once. One more makes room by closing the connection that has waited longest for a request head (an idle
  keep-alive connection, which SDK connection pools replace, or a slow head); only when every connection is in
  the middle of a request is the new one closed at once. Refusing the newcomer instead would let anyone who can
  reach 127.0.0.1 starve the child's SDK by holding the slots with slow heads (the fault suite's slowloris case);
* a request head is at most :data:`MAX_HEAD` bytes and :data:`MAX_HEADERS` lines and must arrive within
  ``head_deadline`` seconds of its first byte (measured on ``clock``, which tests move by hand); a connection idle
  between requests is closed quietly after ``idle_timeout``;
* ``GET`` without a body only; a malformed head, a body, or a head too large or too late is refused with a 4xx and
  the connection closed (its framing is lost), after draining what the client still sends (closing with unread
  input sends a reset, which can destroy the refusal before the client reads it);
* every refusal is a :class:`Refusal`: a status and a one-line message, sent as JSON ``{"statusCode": N,
  "message": "aadhelper: ..."}`` (the App Service error shape the SDKs read); an unexpected exception of the handler
  is a 424 refusal too, never a traceback on the terminal of the process the server serves.

Standard library only; no trio (it runs inside ``aadhelper exec``, which stays light).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

#: Largest request head (request line and headers) accepted; an SDK's is about 400 bytes.
MAX_HEAD = 8192
#: Most header lines in one request.
MAX_HEADERS = 64
#: Seconds a request head may take to arrive once its first byte has (against slowloris).
HEAD_DEADLINE = 10.0
#: Seconds a keep-alive connection may stay idle between requests before it is closed.
IDLE_TIMEOUT = 60.0
#: Connections open at once (each holds a thread): above the 200 concurrent keep-alive connections the fault
#: suite's SDK load opens; one more closes the longest-waiting one (module docstring).
MAX_CONNECTIONS = 256
#: Bytes and seconds a closing connection's unread input is drained for (module docstring).
DRAIN_BYTES = 65536
DRAIN_SECONDS = 1.0
#: Seconds the acceptor waits after accept() failed on an open listener (out of file descriptors, say).
ACCEPT_RETRY = 0.05

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 424: "Failed Dependency", 431: "Request Header Fields Too Large"}
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class Refusal(Exception):
    """A request answered with a 4xx and a one-line message; ``close`` ends the connection after the reply."""

    def __init__(self, status: int, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close

    def body(self) -> dict[str, Any]:
        return {"statusCode": self.status, "message": f"aadhelper: {self.message}"}


#: What answers a request: (method, target, headers by lower-case name) -> the JSON body of a 200 reply, or raises
#: :class:`Refusal`.
Handler = Callable[[str, str, Mapping[str, str]], dict[str, Any]]


class JsonHttpServer:
    """Serves ``handler`` on 127.0.0.1 (a port the kernel picks) from :meth:`start` until :meth:`close`.

    ``on_connection_end`` runs in a connection's thread when the connection ends (to release what the handler
    kept for that thread); a request repeating one of ``unique_headers`` (lower case) is refused."""

    def __init__(self, handler: Handler, *, name: str = "loopback-http", clock: Callable[[], float] = time.monotonic,
                 head_deadline: float = HEAD_DEADLINE, idle_timeout: float = IDLE_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS, on_connection_end: Callable[[], None] | None = None,
                 unique_headers: tuple[str, ...] = ()) -> None:
        self._handler = handler
        self._unique_headers = unique_headers
        self._name = name
        self._clock = clock
        self._head_deadline = head_deadline
        self._idle_timeout = idle_timeout
        self._max_connections = max_connections
        self._on_connection_end = on_connection_end
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        #: The connections waiting for a request head, and since when (the eviction order when full).
        self._waiting: dict[socket.socket, float] = {}
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept_loop, name=name, daemon=True)

    def start(self) -> None:
        self._acceptor.start()

    def close(self) -> None:
        """Stop answering: the port is closed (new connections are refused) and open connections are cut."""
        with self._lock:
            self._closed = True
            connections = list(self._connections)
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (closing alone does not, on Linux)
        self._listener.close()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._acceptor.is_alive():
            self._acceptor.join(5)

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                if self._closed:
                    return
                # Out of file descriptors or memory for a moment (EMFILE, ENFILE, ENOBUFS): the listener stays
                # open, so stopping here would leave every later connection unanswered while CMD runs.
                time.sleep(ACCEPT_RETRY)
                continue
            with self._lock:
                if not self._closed and len(self._connections) >= self._max_connections and self._waiting:
                    self._evict(min(self._waiting, key=self._waiting.__getitem__))
                if self._closed or len(self._connections) >= self._max_connections:
                    conn.close()
                    continue
                self._connections.add(conn)
            try:
                threading.Thread(target=self._serve, args=(conn,), name=f"{self._name}-conn", daemon=True).start()
            except RuntimeError:  # "can't start new thread": this connection is refused, the next one may not be
                with self._lock:
                    self._connections.discard(conn)
                conn.close()

    def _evict(self, victim: socket.socket) -> None:
        """Close a connection waiting for a request head to make room (the lock is held); its thread sees the end
        of its input and ends, quietly."""
        del self._waiting[victim]
        self._connections.discard(victim)
        with contextlib.suppress(OSError):
            victim.shutdown(socket.SHUT_RDWR)

    def _serve(self, conn: socket.socket) -> None:
        """Answer requests on one connection until the client closes it, a refusal ends it or it idles out."""
        buffer = bytearray()
        try:
            while True:
                with self._lock:
                    if conn not in self._connections:
                        return  # evicted before it was first served
                    self._waiting[conn] = self._clock()
                try:
                    head = self._read_head(conn, buffer)
                except Refusal as refusal:
                    with self._lock:
                        self._waiting.pop(conn, None)
                    self._send(conn, refusal.status, refusal.body(), keep_alive=False)
                    _drain(conn)
                    return
                with self._lock:
                    evicted = self._waiting.pop(conn, None) is None
                if head is None or evicted:
                    return
                keep_alive, status, body = self._answer(head)
                self._send(conn, status, body, keep_alive=keep_alive)
                if not keep_alive:
                    _drain(conn)
                    return
        except OSError:
            return  # the client went away, or close() cut the connection
        finally:
            with self._lock:
                self._connections.discard(conn)
                self._waiting.pop(conn, None)
            conn.close()
            buffer[:] = bytes(len(buffer))
            if self._on_connection_end is not None:
                self._on_connection_end()

    def _read_head(self, conn: socket.socket, buffer: bytearray) -> bytes | None:
        """The next request head (without its blank line); None when the client closed or idled out between
        requests. Raises :class:`Refusal` for a head over :data:`MAX_HEAD` or later than its deadline."""
        deadline: float | None = None
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end >= 0:
                if end > MAX_HEAD:
                    raise _too_large()
                head = bytes(buffer[:end])
                del buffer[:end + 4]
                return head
            if len(buffer) > MAX_HEAD:
                raise _too_large()
            if deadline is None and buffer:
                deadline = self._clock() + self._head_deadline
            if deadline is None:
                conn.settimeout(self._idle_timeout)
            else:
                left = deadline - self._clock()
                if left <= 0:
                    raise Refusal(400, f"the request head did not arrive within {self._head_deadline:g} s",
                                  close=True)
                conn.settimeout(left)
            try:
                chunk = conn.recv(4096)
            except TimeoutError:
                if deadline is None:
                    return None  # idle keep-alive connection: close it quietly
                continue  # the deadline check above refuses it
            if not chunk:
                return None
            buffer += chunk

    def _answer(self, head: bytes) -> tuple[bool, int, dict[str, Any]]:
        """(keep the connection?, status, JSON body) for one request head."""
        try:
            method, target, headers, keep_alive = parse_head(head, unique=self._unique_headers)
        except Refusal as refusal:
            return False, refusal.status, refusal.body()
        try:
            return keep_alive, 200, self._handler(method, target, headers)
        except Refusal as refusal:
            return keep_alive and not refusal.close, refusal.status, refusal.body()
        except Exception as exc:  # a bug must not print a traceback on the served process's terminal
            failed = Refusal(424, f"aadhelper exec's endpoint failed ({type(exc).__name__}); see "
                                  "`aadhelper status` and the daemon's log")
            return False, failed.status, failed.body()

    def _send(self, conn: socket.socket, status: int, body: dict[str, Any], *, keep_alive: bool) -> None:
        data = json.dumps(body).encode()
        head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\nCache-Control: no-store\r\n"
                f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n").encode()
        conn.settimeout(self._head_deadline)  # a client that does not read its reply is cut off too
        conn.sendall(head + data)


# -- parsing (pure) ------------------------------------------------------------------------------------------------

def parse_head(head: bytes, *, unique: tuple[str, ...] = ()) -> tuple[str, str, dict[str, str], bool]:
    """(method, target, headers by lower-case name, keep-alive?) of a request head; :class:`Refusal` (closing the
    connection: framing is lost) for anything malformed or carrying a body. Headers named in ``unique`` (lower
    case), Host and Content-Length may appear only once."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise Refusal(400, "the request head is not ASCII", close=True) from None
    request_line, *lines = text.split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1] or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        raise Refusal(400, f"malformed request line {request_line[:80]!r}", close=True)
    method, target, version = parts
    if len(lines) > MAX_HEADERS:
        raise Refusal(431, f"more than {MAX_HEADERS} header lines", close=True)
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or not all(c in _TOKEN_CHARS for c in name):
            # The name only: the value may be a secret (a mistyped X-IDENTITY-HEADER line), and refusals reach the
            # SDK's exception and its logs.
            raise Refusal(400, f"malformed header line (name {name[:40]!r})", close=True)
        key = name.lower()
        if key in headers and key in (*unique, "content-length", "host"):
            raise Refusal(400, f"header {name} is given more than once", close=True)
        headers[key] = value.strip(" \t")
    if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
        raise Refusal(400, "a request body is not supported (GET without a body)", close=True)
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection and (version == "HTTP/1.1" or "keep-alive" in connection)
    return method, target, headers, keep_alive


def split_target(target: str, example: str) -> tuple[str, str]:
    """(path, query) of an origin-form request target; ``example`` shows a good one in the refusal."""
    if not target.startswith("/"):
        raise Refusal(400, f"the request target must be a path (origin form), like {example}")
    try:
        split = urlsplit(target)
    except ValueError:  # "//[x/..." reads as an authority with a broken IPv6 literal: the client's fault, a 400
        raise Refusal(400, f"malformed request target: use the origin form, like {example}") from None
    return split.path, split.query


def _drain(conn: socket.socket) -> None:
    """End our side, then read (and drop) what the client still sends, so the reply reaches it before the close."""
    conn.shutdown(socket.SHUT_WR)
    # One deadline for the whole drain, not per read: a client dripping a byte a second would otherwise keep this
    # connection (and its slot, which eviction does not reach) for hours.
    end = time.monotonic() + DRAIN_SECONDS
    left = DRAIN_BYTES
    with contextlib.suppress(OSError):
        while left > 0 and (remaining := end - time.monotonic()) > 0:
            conn.settimeout(remaining)
            chunk = conn.recv(min(left, 4096))
            if not chunk:
                break
            left -= len(chunk)


def _too_large() -> Refusal:
    return Refusal(431, f"the request head exceeds {MAX_HEAD} bytes", close=True)
