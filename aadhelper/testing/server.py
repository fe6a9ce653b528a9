"""A loopback HTTP/1.1 server (optionally HTTPS) in a background thread, answering through an :class:`App`.

Stdlib only (``http.server.ThreadingHTTPServer``), so trio tests, plain tests, subprocesses and the demo can all
use it. Each connection gets its own thread; the TLS handshake happens in that thread, so a client that never
finishes it cannot stall the others. :meth:`LoopbackServer.stop` closes idle keep-alive connections, so it
returns promptly, and a stopped server started again listens on the same port (its clients meanwhile get
"connection refused"). Per-request logging goes to the ``aadhelper.testing`` logger at DEBUG, never to stderr.

A :class:`Response` either carries its whole body, or a ``stream`` that writes the body itself through a
:class:`BodyWriter` (slowly, endlessly, or cut by a reset): that is how the fault modes misbehave without holding a
big body in memory.
"""

from __future__ import annotations

import binascii
import contextlib
import json
import logging
import socket
import socketserver
import ssl
import struct
import threading
from base64 import b64decode
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final, Protocol, Self
from urllib.parse import parse_qsl

logger = logging.getLogger("aadhelper.testing")

_MAX_BODY = 256 * 1024
_IDLE_TIMEOUT = 30.0
#: SO_LINGER on, zero seconds: close() discards unsent data and sends a RST.
_ABORT = struct.pack("ii", 1, 0)


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    query: str
    headers: Message
    body: bytes


class BodyWriter:
    """Where a streamed reply writes its body: counts what the client's socket accepted, notices a client gone."""

    def __init__(self, connection: socket.socket, wfile: Any) -> None:
        self._connection = connection
        self._wfile = wfile
        #: Body bytes handed to the kernel so far.
        self.sent = 0
        #: True once a write failed: the client closed or reset the connection (or the server stopped).
        self.gone = False

    def write(self, data: bytes) -> bool:
        """Send ``data``; False (and nothing more is sent) once the client has gone."""
        if self.gone:
            return False
        try:
            self._wfile.write(data)
        except (OSError, ValueError):  # ssl.SSLError is an OSError; ValueError: the file was closed
            self.gone = True
            return False
        self.sent += len(data)
        return True

    def reset(self) -> None:
        """Abort the connection with a TCP RST, as a crashed peer or a middlebox does; nothing more is sent.

        A zero linger makes the close (when the stream returns) send the RST; see :meth:`_Server.shutdown_request`.
        """
        self.gone = True
        with contextlib.suppress(OSError):
            self._connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT)


#: Writes a reply's body; the server has sent the status line and headers already, and closes the connection after.
Stream = Callable[[BodyWriter], None]


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    #: Writes the body in place of ``body``; ``headers`` then carry the framing (Content-Length or chunked).
    stream: Stream | None = field(default=None, compare=False)

    @classmethod
    def json(cls, status: int, value: object,
             headers: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> Response:
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        return cls(status, json.dumps(value).encode(), (("Content-Type", "application/json; charset=utf-8"), *pairs))

    @classmethod
    def html(cls, status: int, text: str) -> Response:
        return cls(status, text.encode(), (("Content-Type", "text/html; charset=utf-8"),))


#: Returned by an app to close the connection without replying.
DROP: Final = Response(0)


class App(Protocol):
    def handle(self, request: HttpRequest) -> Response: ...


def basic_credentials(authorization: str) -> tuple[str, str] | None:
    """(user, password) of an ``Authorization: Basic`` value; None for other schemes; ValueError if malformed."""
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, colon, password = b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        colon = ""
    if not colon:
        raise ValueError("The Authorization header holds no valid Basic credentials.")
    return user, password


def parse_params(text: str) -> dict[str, str]:
    """Form or query parameters; ValueError on bad encoding or a repeated name (RFC 6749 3.1 forbids both)."""
    params: dict[str, str] = {}
    for name, value in parse_qsl(text, keep_blank_values=True, strict_parsing=False, errors="strict",
                                 max_num_fields=200):
        if name in params:
            raise ValueError(f"the parameter {name!r} is repeated")
        params[name] = value
    return params


class Service:
    """Something with start() and stop(), usable as a context manager that stops it even on failure."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class LoopbackServer(Service):
    """Serves ``app`` on ``host:port`` (0: any free port) from :meth:`start` until :meth:`stop`."""

    def __init__(self, app: App, *, ssl_context: ssl.SSLContext | None = None, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self._app = app
        self._ssl_context = ssl_context
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """``https://127.0.0.1:PORT`` (or http), without a trailing slash; kept after :meth:`stop`."""
        if self._url is None:
            raise RuntimeError("the server is not started")
        return self._url

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the server is already started")
        self._server = _Server(self._address, self._app, self._ssl_context)
        address: tuple[Any, ...] = tuple(self._server.server_address)
        # Started again after stop(), it comes back on the same port: clients keep their URL.
        self._address = (self._address[0], int(address[1]))
        host = str(address[0])
        self._url = f"{'https' if self._ssl_context else 'http'}://{f'[{host}]' if ':' in host else host}:{address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"aadhelper-testing-{self._url}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, drop open connections, and wait for the handler threads to end."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: App, ssl_context: ssl.SSLContext | None) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.app = app
        self.ssl_context = ssl_context
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall on reverse DNS; nothing here needs it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        if self.ssl_context is not None:
            # The handshake waits for the handler thread (finish_request), not the accept loop.
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with self._connections_lock:
            self._connections.add(sock)
        return sock, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(_IDLE_TIMEOUT)
        if isinstance(request, ssl.SSLSocket):
            request.do_handshake()
        super().finish_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        if _aborted(request):
            self.close_request(request)  # no graceful FIN first: the close sends the RST
        else:
            super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for sock in connections:
            # The plain socket's shutdown, so an SSLSocket is not unwrapped under its reader's feet.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Failed handshakes, clients that vanish, connections closed by stop(): expected here, not worth a trace.
        logger.debug("connection from %s ended with an error", client_address, exc_info=True)


def _aborted(sock: socket.socket) -> bool:
    """Whether :meth:`BodyWriter.reset` marked the connection for a RST."""
    try:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, len(_ABORT)) == _ABORT
    except OSError:
        return False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY each reply stalls ~40 ms on delayed ACKs.
    disable_nagle_algorithm = True
    server_version = "aadhelper-simulated-entra"
    sys_version = ""
    server: _Server

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        path, _, query = self.path.partition("?")
        body = self._read_body()
        if body is None:
            return
        try:
            response = self.server.app.handle(HttpRequest(self.command, path, query, self.headers, body))
        except Exception:
            logger.exception("the simulated endpoint failed on %s %s", self.command, path)
            response = Response.json(500, {"error": "server_error", "error_description": "internal error"})
        if response is DROP:
            self.close_connection = True
        else:
            self._write(response)

    def _read_body(self) -> bytes | None:
        """The request body, or None after answering a body this server does not read (chunked, too big)."""
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
                return b""
            status, message = 411, "send the body with a Content-Length"
        else:
            length = int(length_header) if length_header.strip().isdigit() else -1
            if 0 <= length <= _MAX_BODY:
                return self.rfile.read(length)
            status, message = (413, "the body is too large") if length > _MAX_BODY else (400, "bad Content-Length")
        # The unread body would be taken for the next request: answer, then close.
        self.close_connection = True
        self._write(Response.json(status, {"error": "invalid_request", "error_description": message},
                                  {"Connection": "close"}))
        return None

    def _write(self, response: Response) -> None:
        # send_response() would add a Date header of its own: an app may send its own (a skewed clock).
        self.log_request(response.status)
        self.send_response_only(response.status)
        self.send_header("Server", self.version_string())
        if not any(name.lower() == "date" for name, _ in response.headers):
            self.send_header("Date", self.date_time_string())
        for name, value in response.headers:
            self.send_header(name, value)
        if response.stream is None:
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            self.wfile.write(response.body)
            return
        # A streamed body may end anywhere: nothing can follow it on this connection.
        self.close_connection = True
        self.send_header("Connection", "close")
        self.end_headers()
        response.stream(BodyWriter(self.connection, self.wfile))

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)


class LoopbackApp(Service):
    """An app that serves itself on its own :class:`LoopbackServer`: ``url``, ``start`` and ``stop`` delegate to it."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = LoopbackServer(self, ssl_context=ssl_context, host=host, port=port)

    @property
    def url(self) -> str:
        """``https://127.0.0.1:PORT`` (or http), without a trailing slash."""
        return self._server.url

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop()

    def handle(self, request: HttpRequest) -> Response:
        raise NotImplementedError
