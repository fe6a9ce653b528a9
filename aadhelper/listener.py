"""The daemon's Unix socket: binding it privately, knowing who connects, and the accept loop.

The socket lives in a 0700 directory and is created 0600 under a restrictive umask; a lock file next to it
makes "is another daemon there? then replace the stale file and bind" atomic between daemons starting at
once. Each peer's uid comes from SO_PEERCRED (ssh-agent's rule: only our own user, and root). The accept
loop runs each connection in its own task with a cap on how many run at once, and does the connection's framing
(request lines in, each at most :data:`protocol.MAX_REQUEST_BYTES` and read within :data:`protocol.READ_TIMEOUT`,
replies out within :data:`protocol.WRITE_TIMEOUT`), so that the daemon proper only answers lines.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import math
import os
import socket
import stat
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from . import paths, protocol
from .errors import ConfigError, DaemonAlreadyRunning, ProtocolError

log = logging.getLogger("aadhelper.daemon")

#: Most connections handled at once; more wait in the kernel's backlog.
MAX_CONNECTIONS = 512
#: Connections the kernel queues before connect() fails with EAGAIN: as many as the system allows (the kernel caps
#: it at net.core.somaxconn, 4096 on current Linux). At 128, 1,000 clients at once saw 479 failures while the
#: daemon itself could have kept 5,000 waiting.
LISTEN_BACKLOG = 65535
#: accept() failures that mean "out of descriptors or memory for now" (trio.serve_listeners' list), and the
#: pause before trying again.
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY_DELAY = 0.1
#: Answers one request line with one reply message; never raises (the daemon's dispatcher).
LineHandler = Callable[[bytes], Awaitable[dict[str, Any]]]


@dataclass
class Activity:
    """Connections open now, and when the last one closed (a socket-activated daemon exits when idle)."""

    connections: int = 0
    last: float = field(default_factory=time.monotonic)


def check_peer(peer_uid: int, own_uid: int) -> bool:
    """Only our own user (and root, who can read our memory anyway) may ask for tokens (ssh-agent's rule)."""
    return peer_uid in (own_uid, 0)


def peer_uid(sock: socket.socket | trio.socket.SocketType) -> int | None:
    """The connecting process's uid via SO_PEERCRED; None where the platform has no such option."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def bind_unix_socket(path: str) -> tuple[socket.socket, int]:
    """Bind and listen on ``path`` (0600 in a 0700 directory); returns the socket and the held lock fd.

    A lock file next to the socket makes the check-then-bind atomic between daemons starting at once
    (two racing autostarts end with one daemon): whoever holds the lock owns the socket path.
    """
    directory = os.path.dirname(path) or "."
    paths.ensure_private_dir(directory)
    lock_fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        raise DaemonAlreadyRunning(f"another aadhelper daemon already owns {path}",
                                   hint="use it, or stop it first") from None
    try:
        if _answers(path):
            raise DaemonAlreadyRunning(f"another aadhelper daemon already answers on {path}",
                                       hint="use it, or stop it first")
        _remove_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # no window in which the socket exists with wider permissions
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        sock.listen(LISTEN_BACKLOG)
        return sock, lock_fd
    except BaseException:
        os.close(lock_fd)
        raise


def _answers(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _remove_stale(path: str) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ConfigError(f"{path} exists and is not a socket", hint="remove it or point AADHELPER_SOCKET elsewhere")
    log.info("replacing stale socket %s", path)
    os.unlink(path)


async def serve_connections(listen_sock: trio.socket.SocketType, answer: LineHandler,
                            activity: Activity | None = None) -> None:
    """Accept connections and serve each in its own task, at most :data:`MAX_CONNECTIONS` at once.

    Plain trio sockets rather than ``trio.serve_listeners`` and ``SocketStream``: for a one-line exchange
    those layers cost about as much per connection as all of the daemon's own work (``scripts/bench``,
    row 3). Like ``serve_listeners``, a shortage of file descriptors or memory pauses accepting instead
    of ending the daemon.
    """
    slots = trio.Semaphore(MAX_CONNECTIONS)
    activity = activity or Activity()
    own_uid = os.getuid()

    async def serve_one(conn: trio.socket.SocketType) -> None:
        try:
            await _serve_connection(conn, answer, activity, own_uid)
        finally:
            slots.release()

    async with trio.open_nursery() as connections:
        while True:
            try:
                slots.acquire_nowait()  # without the scheduling round trip of `await slots.acquire()`
            except trio.WouldBlock:
                await slots.acquire()  # at the limit: further clients wait in the kernel's backlog
            try:
                conn, _ = await listen_sock.accept()
            except OSError as exc:
                slots.release()
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                log.error("cannot accept a connection: %s; retrying in %g s", os.strerror(exc.errno),
                          ACCEPT_RETRY_DELAY)
                await trio.sleep(ACCEPT_RETRY_DELAY)
                continue
            connections.start_soon(serve_one, conn)


async def _serve_connection(conn: trio.socket.SocketType, answer: LineHandler, activity: Activity,
                            own_uid: int) -> None:
    """One client: the peer check, then request lines answered in order until EOF; closes the socket.

    One cancel scope per connection carries both timeouts: its deadline is READ_TIMEOUT while a request is read,
    none while it is answered (that may wait for the authority), WRITE_TIMEOUT while the reply is sent; when one
    passes, the connection is dropped. (A scope per read and per write cost ~19 us a request, this ~8 us: measured
    with 20,000 of each; scripts/bench row 3 is within a few percent of a bare trio server.)
    """
    activity.connections += 1
    try:
        with conn, trio.CancelScope() as deadline:
            uid = peer_uid(conn)
            if uid is not None and not check_peer(uid, own_uid):
                log.warning("refused a connection from uid %d", uid)
                deadline.deadline = trio.current_time() + protocol.WRITE_TIMEOUT
                await _send(conn, protocol.error_reply(ProtocolError(
                    "permission denied: this daemon serves only its own user").to_wire()))
                return
            # Small at first: 5,000 waiting clients must not cost 64 KB each; a request is ~100 bytes.
            buffer = protocol.LineBuffer(protocol.MAX_REQUEST_BYTES, size=1024, wipe=False)
            while True:
                deadline.deadline = trio.current_time() + protocol.READ_TIMEOUT
                try:
                    line = await _read_line(conn, buffer)
                except protocol.LineTooLong:
                    deadline.deadline = trio.current_time() + protocol.WRITE_TIMEOUT
                    await _send(conn, protocol.error_reply(ProtocolError(
                        f"request larger than {protocol.MAX_REQUEST_BYTES} bytes").to_wire()))
                    return
                if line is None:
                    return
                deadline.deadline = math.inf
                reply = await answer(line)
                deadline.deadline = trio.current_time() + protocol.WRITE_TIMEOUT
                await _send(conn, reply)
    except OSError:
        pass  # the connection broke (the client went away)
    finally:
        activity.connections -= 1
        activity.last = time.monotonic()


async def _read_line(conn: trio.socket.SocketType, buffer: protocol.LineBuffer) -> bytes | None:
    """The next request line (a last one may end at EOF instead of a newline); None at EOF. Over the limit it
    raises LineTooLong. The caller's deadline bounds the wait."""
    while (line := buffer.pop_line()) is None:
        with buffer.space() as space:
            received = await conn.recv_into(space)
        if not received:
            # EOF: a request the client finished with shutdown(SHUT_WR) instead of a newline is answered.
            rest = buffer.pop_rest()
            return rest if rest.strip() else None
        buffer.commit(received)
    return line


async def _send(conn: trio.socket.SocketType, message: dict[str, Any]) -> None:
    """Send a reply (the caller's deadline bounds it: a client that does not read loses its connection)."""
    data = memoryview(protocol.encode(message))
    while data:
        data = data[await conn.send(data):]


def bound_path(sock: socket.socket) -> str | None:
    name = sock.getsockname()
    return name if isinstance(name, str) and name else None
