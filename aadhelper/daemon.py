"""The daemon: ``serve(...)`` listens on the Unix socket (its own or systemd's), checks each peer, answers
JSON-line requests from the token cache, and shuts down cleanly on SIGTERM/SIGINT.

Shape (trio's ``serve_*`` convention): :func:`serve` runs until cancelled and reports readiness with
``task_status.started(DaemonInfo)``. The socket and its connections (private binding, peer credentials, the
accept loop, framing and timeouts) are :mod:`aadhelper.listener`'s; :class:`Daemon` is the dispatcher: one
request line in, one reply out. Every failure while answering becomes an error reply; nothing a client sends can
crash the daemon. Log lines carry
profile names, scopes, codes and counts, never a secret.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from . import __version__, paths, protocol, systemd
from .cache import TokenCache, login_required_status
from .config import GitUrl, Profile
from .config_watch import ConfigWatcher
from .errors import AadhelperError, ConfigError, NoProfileForUrl, ProtocolError
from .listener import Activity, bind_unix_socket, bound_path, serve_connections
from .process_setup import environment_report, harden_process
from .token_request import TokenRequest

if TYPE_CHECKING:
    from .fetcher import Fetcher, SignInStates

log = logging.getLogger("aadhelper.daemon")
#: The words of every hint that sends the user to the daemon's log; the daemon adds where that is.
_SEE_LOG = "see the daemon's log"
#: Credential kinds whose state status asks the fetcher for (a client secret has none worth a round trip).
_STATEFUL = ("certificate", "federated")


@dataclass(frozen=True)
class DaemonInfo:
    """What ``serve`` reports when it is ready."""

    pid: int
    socket_path: str
    socket_activated: bool


# -- the server ---------------------------------------------------------------------------------------


class Daemon:
    """Answers requests: configuration + token cache + dispatch. Transport-independent, so tests can call it."""

    def __init__(self, config: ConfigWatcher, cache: TokenCache, *, socket_path: str,
                 socket_activated: bool, fetcher: Fetcher | None = None) -> None:
        self.config = config
        self.cache = cache
        #: Asked whether user profiles are signed in, for ``status`` (None: not shown).
        self.fetcher = fetcher
        self.socket_path = socket_path
        self.socket_activated = socket_activated
        self.started = time.time()
        #: Set by a client's ``stop``; :func:`serve` then shuts down as on SIGTERM (after the reply is sent).
        self.stop_requested = trio.Event()
        #: Where this process's log goes (``status``: ``daemon.log``; ``aadhelper logs`` reads it).
        self.log = log_destination()
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
                       "status": self._op_status, "reload": self._op_reload, "stop": self._op_stop}[op]
            return await handler(message)
        except AadhelperError as exc:
            return protocol.error_reply(self.where_logged(exc.to_wire()))
        except Exception:
            log.exception("internal error while answering a request")
            return protocol.error_reply(self.where_logged(
                AadhelperError("internal error in the daemon", hint="see the daemon's log").to_wire()))

    def where_logged(self, wire: dict[str, Any]) -> dict[str, Any]:
        """An error object whose hint says "see the daemon's log" with where that log is (the one home of that)."""
        hint, shown = wire.get("hint"), str(self.log["shown"])
        if isinstance(hint, str) and _SEE_LOG in hint and shown not in hint:
            wire["hint"] = hint.replace(_SEE_LOG, f"{_SEE_LOG} ({shown})", 1)
        return wire

    async def _op_ping(self, message: dict[str, Any]) -> dict[str, Any]:
        # socket_activated and log too: `daemon stop|restart` and `logs` need only these, and `status` asks the
        # fetcher and the keyring about every profile.
        return protocol.ok_reply(pid=os.getpid(), version=__version__, protocol=protocol.VERSION,
                                 socket_activated=self.socket_activated, log=self.log)

    async def _op_token(self, message: dict[str, Any]) -> dict[str, Any]:
        request = TokenRequest.from_message(message)
        profile, git_url = await self._resolve(request)
        token = await self.cache.get(profile, request.scopes, request.min_valid)
        reply = protocol.ok_reply(access_token=token.access_token.reveal(), token_type=token.token_type,
                                  expires_on=int(token.expires_on), profile=profile.name, scopes=list(token.scopes))
        if git_url is not None:
            reply["username"] = profile.git_username(git_url, token.account)
        # For clients that hold the token themselves (the kubectl plugin, the az shim): whose token it is, and how
        # long before expires_on the daemon itself stops serving it.
        reply["tenant"] = profile.tenant
        reply["min_valid"] = int(self.cache.served_min_valid(profile, request.scopes, request.min_valid))
        return reply

    async def _op_stop(self, message: dict[str, Any]) -> dict[str, Any]:
        # The reply goes out before serve() acts on the event: the connection's send does not yield first.
        log.info("a client asked the daemon to stop (`aadhelper daemon stop`)")
        self.stop_requested.set()
        return protocol.ok_reply(pid=os.getpid())

    async def _op_invalidate(self, message: dict[str, Any]) -> dict[str, Any]:
        request = TokenRequest.from_message(message)
        profile, _ = await self._resolve(request)
        return protocol.ok_reply(dropped=self.cache.invalidate(profile.name, request.scopes))

    async def _op_status(self, message: dict[str, Any]) -> dict[str, Any]:
        daemon = {"pid": os.getpid(), "version": __version__, "uptime": int(time.time() - self.started),
                  "socket": self.socket_path, "socket_activated": self.socket_activated,
                  "config": self.config.path, "log": self.log, "environment": environment_report()}
        try:
            config = await self.config.current()
        except ConfigError as exc:
            daemon["config_error"] = exc.to_wire()
            configured: dict[str, Profile] = {}
            default = None
        else:
            configured = dict(config.profiles)
            default = config.default_profile
            daemon.update(self.config.status())  # a broken file while the last good configuration serves
            daemon["proxy"] = config.proxy.to_status()
        records = self.cache.status()
        logins, unsaved = await self._sign_in_states([p for p in configured.values() if p.credential == "user"])
        credentials = await self._credential_states([p for p in configured.values() if p.credential in _STATEFUL])
        profiles = []
        for entry in records:
            error = entry.get("last_error")
            if error is not None:
                entry["last_error"] = self.where_logged(dict(error))
        for name, profile in sorted(configured.items()):
            tokens = [r for r in records if r["profile"] == name]
            login = logins.get(name)
            if login is not None and not any(r["state"] == "login_required" for r in tokens):
                # No refresh token, or a dead one: say so for the profile's scopes even before anyone asked.
                tokens.append(login_required_status(profile, login))
            record = {"name": name, "credential": profile.credential, "default": name == default, "tokens": tokens,
                      "min_valid": profile.min_valid, **credentials.get(name, {})}
            if name in unsaved:
                record["unsaved_sign_in"] = True
            if profile.managed_identity is not None:
                record["managed_identity"] = profile.managed_identity.as_dict()
            profiles.append(record)
        return protocol.ok_reply(daemon=daemon, profiles=profiles)

    async def _sign_in_states(self, users: list[Profile]) -> SignInStates:
        """Per user profile, why it needs a login (None: signed in, or nobody can tell right now), and the user
        profiles whose rotated refresh token the keyring has not taken yet: one question to the fetcher for all of
        them, bounded by its deadline (a status must answer even while the fetcher restarts or is stopped)."""
        if self.fetcher is None or not users:
            return {}, ()
        try:
            return await self.fetcher.sign_in_states([profile.name for profile in users])
        except AadhelperError as exc:
            log.info("status: cannot tell whether the user profiles are signed in (%s)", exc.one_line())
            return {}, ()

    async def _credential_states(self, profiles: list[Profile]) -> dict[str, dict[str, Any]]:
        """Per app profile, what status shows of its credential (a certificate's thumbprint and expiry, and
        ``credential_error`` when a fetch would fail on it); bounded by the fetcher's deadline like sign-in states."""
        if self.fetcher is None or not profiles:
            return {}
        try:
            states = await self.fetcher.credential_states(profiles)
        except AadhelperError as exc:
            log.info("status: cannot tell the state of the app credentials (%s)", exc.one_line())
            return {}
        return {name: {("credential_error" if key == "error" else key): value for key, value in state.items()
                       if value is not None} for name, state in states.items()}

    async def _op_reload(self, message: dict[str, Any]) -> dict[str, Any]:
        name = message.get("profile")
        if name is not None and not isinstance(name, str):
            raise ProtocolError("field 'profile' must be a string")
        # Re-reading the config forgets the profiles whose definition changed; a named profile's secret or
        # sign-in changed even if its config did not, so it starts afresh too (first: a broken config file must not
        # keep the old secret's tokens and errors). Others keep their tokens.
        if name:
            self.cache.forget_profile(name)
        config = await self.config.reload()
        return protocol.ok_reply(profiles=sorted(config.profiles))

    async def _resolve(self, request: TokenRequest) -> tuple[Profile, GitUrl | None]:
        """The profile a request names, and the git URL mapping that chose it (None without ``url``)."""
        config = await self.config.current()
        with self.config.lookups():
            if request.url is None:
                return config.profile(request.profile), None
            match = config.profile_for_url(request.url)
            if match is None:
                raise NoProfileForUrl(f"no profile is mapped to {_redact_url(request.url)}",
                                      hint="add one with `aadhelper profile git-url add NAME URL`")
            return match


def _redact_url(url: str) -> str:
    """A remote URL for a message, without any user:password part."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        rest = rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"


async def serve(fetcher: Fetcher, *, config_path: str | None = None, socket_path: str | None = None,
                clock: Callable[[], float] = time.time, handle_signals: bool = True,
                task_status: trio.TaskStatus[DaemonInfo] = trio.TASK_STATUS_IGNORED) -> None:
    """Run the daemon until cancelled or signalled. Uses systemd's listening socket when socket-activated.

    ``fetcher`` obtains the tokens (a :class:`~aadhelper.fetcher.parent.ProcessFetcher` in the real daemon);
    it is entered before anything is served and left after the last reply.
    """
    harden_process()
    activated = systemd.listen_fds()
    lock_fd: int | None = None
    if activated:
        listen_sock = activated[0]
        path = bound_path(listen_sock) or socket_path or paths.socket_path()
    else:
        path = socket_path or paths.socket_path()
        listen_sock, lock_fd = bind_unix_socket(path)
    watcher = ConfigWatcher(config_path or paths.config_file())
    try:
        async with fetcher, TokenCache(fetcher.source, clock=clock) as cache, trio.open_nursery() as nursery:
            daemon = Daemon(watcher, cache, socket_path=path, socket_activated=bool(activated), fetcher=fetcher)
            # A broken config is logged; the daemon still answers ping/status and reports it per request.
            with contextlib.suppress(ConfigError):
                await watcher.current()

            def report_status() -> None:
                systemd.status(_status_line(cache))

            cache.on_change = report_status
            activity = Activity()
            nursery.start_soon(serve_connections, trio.socket.from_stdlib_socket(listen_sock), daemon.handle_line,
                               activity)
            if handle_signals:
                await nursery.start(_watch_signals, nursery.cancel_scope, watcher)
            nursery.start_soon(_stop_when_asked, daemon.stop_requested, nursery.cancel_scope)
            idle_exit = _idle_exit(watcher)
            if activated and idle_exit:
                nursery.start_soon(_exit_when_idle, activity, idle_exit, nursery.cancel_scope)
            log.info("aadhelper %s listening on %s (pid %d%s)", __version__, path, os.getpid(),
                     ", socket-activated" if activated else "")
            systemd.ready(f"listening on {path}")
            task_status.started(DaemonInfo(pid=os.getpid(), socket_path=path, socket_activated=bool(activated)))
    finally:
        systemd.stopping()
        if lock_fd is not None:
            # Only the lock holder removes the path: a socket-activated daemon's socket belongs to systemd.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            os.close(lock_fd)
        log.info("aadhelper daemon stopped")


def _idle_exit(watcher: ConfigWatcher) -> int:
    config = watcher.last_good
    return config.idle_exit if config is not None else 0


def _status_line(cache: TokenCache) -> str:
    next_refresh = cache.next_refresh()
    profiles = len(cache.profiles_cached())
    try:
        when = time.strftime("%H:%M:%S", time.localtime(next_refresh)) if next_refresh else "none"
    except (OverflowError, OSError, ValueError):  # a time no calendar holds must not stop the daemon
        when = "never"
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
                    await watcher.reload()
                systemd.ready()
                continue
            log.info("%s: shutting down", signal.Signals(signum).name)
            scope.cancel()
            return


async def _stop_when_asked(requested: trio.Event, scope: trio.CancelScope) -> None:
    await requested.wait()
    log.info("stopping as a client asked")
    scope.cancel()


def log_destination() -> dict[str, Any]:
    """Where this process's log lines (stderr) go: ``journal`` (systemd's journal), ``file`` (with its ``path``: the
    autostart log) or ``terminal``/``other``; ``shown`` is that in words for messages."""
    if os.environ.get("JOURNAL_STREAM"):
        return {"kind": "journal", "path": None, "shown": "`journalctl --user -u aadhelper.service`"}
    try:
        target = os.readlink("/proc/self/fd/2")
    except OSError:
        target = ""
    if target.startswith("/") and os.path.isfile(target):
        return {"kind": "file", "path": target, "shown": target}
    kind = "terminal" if target.startswith("/dev/") else "other"
    return {"kind": kind, "path": None, "shown": "the stderr of the terminal that ran `aadhelper daemon`"
            if kind == "terminal" else "wherever the stderr of `aadhelper daemon` goes"}


async def _exit_when_idle(activity: Activity, idle_exit: int, scope: trio.CancelScope) -> None:
    """Socket-activated daemons may exit when idle: systemd starts them again on the next connection.

    The next request then fetches its token afresh (the long-lived secrets are in the keyring), so this is
    off by default and meant for machines where an idle Python process matters more than that first fetch.
    """
    while True:
        await trio.sleep(max(1.0, min(idle_exit / 2, 60.0)))
        idle = time.monotonic() - activity.last
        if activity.connections == 0 and idle >= idle_exit:
            log.info("idle for %d s: exiting (systemd starts the daemon again on demand)", int(idle))
            scope.cancel()
            return


__all__ = ["Daemon", "DaemonInfo", "serve"]

