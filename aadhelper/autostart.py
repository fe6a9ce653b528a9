"""Starting the daemon on demand when a client finds none (like gpg-agent and oidc-agent do).

Used by the thin client only after a failed connect, so its imports (subprocess, the config reader) cost
nothing on the normal path. This module holds the policy (may a client start one?) and the spawn: the daemon is
started detached (its own session, stdin closed, output appended to ``<state dir>/daemon.log``); waiting until
it answers is :func:`aadhelper.client.wait_for_daemon`'s, so this module never imports the client. When several
clients race, every one may spawn a daemon: the daemons' lock on the socket path lets one win, the others exit,
and every client connects to the winner.

Autostart is off when ``AADHELPER_NO_AUTOSTART=1``, when the config says ``[daemon] autostart = false``, or
when the user enabled the systemd socket unit (then systemd owns the socket, and a missing daemon means the
unit is stopped: the client says how to start it instead of racing systemd).

A client without a session environment (cron, an SSH session without pam_systemd) finds the daemon of the user's
session through ``/run/user/UID`` (:func:`aadhelper.paths.runtime_dir`), and a daemon it starts is given the
user bus, so it reaches the same keyring (:func:`aadhelper.paths.session_environment`).
"""

from __future__ import annotations

import os

from . import paths
from .errors import ConfigError, DaemonNotRunning

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess

#: Seconds to wait for a freshly started daemon to answer.
START_TIMEOUT = 15.0


def enabled(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """Whether a client may start the daemon itself."""
    if environ.get("AADHELPER_NO_AUTOSTART", "") not in ("", "0"):
        return False
    if systemd_socket_enabled(environ):
        return False
    try:
        from .config import load_config

        return load_config().autostart
    except ConfigError:
        return True  # the daemon will report the broken config on the request itself


def systemd_socket_enabled(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    config_home = environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.exists(os.path.join(config_home, "systemd", "user", "sockets.target.wants", "aadhelper.socket"))


#: The autostarted daemon's log, in the state directory.
LOG_NAME = "daemon.log"


def log_path() -> str:
    """Where an autostarted daemon logs (nothing is created: for messages and ``aadhelper logs``)."""
    return os.path.join(paths.state_dir(), LOG_NAME)


def log_file() -> str:
    """:func:`log_path`, its directory created (private) for a daemon about to be started."""
    paths.ensure_private_dir(paths.state_dir())
    return log_path()


def spawn(socket_path: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start a detached daemon for ``socket_path``; returns it and its log file. Waiting until it answers is the
    client's (:func:`aadhelper.client.wait_for_daemon`)."""
    import subprocess

    log_path = log_file()
    # From cron or a bare SSH session: the user bus is where the keyring is (paths.session_environment).
    env = dict(os.environ, **paths.session_environment(os.environ), AADHELPER_SOCKET=socket_path)
    with open(log_path, "ab", buffering=0) as log:
        os.chmod(log_path, 0o600)
        child = subprocess.Popen(
            [*paths.console_script(), "daemon"], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True, close_fds=True, env=env)
    return child, log_path


def failed(socket_path: str, log_path: str) -> DaemonNotRunning:
    """The error for a daemon that was started but never answered, quoting its log."""
    return DaemonNotRunning(
        f"started `aadhelper daemon` but it did not answer on {socket_path}: {_last_line(log_path)}",
        hint=f"see {log_path}")


def _last_line(path: str) -> str:
    try:
        with open(path, "rb") as log:
            log.seek(max(0, os.path.getsize(path) - 4096))
            lines = [line for line in log.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no log output"
