"""``aadhelper daemon``: run the token daemon in the foreground (systemd, a terminal, or autostart); and
``aadhelper daemon start|stop|restart``: manage the one that serves this user's socket.

``stop`` asks the daemon through its socket (the protocol's ``stop`` op) and waits, with a timeout, until its
process is gone; a daemon from before that op gets SIGTERM. ``start`` starts one detached, as autostart does.
When systemd manages the daemon (it was socket-activated, or the socket unit is enabled), these commands say so and
act through ``systemctl --user`` with systemd's words, because a daemon stopped behind systemd's back is started
again by its socket on the next request.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from typing import Any

from .. import client, paths, protocol
from ..errors import AadhelperError, DaemonNotRunning, ProtocolError
from .common import SERVICE_UNIT, SOCKET_UNIT, say, systemctl, systemctl_failure, user_manager_answers, warn

#: Seconds `stop` waits for the daemon's process to end (it finishes the replies in flight and its fetcher first).
STOP_TIMEOUT = 10.0
#: Seconds between two looks at whether the stopped daemon's process is gone.
_POLL = 0.05


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .args import seconds

    parser = sub.add_parser(
        "daemon", help="run the token daemon in the foreground, or start/stop/restart it",
        usage="aadhelper daemon [-h] [--socket PATH] [--config FILE] [--secret-store {keyring,memory}] [-v]\n"
              "       aadhelper daemon start|stop|restart [--timeout SECONDS]",
        description="Run the daemon: keeps secrets in the OS keyring, tokens in memory, refreshes them ahead of "
                    "expiry and answers clients on a Unix socket. Uses systemd's socket when socket-activated. "
                    "With an ACTION, manage the daemon that serves the socket instead.")
    _run_options(parser)
    parser.set_defaults(func=run)
    # prog given: argparse would otherwise build the actions' prog from the two-line usage above, and their --help,
    # usage errors and man page sections would be named by it.
    actions = parser.add_subparsers(dest="daemon_action", metavar="ACTION", prog="aadhelper daemon")
    for name, help_text, handler in (
            ("start", "start the daemon in the background (nothing to do when one answers)", _start),
            ("stop", "stop the running daemon (through its socket, or systemctl --user under systemd)", _stop),
            ("restart", "stop the running daemon, then start one (picks up a new version, AADHELPER_LOG_LEVEL...)",
             _restart)):
        action = actions.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        action.add_argument("--timeout", type=seconds(1, 600), default=int(STOP_TIMEOUT), metavar="SECONDS",
                            help=f"how long to wait for the daemon to stop or answer (default {STOP_TIMEOUT:g})")
        action.set_defaults(func=handler)


def _run_options(parser: argparse.ArgumentParser) -> None:
    """The options of the daemon in the foreground (one home: the full parser and :func:`run_fast` take them)."""
    parser.add_argument("--socket", metavar="PATH", help="socket path (default: $AADHELPER_SOCKET or "
                        "$XDG_RUNTIME_DIR/aadhelper/daemon.sock)")
    parser.add_argument("--config", metavar="FILE", help="config file (default: $AADHELPER_CONFIG or the "
                        "user config dir)")
    parser.add_argument("--secret-store", choices=("keyring", "memory"),
                        help="where secrets live (default: $AADHELPER_SECRET_STORE or keyring); "
                             "memory is for tests and demos")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details (never secrets)")


def parse_fast(argv: list[str]) -> argparse.Namespace | None:
    """``aadhelper daemon [OPTIONS]`` (the daemon in the foreground, as systemd and autostart run it) read without
    building the whole command line's parser, whose other verbs' imports cost ~10 ms of every daemon start (bench
    row 7); None for anything else (an action, --help, a mistake), which the full parser then reads and reports."""

    class Declined(Exception):
        pass

    class Quiet(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            raise Declined

    parser = Quiet(prog="aadhelper daemon", add_help=False)
    _run_options(parser)
    try:
        args, extras = parser.parse_known_args(argv)
    except Declined:
        return None
    return None if extras else args


def run(args: argparse.Namespace) -> int:
    from ..daemon_start import run_daemon

    return run_daemon(config_path=args.config, socket_path=args.socket, secret_store=args.secret_store,
                      verbose=args.verbose)


# -- start / stop / restart ----------------------------------------------------------------------------------------


def _start(args: argparse.Namespace) -> int:
    path = _socket(args)
    running = _daemon_status(path, args.timeout)
    if running is not None:
        say(f"a daemon already answers on {path} (pid {running.get('pid')}): nothing to start")
        return 0
    if _systemd_enabled() and user_manager_answers():
        _systemctl("start", SOCKET_UNIT)
        say(f"started {SOCKET_UNIT} (`systemctl --user start {SOCKET_UNIT}`): systemd starts the daemon on the "
            "first request")
        return 0
    _spawn(path, args.timeout)
    return 0


def _stop(args: argparse.Namespace) -> int:
    path = _socket(args)
    running = _daemon_status(path, args.timeout)
    if running is None:
        say(f"no daemon answers on {path}: nothing to stop")
        return 0
    if _managed_by_systemd(running):
        if user_manager_answers():
            _systemctl("stop", SERVICE_UNIT)
            say(f"stopped {SERVICE_UNIT} (`systemctl --user stop {SERVICE_UNIT}`); {SOCKET_UNIT} still listens and "
                f"starts it again on the next request (`systemctl --user stop {SOCKET_UNIT}` stops that too)")
            return 0
        warn(f"the daemon on {path} was started by systemd, but `systemctl --user` does not answer here: stopping it "
             f"through its socket; {SOCKET_UNIT} starts it again on the next request")
    _stop_through_socket(path, running, args.timeout)
    return 0


def _restart(args: argparse.Namespace) -> int:
    path = _socket(args)
    running = _daemon_status(path, args.timeout)
    systemd_managed = _managed_by_systemd(running) if running is not None else _systemd_enabled()
    if systemd_managed and user_manager_answers():
        _systemctl("restart", SERVICE_UNIT)
        say(f"restarted {SERVICE_UNIT} (`systemctl --user restart {SERVICE_UNIT}`)")
        return 0
    if running is not None:
        _stop_through_socket(path, running, args.timeout)
    _spawn(path, args.timeout)
    return 0


def _socket(args: argparse.Namespace) -> str:
    return os.path.abspath(args.socket) if args.socket else paths.socket_path()


def _daemon_status(path: str, timeout: float) -> dict[str, Any] | None:
    """The running daemon's ``ping`` reply (pid, socket_activated, log...), or None when none answers."""
    try:
        return client.call(protocol.request("ping"), socket_path=path, timeout=timeout)
    except DaemonNotRunning:
        return None


def _managed_by_systemd(daemon: dict[str, Any]) -> bool:
    log = daemon.get("log")
    return bool(daemon.get("socket_activated")) or (isinstance(log, dict) and log.get("kind") == "journal")


def _systemd_enabled() -> bool:
    from ..autostart import systemd_socket_enabled

    return systemd_socket_enabled()


def _systemctl(verb: str, unit: str) -> None:
    result = systemctl("--user", verb, unit)
    if result.returncode != 0:
        raise AadhelperError(f"`systemctl --user {verb} {unit}` failed: {systemctl_failure(result)}",
                             hint=f"see `systemctl --user status {unit}`")


def _stop_through_socket(path: str, daemon: dict[str, Any], timeout: float) -> None:
    """Ask the daemon to stop (SIGTERM for one that predates the ``stop`` op), then wait until its process is gone."""
    pid = daemon.get("pid")
    if not isinstance(pid, int) or pid <= 1:
        raise ProtocolError(f"the daemon on {path} did not say its pid")
    try:
        client.call(protocol.request("stop"), socket_path=path, timeout=timeout)
    except ProtocolError as exc:
        if "unknown operation" not in exc.message:
            raise
        # An older daemon: the same shutdown through its signal handler. Its uid was checked on connect.
        os.kill(pid, signal.SIGTERM)
    except DaemonNotRunning:
        pass  # it closed the connection while stopping: what we asked for
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            raise AadhelperError(f"the daemon (pid {pid}) on {path} did not stop within {timeout:g} s",
                                 hint=f"{client.log_hint(restart=False)}; `kill {pid}` ends it")
        time.sleep(_POLL)
    say(f"stopped the daemon (pid {pid}) on {path}")


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs. A zombie has stopped: whoever started the daemon (a test, a supervisor
    other than systemd) may reap it late."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[:1] not in ([b"Z"], [b"X"])
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _spawn(path: str, timeout: float) -> None:
    """Start a detached daemon, as autostart does (whatever autostart's setting: the user asked), and wait for it."""
    from .. import autostart

    child, log_path = autostart.spawn(path)
    if not client.wait_for_daemon(path, max(timeout, autostart.START_TIMEOUT), exited=lambda: child.poll() is not None):
        raise autostart.failed(path, log_path)
    pid = client.ping(socket_path=path).get("pid")
    say(f"started the daemon (pid {pid}) on {path}; it logs to {log_path} (`aadhelper logs`)")
