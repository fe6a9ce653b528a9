"""The daemon: ``serve(...)`` listens on the Unix socket (its own or systemd's), checks each peer, answers
JSON-line requests from the token cache, and shuts down cleanly on SIGTERM/SIGINT.

Shape (trio's ``serve_*`` convention): :func:`serve` runs until cancelled and reports readiness with
``task_status.started(DaemonInfo)``. Per connection: peer uid check (SO_PEERCRED; only our own uid or
root), then request lines, each at most :data:`protocol.MAX_REQUEST_BYTES` and each read within
:data:`protocol.READ_TIMEOUT`. Every failure while answering becomes an error reply; nothing a client
sends can crash the daemon. Log lines carry profile names, scopes, codes and counts, never a secret.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import signal
import socket
import stat
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from . import __version__, paths, protocol, systemd
from .cache import TokenCache
from .config import Config, Profile, load_config
from .errors import AadhelperError, ConfigError, NoProfileForUrl, ProtocolError
from .grants import HttpClients, make_source
from .grants.refresh import SignIns
from .tokens import Secret

if TYPE_CHECKING:
    from .secret_store import SecretStore

log = logging.getLogger("aadhelper.daemon")

#: Most connections handled at once; more wait in the kernel's backlog.
MAX_CONNECTIONS = 512
LISTEN_BACKLOG = 128
#: accept() failures that mean "out of descriptors or memory for now" (trio.serve_listeners' list), and the
#: pause before trying again.
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY_DELAY = 0.1


@dataclass(frozen=True)
class DaemonInfo:
    """What ``serve`` reports when it is ready."""

    pid: int
    socket_path: str
    socket_activated: bool


class DaemonAlreadyRunning(AadhelperError):
    code = "daemon_already_running"


# -- secrets ---------------------------------------------------------------------------------------


class AsyncSecrets:
    """The blocking secret store seen from trio: every call in a worker thread, one at a time.

    One at a time because D-Bus keyring backends are not documented as thread-safe, and the calls are rare
    (a refresh, not a request).
    """

    def __init__(self, store: SecretStore) -> None:
        self._store = store
        self._limiter = trio.CapacityLimiter(1)

    async def get(self, profile: str, kind: str) -> Secret | None:
        return await trio.to_thread.run_sync(self._store.get, profile, kind, limiter=self._limiter)

    async def set(self, profile: str, kind: str, value: Secret) -> None:
        await trio.to_thread.run_sync(self._store.set, profile, kind, value, limiter=self._limiter)


# -- configuration -----------------------------------------------------------------------------------


class ConfigWatcher:
    """The current configuration, re-read when the file changes (checked with one stat per request)."""

    def __init__(self, path: str, loader: Callable[[str], Config] = load_config) -> None:
        self.path = path
        self._loader = loader
        self._stamp: tuple[int, int, int] | None = None
        self._config: Config | None = None
        self._error: ConfigError | None = None
        self.on_profile_changed: Callable[[str], None] = lambda name: None

    def current(self) -> Config:
        """The configuration now; a broken file raises its ConfigError (cached tokens are kept meanwhile)."""
        stamp = self._file_stamp()
        if stamp != self._stamp or (self._config is None and self._error is None):
            self._load(stamp)
        if self._error is not None:
            raise self._error
        assert self._config is not None
        return self._config

    def reload(self) -> Config:
        self._load(self._file_stamp())
        return self.current()

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_size, info.st_ino)

    def _load(self, stamp: tuple[int, int, int] | None) -> None:
        self._stamp = stamp
        try:
            new = self._loader(self.path)
        except ConfigError as exc:
            if self._error is None or self._error.message != exc.message:
                log.warning("configuration not usable: %s", exc.one_line())
            self._error = exc
            return
        old = self._config
        self._config, self._error = new, None
        if old is not None:
            for name, profile in old.profiles.items():
                if new.profiles.get(name) != profile:
                    self.on_profile_changed(name)
        log.info("configuration %s: %d profile(s)", self.path, len(new.profiles))


# -- listening -----------------------------------------------------------------------------------


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


def harden_process() -> None:
    """Keep other processes of the same user from ptrace-ing us or reading a core dump (ssh-agent does this)."""
    if sys.platform != "linux":
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_dumpable = 4
        libc.prctl(pr_set_dumpable, 0, 0, 0, 0)
    except (OSError, AttributeError):
        log.debug("prctl(PR_SET_DUMPABLE) not available")


# -- the server ---------------------------------------------------------------------------------------


@dataclass
class _Activity:
    connections: int = 0
    last: float = field(default_factory=time.monotonic)


class Daemon:
    """Answers requests: configuration + token cache + dispatch. Transport-independent, so tests can call it."""

    #: The user profiles' sign-in state, set by :func:`serve`; ``status`` reads it (None: not shown).
    sign_ins: SignIns | None = None

    def __init__(self, config: ConfigWatcher, cache: TokenCache, *, socket_path: str,
                 socket_activated: bool) -> None:
        self.config = config
        self.cache = cache
        self.socket_path = socket_path
        self.socket_activated = socket_activated
        self.started = time.time()
        self.own_uid = os.getuid()
        self.activity = _Activity()
        config.on_profile_changed = cache.forget_profile

    async def handle_line(self, line: bytes) -> dict[str, Any]:
        """One request line -> one reply message. Never raises (except cancellation)."""
        try:
            message = protocol.decode(line)
            op = message.get("op")
            if not isinstance(op, str) or op not in protocol.OPS:
                raise ProtocolError(f"unknown operation {op!r}" if isinstance(op, str) else "missing field 'op'",
                                    hint="client and daemon versions may differ")
            handler = {"ping": self._op_ping, "token": self._op_token, "invalidate": self._op_invalidate,
                       "status": self._op_status, "reload": self._op_reload}[op]
            return await handler(message)
        except AadhelperError as exc:
            return protocol.error_reply(exc.to_wire())
        except Exception:
            log.exception("internal error while answering a request")
            return protocol.error_reply(
                AadhelperError("internal error in the daemon", hint="see the daemon's log").to_wire())

    async def _op_ping(self, message: dict[str, Any]) -> dict[str, Any]:
        return protocol.ok_reply(pid=os.getpid(), version=__version__, protocol=protocol.VERSION)

    async def _op_token(self, message: dict[str, Any]) -> dict[str, Any]:
        request = protocol.TokenRequest.from_message(message)
        profile, username = self._resolve(request)
        token = await self.cache.get(profile, request.scopes, request.min_valid)
        reply = protocol.ok_reply(access_token=token.access_token.reveal(), token_type=token.token_type,
                                  expires_on=int(token.expires_on), profile=profile.name, scopes=list(token.scopes))
        if username is not None:
            reply["username"] = username
        return reply

    async def _op_invalidate(self, message: dict[str, Any]) -> dict[str, Any]:
        request = protocol.TokenRequest.from_message(message)
        profile, _ = self._resolve(request)
        return protocol.ok_reply(dropped=self.cache.invalidate(profile.name, request.scopes))

    async def _op_status(self, message: dict[str, Any]) -> dict[str, Any]:
        daemon = {"pid": os.getpid(), "version": __version__, "uptime": int(time.time() - self.started),
                  "socket": self.socket_path, "socket_activated": self.socket_activated,
                  "config": self.config.path}
        try:
            config = self.config.current()
        except ConfigError as exc:
            daemon["config_error"] = exc.to_wire()
            configured: dict[str, Profile] = {}
            default = None
        else:
            configured = dict(config.profiles)
            default = config.default_profile
        records = self.cache.status()
        profiles = []
        for name, profile in sorted(configured.items()):
            tokens = [r for r in records if r["profile"] == name]
            login = await self.sign_ins.login_required(name) \
                if self.sign_ins is not None and profile.credential == "user" else None
            if login is not None and not any(r["state"] == "login_required" for r in tokens):
                # No refresh token, or a dead one: say so for the profile's scopes even before anyone asked.
                tokens.append({"profile": name, "credential": profile.credential, "scopes": list(profile.scopes),
                               "state": "login_required", "expires_on": None, "next_refresh": None,
                               "refreshing": False, "refreshes": 0, "failures": 0, "last_error": login.to_wire(),
                               "last_error_at": None})
            profiles.append({"name": name, "credential": profile.credential, "default": name == default,
                             "tokens": tokens})
        return protocol.ok_reply(daemon=daemon, profiles=profiles)

    async def _op_reload(self, message: dict[str, Any]) -> dict[str, Any]:
        name = message.get("profile")
        if name is not None and not isinstance(name, str):
            raise ProtocolError("field 'profile' must be a string")
        # Re-reading the config forgets the profiles whose definition changed; a named profile's secret or
        # sign-in changed even if its config did not, so it starts afresh too. Others keep their tokens.
        config = self.config.reload()
        if name:
            self.cache.forget_profile(name)
        return protocol.ok_reply(profiles=sorted(config.profiles))

    def _resolve(self, request: protocol.TokenRequest) -> tuple[Profile, str | None]:
        config = self.config.current()
        if request.url is None:
            return config.profile(request.profile), None
        match = config.profile_for_url(request.url)
        if match is None:
            raise NoProfileForUrl(f"no profile is mapped to {_redact_url(request.url)}",
                                  hint="add one with `aadhelper profile git-url add NAME URL`")
        profile, mapping = match
        return profile, profile.git_username(mapping)

    # -- connections -------------------------------------------------------------------------------

    async def handle_connection(self, conn: trio.socket.SocketType) -> None:
        """One client: the peer check, then request lines answered in order until EOF; closes the socket."""
        self.activity.connections += 1
        try:
            with conn:
                uid = peer_uid(conn)
                if uid is not None and not check_peer(uid, self.own_uid):
                    log.warning("refused a connection from uid %d", uid)
                    await _send(conn, protocol.error_reply(ProtocolError(
                        "permission denied: this daemon serves only its own user").to_wire()))
                    return
                buffer = bytearray()
                while True:
                    line = await self._read_line(conn, buffer)
                    if line is None:
                        return
                    await _send(conn, await self.handle_line(line))
        except OSError:
            pass  # the connection broke (the client went away); nothing to answer
        finally:
            self.activity.connections -= 1
            self.activity.last = time.monotonic()

    async def _read_line(self, conn: trio.socket.SocketType, buffer: bytearray) -> bytes | None:
        """The next request line; None on EOF, on a half-written request that times out, or when oversized."""
        with trio.move_on_after(protocol.READ_TIMEOUT):
            while True:
                newline = buffer.find(b"\n")
                if newline >= 0:
                    line = bytes(buffer[:newline])
                    del buffer[:newline + 1]
                    if len(line) + 1 > protocol.MAX_REQUEST_BYTES:
                        break
                    return line
                if len(buffer) >= protocol.MAX_REQUEST_BYTES:
                    break
                chunk = await conn.recv(65536)
                if not chunk:
                    return None
                buffer += chunk
            await _send(conn, protocol.error_reply(ProtocolError(
                f"request larger than {protocol.MAX_REQUEST_BYTES} bytes").to_wire()))
            return None
        return None


async def _send(conn: trio.socket.SocketType, message: dict[str, Any]) -> None:
    data = memoryview(protocol.encode(message))
    while data:
        data = data[await conn.send(data):]


async def serve_connections(listen_sock: trio.socket.SocketType, daemon: Daemon) -> None:
    """Accept connections and answer each in its own task, at most :data:`MAX_CONNECTIONS` at once.

    Plain trio sockets rather than ``trio.serve_listeners`` and ``SocketStream``: for a one-line exchange
    those layers cost about as much per connection as all of the daemon's own work (``scripts/bench``,
    row 3). Like ``serve_listeners``, a shortage of file descriptors or memory pauses accepting instead
    of ending the daemon.
    """
    slots = trio.Semaphore(MAX_CONNECTIONS)

    async def answer(conn: trio.socket.SocketType) -> None:
        try:
            await daemon.handle_connection(conn)
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
            connections.start_soon(answer, conn)


def _redact_url(url: str) -> str:
    """A remote URL for a message, without any user:password part."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        rest = rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"


async def serve(store: SecretStore, *, config_path: str | None = None, socket_path: str | None = None,
                clock: Callable[[], float] = time.time, handle_signals: bool = True,
                task_status: trio.TaskStatus[DaemonInfo] = trio.TASK_STATUS_IGNORED) -> None:
    """Run the daemon until cancelled or signalled. Uses systemd's listening socket when socket-activated."""
    harden_process()
    activated = systemd.listen_fds()
    lock_fd: int | None = None
    if activated:
        listen_sock = activated[0]
        path = _bound_path(listen_sock) or socket_path or paths.socket_path()
    else:
        path = socket_path or paths.socket_path()
        listen_sock, lock_fd = bind_unix_socket(path)
    watcher = ConfigWatcher(config_path or paths.config_file())
    http = HttpClients()
    secrets = AsyncSecrets(store)
    # One per daemon, outliving the token sources the cache recreates: refreshes of a profile never overlap.
    sign_ins = SignIns(secrets)
    try:
        async with TokenCache(lambda profile: make_source(profile, http=http, secrets=secrets, clock=clock,
                                                          sign_ins=sign_ins),
                              clock=clock) as cache, trio.open_nursery() as nursery:
            daemon = Daemon(watcher, cache, socket_path=path, socket_activated=bool(activated))
            daemon.sign_ins = sign_ins
            nursery.start_soon(sign_ins.keep_storing)
            # A broken config is logged; the daemon still answers ping/status and reports it per request.
            with contextlib.suppress(ConfigError):
                watcher.current()

            def report_status() -> None:
                systemd.status(_status_line(cache))

            cache.on_change = report_status
            nursery.start_soon(serve_connections, trio.socket.from_stdlib_socket(listen_sock), daemon)
            if handle_signals:
                await nursery.start(_watch_signals, nursery.cancel_scope, watcher)
            idle_exit = _idle_exit(watcher)
            if activated and idle_exit:
                nursery.start_soon(_exit_when_idle, daemon, idle_exit, nursery.cancel_scope)
            log.info("aadhelper %s listening on %s (pid %d%s)", __version__, path, os.getpid(),
                     ", socket-activated" if activated else "")
            systemd.ready(f"listening on {path}")
            task_status.started(DaemonInfo(pid=os.getpid(), socket_path=path, socket_activated=bool(activated)))
    finally:
        systemd.stopping()
        with trio.CancelScope(shield=True):
            await http.aclose()
        if lock_fd is not None:
            # Only the lock holder removes the path: a socket-activated daemon's socket belongs to systemd.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            os.close(lock_fd)
        log.info("aadhelper daemon stopped")


def _bound_path(sock: socket.socket) -> str | None:
    name = sock.getsockname()
    return name if isinstance(name, str) and name else None


def _idle_exit(watcher: ConfigWatcher) -> int:
    try:
        return watcher.current().idle_exit
    except ConfigError:
        return 0


def _status_line(cache: TokenCache) -> str:
    next_refresh = cache.next_refresh()
    profiles = len(cache.profiles_cached())
    when = time.strftime("%H:%M:%S", time.localtime(next_refresh)) if next_refresh else "none"
    return f"{profiles} profile(s) cached; next refresh {when}"


async def _watch_signals(scope: trio.CancelScope, watcher: ConfigWatcher,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        # Started only once the handlers are in place: READY=1 before that would let an early SIGTERM kill us
        # with the default action, without STOPPING=1.
        task_status.started()
        async for signum in signals:
            if signum == signal.SIGHUP:
                log.info("SIGHUP: reloading the configuration")
                systemd.reloading()
                with contextlib.suppress(ConfigError):
                    watcher.reload()
                systemd.ready()
                continue
            log.info("%s: shutting down", signal.Signals(signum).name)
            scope.cancel()
            return


async def _exit_when_idle(daemon: Daemon, idle_exit: int, scope: trio.CancelScope) -> None:
    """Socket-activated daemons may exit when idle: systemd starts them again on the next connection.

    The next request then fetches its token afresh (the long-lived secrets are in the keyring), so this is
    off by default and meant for machines where an idle Python process matters more than that first fetch.
    """
    while True:
        await trio.sleep(max(1.0, min(idle_exit / 2, 60.0)))
        idle = time.monotonic() - daemon.activity.last
        if daemon.activity.connections == 0 and idle >= idle_exit:
            log.info("idle for %d s: exiting (systemd starts the daemon again on demand)", int(idle))
            scope.cancel()
            return


__all__ = ["AsyncSecrets", "ConfigWatcher", "Daemon", "DaemonInfo", "bind_unix_socket", "check_peer", "serve",
           "serve_connections"]

