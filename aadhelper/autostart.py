"""Starting the daemon on demand when a client finds none (like gpg-agent and oidc-agent do).

Used by the thin client only after a failed connect, so its imports (subprocess, the config reader) cost
nothing on the normal path. The daemon is started detached (its own session, stdin closed, output
appended to ``<state dir>/daemon.log``), and the client waits until it answers. When several clients race,
every one may spawn a daemon: the daemons' lock on the socket path lets one win, the others exit, and every
client connects to the winner.

Autostart is off when ``AADHELPER_NO_AUTOSTART=1``, when the config says ``[daemon] autostart = false``, or
when the user enabled the systemd socket unit (then systemd owns the socket, and a missing daemon means the
unit is stopped: the client says how to start it instead of racing systemd).
"""

from __future__ import annotations

import os
import time

from . import paths
from .errors import ConfigError, DaemonNotRunning

#: Seconds to wait for a freshly started daemon to answer.
START_TIMEOUT = 15.0
POLL_INTERVAL = 0.02


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


def log_file() -> str:
    return os.path.join(paths.ensure_private_dir(paths.state_dir()), "daemon.log")


def start_daemon(socket_path: str) -> None:
    """Start a detached daemon for ``socket_path`` and wait until it answers a ping."""
    import subprocess

    from . import client

    log_path = log_file()
    env = dict(os.environ, AADHELPER_SOCKET=socket_path)
    with open(log_path, "ab", buffering=0) as log:
        os.chmod(log_path, 0o600)
        child = subprocess.Popen(
            [*paths.console_script(), "daemon"], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True, close_fds=True, env=env)
    deadline = time.monotonic() + START_TIMEOUT
    exited_at: float | None = None
    while time.monotonic() < deadline:
        try:
            client.ping(socket_path=socket_path, timeout=2.0)
            return
        except DaemonNotRunning:
            pass
        if exited_at is None and child.poll() is not None:
            exited_at = time.monotonic()
        # Our daemon lost the race (or failed): give a winner a moment, then report the failure.
        if exited_at is not None and time.monotonic() - exited_at > 2.0:
            break
        time.sleep(POLL_INTERVAL)
    raise DaemonNotRunning(
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
