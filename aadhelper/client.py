"""Blocking client of the daemon over its Unix socket; error replies become the daemon's exceptions again.

This is the hot path of every ``aadhelper header`` and git credential call, so it imports only the
standard library's C socket module, :mod:`aadhelper.protocol`, :mod:`aadhelper.paths` and
:mod:`aadhelper.errors` (a test asserts trio, httpx and keyring stay out of ``sys.modules``).
"""

from __future__ import annotations

import _socket
import os
import sys

from . import paths, protocol
from .errors import AadhelperError, DaemonNotRunning, DaemonTimedOut, ProtocolError, UnsafeSocket, error_from_wire

TYPE_CHECKING = False  # not `from typing import ...`: the client path must not load typing (tests/test_import_rules.py)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

DEFAULT_TIMEOUT = protocol.REPLY_TIMEOUT

START_HINT = "start it with `aadhelper daemon start` (or `systemctl --user start aadhelper.socket`)"


def call(message: dict[str, Any], *, socket_path: str | None = None, timeout: float = DEFAULT_TIMEOUT,
         autostart: bool = False) -> dict[str, Any]:
    """Send one request and return the reply's fields; an error reply is raised as its exception class.

    With ``autostart``, a missing daemon is started (see :mod:`aadhelper.autostart`) and asked once more. A
    protocol error (exit 9) names the socket, so the user knows which daemon spoke another language.
    """
    path = socket_path or paths.socket_path()
    if _trace is not None:
        return _traced(message, path, timeout, autostart, _trace)
    try:
        return _call(message, path, timeout, autostart)
    except ProtocolError as exc:
        if path in exc.message:
            raise
        raise exc.copy(f"{exc.message} (the daemon on {path})") from None


#: Where `-v` reports each request (None: quiet, the normal case; set by the CLI with :func:`set_trace`).
_trace: Callable[[str], None] | None = None


def set_trace(report: Callable[[str], None] | None) -> None:
    """Report every request to the daemon (what, to which socket, how long, the outcome) to ``report``."""
    global _trace
    _trace = report


def _traced(message: dict[str, Any], path: str, timeout: float, autostart: bool,
            report: Callable[[str], None]) -> dict[str, Any]:
    import time

    fields = ", ".join(f"{key} {_shown(value)}" for key, value in message.items() if key not in ("v", "op"))
    asked = f"asked the daemon on {path} for {message.get('op')}" + (f" ({fields})" if fields else "")
    started = time.perf_counter()
    set_trace(None)  # the call below is not traced again
    try:
        reply = call(message, socket_path=path, timeout=timeout, autostart=autostart)
    except AadhelperError as exc:
        report(f"{asked}: {exc.code} after {1000 * (time.perf_counter() - started):.1f} ms")
        raise
    finally:
        set_trace(report)
    report(f"{asked}: answered in {1000 * (time.perf_counter() - started):.1f} ms")
    return reply


def _shown(value: object) -> str:
    """A request field for the trace: lists joined; a URL without any user:password part."""
    if isinstance(value, list):
        return " ".join(map(str, value))
    text = str(value)
    scheme, sep, rest = text.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        text = f"{scheme}{sep}***@{rest.split('@', 1)[1]}"
    return text


def _call(message: dict[str, Any], path: str, timeout: float, autostart: bool) -> dict[str, Any]:
    data = protocol.encode(message)
    if len(data) > protocol.MAX_REQUEST_BYTES:
        # The daemon's own limit, checked here too: one clear error, before any connection or autostart, instead
        # of the daemon's reply racing our unfinished send (a broken connection, exit 8).
        raise ProtocolError(f"request too large for the daemon: {len(data)} bytes, its limit is "
                            f"{protocol.MAX_REQUEST_BYTES} (is a URL or scope that long?)")
    check_socket_dir(path)
    sock = _connect(path, timeout)
    if sock is None:
        if autostart:
            from . import autostart as starter

            if starter.enabled():
                child, log_path = starter.spawn(path)
                if not wait_for_daemon(path, starter.START_TIMEOUT, exited=lambda: child.poll() is not None):
                    raise starter.failed(path, log_path)
                return call(message, socket_path=path, timeout=timeout)
        raise DaemonNotRunning(f"no aadhelper daemon answers on {path}", hint=START_HINT)
    try:
        try:
            sock.sendall(data)
            line = _read_line(sock, protocol.MAX_REPLY_BYTES)
        except TimeoutError:
            raise DaemonTimedOut(f"the daemon on {path} did not answer within {timeout:g} s",
                                   hint=log_hint()) from None
        except OSError as exc:
            raise DaemonNotRunning(f"the connection to the daemon on {path} broke: {exc.strerror or exc}",
                                   hint=log_hint()) from None
    finally:
        sock.close()
    if not line:
        raise DaemonNotRunning(f"the daemon on {path} closed the connection without a reply",
                               hint=log_hint())
    return _fields(line)


def _fields(line: bytes) -> dict[str, Any]:
    """The fields of a reply line; an error reply is raised as its exception class."""
    reply = protocol.decode(line)
    if reply.get("ok") is True:
        return reply
    error = reply.get("error")
    if not isinstance(error, dict):
        raise ProtocolError("malformed reply from the daemon: neither ok nor an error object")
    raise error_from_wire(error)


class Session:
    """One connection to the daemon kept open for requests in turn (the daemon answers each in order), for a
    caller that asks often, such as one connection of ``aadhelper exec``'s endpoint: no connect, directory check and
    peer check per request. A connection the daemon closed meanwhile (it drops idle ones) is replaced once; no
    autostart (use :func:`call` for that). Not thread-safe: one per thread."""

    def __init__(self, socket_path: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = socket_path or paths.socket_path()
        self.timeout = timeout
        self._sock: _socket.socket | None = None

    def call(self, message: dict[str, Any]) -> dict[str, Any]:
        data = protocol.encode(message)
        for fresh in (self._sock is None, True):
            if self._sock is None:
                check_socket_dir(self.path)
                self._sock = _connect(self.path, self.timeout)
                if self._sock is None:
                    raise DaemonNotRunning(f"no aadhelper daemon answers on {self.path}", hint=START_HINT)
            try:
                self._sock.sendall(data)
                line = _read_line(self._sock, protocol.MAX_REPLY_BYTES)
            except TimeoutError:
                # The daemon has the request: sending it again on a new connection would only wait again.
                self.close()
                raise DaemonTimedOut(f"the daemon on {self.path} did not answer within {self.timeout:g} s",
                                     hint=log_hint()) from None
            except OSError:
                line = b""
            if line:
                return _fields(line)
            self.close()
            if fresh:
                break
        raise DaemonNotRunning(f"the daemon on {self.path} closed the connection without a reply",
                               hint=log_hint())

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def log_hint(*, restart: bool = True) -> str:
    """Where to look when the daemon misbehaves: its log, wherever that is, and how to restart it."""
    from . import autostart

    hint = f"see the daemon's log (`aadhelper logs`: the journal under systemd, else {autostart.log_path()})"
    return hint + (", or restart it with `aadhelper daemon restart`" if restart else "")


#: Seconds between two pings while waiting for a daemon to answer, and how long a daemon that exited may take to be
#: replaced by a winner of the race it lost (racing autostarts: the socket's lock lets one daemon win).
WAIT_INTERVAL = 0.02
EXITED_GRACE = 2.0


def wait_for_daemon(path: str, timeout: float, *, exited: Callable[[], bool] = lambda: False,
                    grace: float = EXITED_GRACE, interval: float = WAIT_INTERVAL) -> bool:
    """Wait until a daemon answers a ping on ``path`` (True), ``timeout`` seconds pass, or the one we started has
    ``exited()`` for ``grace`` seconds without another answering (False); ping every ``interval`` seconds.
    Autostart and the test kit's :class:`~aadhelper.testing.daemon_process.DaemonProcess` use it (the kit with no
    grace: its own daemon exiting is the failure it reports)."""
    import time

    report = _trace
    if report is not None:  # one line for the whole wait, not one per ping
        set_trace(None)
        try:
            started = time.perf_counter()
            answered = wait_for_daemon(path, timeout, exited=exited, grace=grace, interval=interval)
            report(f"waited {1000 * (time.perf_counter() - started):.0f} ms for a daemon to answer on {path}: "
                   f"{'it did' if answered else 'none did'}")
            return answered
        finally:
            set_trace(report)
    deadline = time.monotonic() + timeout
    exited_at: float | None = None
    while time.monotonic() < deadline:
        try:
            ping(socket_path=path, timeout=2.0)
            return True
        except DaemonNotRunning:
            pass
        if exited_at is None and exited():
            exited_at = time.monotonic()
        if exited_at is not None and time.monotonic() - exited_at >= grace:
            return False
        time.sleep(interval)
    return False


#: Pauses before each new connect() while the daemon's listen backlog is full (EAGAIN: it runs, but thousands of
#: clients arrived at once) or the socket refuses (ECONNREFUSED: a daemon between accepts under that load, or none):
#: about 2 s in all for a full backlog, the first three (35 ms) for a refusal, which is usually a stale socket.
_CONNECT_RETRIES = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.5, 0.5, 0.5)
_REFUSED_RETRIES = 3


def _connect(path: str, timeout: float) -> _socket.socket | None:
    """A socket connected to ``path`` and checked (:func:`check_peer`); None when nothing listens there."""
    import time

    refused = 0
    for pause in (*_CONNECT_RETRIES, None):
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(path)
            check_peer(sock, path)
            return sock
        except FileNotFoundError:
            sock.close()
            return None
        except ConnectionRefusedError:
            sock.close()
            refused += 1
            if pause is None or refused > _REFUSED_RETRIES:
                return None
        except BlockingIOError:  # EAGAIN: the backlog is full
            sock.close()
            if pause is None:
                raise DaemonNotRunning(f"the daemon on {path} is too busy to accept a connection",
                                       hint="try again; check how many clients run at once") from None
        except OSError as exc:
            sock.close()
            raise DaemonNotRunning(f"cannot connect to {path}: {os.strerror(exc.errno or 0)}",
                                   hint=START_HINT) from None
        except BaseException:
            sock.close()
            raise
        time.sleep(pause)
    return None


_SOCKET_HINT = "remove it (as its owner), or set AADHELPER_SOCKET to a path in a directory only you can use"


def check_socket_dir(path: str) -> None:
    """Refuse a socket whose directory is not ours alone: its owner could have put their own server there (the
    /tmp fallback can be created first by another local user). A missing directory is fine: nothing answers."""
    directory = os.path.dirname(path) or "."
    try:
        info = os.stat(directory)
    except OSError:
        return
    uid = os.getuid()
    if info.st_uid != uid:
        raise UnsafeSocket(f"the socket directory {directory} belongs to uid {info.st_uid}, not to you (uid {uid})",
                           hint=_SOCKET_HINT)
    if info.st_mode & 0o077:
        raise UnsafeSocket(f"the socket directory {directory} is open to other users (mode {info.st_mode & 0o777:o})",
                           hint="chmod 700 it, or restart the daemon (it makes the directory private)")


def check_peer(sock: _socket.socket, path: str) -> None:
    """Refuse a daemon that runs as another user (SO_PEERCRED, Linux; elsewhere the directory check stands alone)."""
    option = getattr(_socket, "SO_PEERCRED", None)
    if option is None:
        return
    # struct ucred {pid_t pid; uid_t uid; gid_t gid;}: three native ints, read without importing struct.
    creds = sock.getsockopt(_socket.SOL_SOCKET, option, 12)
    peer = int.from_bytes(creds[4:8], sys.byteorder)
    if peer != os.getuid():
        raise UnsafeSocket(f"the process answering on {path} runs as uid {peer}, not as you (uid {os.getuid()})",
                           hint=_SOCKET_HINT)


def _read_line(sock: _socket.socket, limit: int) -> bytes:
    """The daemon's reply line (b"" when it closed without one)."""
    buffer = protocol.LineBuffer(limit, size=16384)  # a token reply is ~2 KB, a status of many profiles more
    try:
        while (line := buffer.pop_line()) is None:
            with buffer.space() as space:
                received = sock.recv_into(space)
            if not received:
                return buffer.pop_rest()
            buffer.commit(received)
    except protocol.LineTooLong:
        raise ProtocolError(f"reply from the daemon exceeds {limit} bytes") from None
    return line


def get_token(profile: str | None = None, *, scopes: list[str] | None = None, min_valid: int | None = None,
              url: str | None = None, socket_path: str | None = None, autostart: bool = False) -> dict[str, Any]:
    """The current token reply: ``access_token``, ``token_type``, ``expires_on``, ``profile``, ``scopes``.

    With ``url`` the daemon picks the profile by its git URL mappings and adds ``username``.
    """
    reply = call(protocol.request("token", profile=profile, scopes=scopes, min_valid=min_valid, url=url),
                 socket_path=socket_path, autostart=autostart)
    if not isinstance(reply.get("access_token"), str) or not isinstance(reply.get("token_type"), str):
        raise ProtocolError("malformed token reply from the daemon")
    return reply


def check_expiry(reply: dict[str, Any]) -> int:
    """The reply's ``expires_on``, for callers that hand the token on with its expiry (the az shim, the kubectl plugin,
    exec's endpoint): an integer (epoch seconds), else a :class:`ProtocolError`."""
    expires_on = reply.get("expires_on")
    if type(expires_on) is not int:
        raise ProtocolError("malformed token reply from the daemon: no integer expires_on")
    return expires_on


def invalidate(profile: str | None = None, *, scopes: list[str] | None = None, url: str | None = None,
               socket_path: str | None = None) -> int:
    """Drop cached tokens of a profile (all its scope sets when ``scopes`` is None); returns how many."""
    reply = call(protocol.request("invalidate", profile=profile, scopes=scopes, url=url), socket_path=socket_path)
    dropped = reply.get("dropped", 0)
    return dropped if isinstance(dropped, int) else 0


def status(*, socket_path: str | None = None) -> dict[str, Any]:
    return call(protocol.request("status"), socket_path=socket_path)


def ping(*, socket_path: str | None = None, timeout: float = 2.0) -> dict[str, Any]:
    return call(protocol.request("ping"), socket_path=socket_path, timeout=timeout)


def reload(profile: str | None = None, *, socket_path: str | None = None) -> bool:
    """Ask a running daemon to re-read config and secrets; False when no daemon runs (nothing to tell)."""
    try:
        call(protocol.request("reload", profile=profile), socket_path=socket_path, timeout=10.0)
    except DaemonNotRunning:
        return False
    return True


__all__ = ["AadhelperError", "Session", "call", "get_token", "invalidate", "ping", "reload", "status"]
