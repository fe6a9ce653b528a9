"""Blocking client of the daemon over its Unix socket; error replies become the daemon's exceptions again.

This is the hot path of every ``aadhelper header`` and git credential call, so it imports only the
standard library's C socket module, :mod:`aadhelper.protocol`, :mod:`aadhelper.paths` and
:mod:`aadhelper.errors` (a test asserts trio, httpx and keyring stay out of ``sys.modules``).
"""

from __future__ import annotations

import _socket
import os

from . import paths, protocol
from .errors import AadhelperError, DaemonNotRunning, ProtocolError, error_from_wire

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: Seconds to wait for a reply. A cold token may need a round trip to the authority with retries.
DEFAULT_TIMEOUT = 60.0

START_HINT = "start it with `aadhelper daemon` (or `systemctl --user start aadhelper.socket`)"


def call(message: dict[str, Any], *, socket_path: str | None = None, timeout: float = DEFAULT_TIMEOUT,
         autostart: bool = False) -> dict[str, Any]:
    """Send one request and return the reply's fields; an error reply is raised as its exception class.

    With ``autostart``, a missing daemon is started (see :mod:`aadhelper.autostart`) and asked once more.
    """
    data = protocol.encode(message)
    if len(data) > protocol.MAX_REQUEST_BYTES:
        # The daemon's own limit, checked here too: one clear error, before any connection or autostart, instead
        # of the daemon's reply racing our unfinished send (a broken connection, exit 8).
        raise ProtocolError(f"request too large for the daemon: {len(data)} bytes, its limit is "
                            f"{protocol.MAX_REQUEST_BYTES} (is a URL or scope that long?)")
    path = socket_path or paths.socket_path()
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            if autostart:
                from . import autostart as starter

                if starter.enabled():
                    starter.start_daemon(path)
                    return call(message, socket_path=path, timeout=timeout)
            raise DaemonNotRunning(
                f"no aadhelper daemon answers on {path} ({type(exc).__name__})", hint=START_HINT) from None
        except OSError as exc:
            raise DaemonNotRunning(f"cannot connect to {path}: {os.strerror(exc.errno or 0)}",
                                   hint=START_HINT) from None
        try:
            sock.sendall(data)
            line = _read_line(sock, protocol.MAX_REPLY_BYTES)
        except TimeoutError:
            raise DaemonNotRunning(f"the daemon on {path} did not answer within {timeout:g} s",
                                   hint="check its log, or restart it") from None
        except OSError as exc:
            raise DaemonNotRunning(f"the connection to the daemon on {path} broke: {exc.strerror or exc}",
                                   hint="check its log, or restart it") from None
    finally:
        sock.close()
    if not line:
        raise DaemonNotRunning(f"the daemon on {path} closed the connection without a reply",
                               hint="check its log, or restart it")
    reply = protocol.decode(line)
    if reply.get("ok") is True:
        return reply
    error = reply.get("error")
    if not isinstance(error, dict):
        raise ProtocolError("malformed reply from the daemon: neither ok nor an error object")
    raise error_from_wire(error)


def _read_line(sock: _socket.socket, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if chunk.endswith(b"\n") or b"\n" in chunk:
            return b"".join(chunks)
        if size > limit:
            raise ProtocolError(f"reply from the daemon exceeds {limit} bytes")


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


__all__ = ["AadhelperError", "call", "get_token", "invalidate", "ping", "reload", "status"]
