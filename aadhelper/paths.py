"""Where aadhelper keeps its files: the socket, the config file, the state (log) directory.

Environment overrides come first (``AADHELPER_SOCKET``, ``AADHELPER_CONFIG``, ``AADHELPER_STATE_DIR``).
The socket path is computed with the standard library only, because the thin client needs it on every
call and importing platformdirs costs ~13 ms; it follows the XDG rule platformdirs and systemd use
(``$XDG_RUNTIME_DIR/aadhelper``, which is what ``%t/aadhelper`` means in a user unit). The config and
state directories come from platformdirs, imported only when asked for. :func:`write_file_atomically` is the one
way aadhelper writes a file of its own (the config, the sign-in accounts, the az shim).
"""

from __future__ import annotations

import os
import stat
import sys

from .errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:  # not imported at run time: the thin client imports this module on every call
    from collections.abc import Mapping

APP_NAME = "aadhelper"
SOCKET_NAME = "daemon.sock"
#: systemd-logind's per-user runtime directory (what XDG_RUNTIME_DIR normally names).
_RUN_USER = "/run/user/{uid}"
#: The user's D-Bus session bus socket in the runtime directory ("the user bus" of systemd and dbus-user-session).
_USER_BUS = "bus"


def runtime_dir() -> str:
    """The per-user runtime directory for the socket (not created here), in this order:

    1. ``$XDG_RUNTIME_DIR/aadhelper`` (what ``%t/aadhelper`` means in a systemd user unit);
    2. ``/run/user/UID/aadhelper`` when that directory exists and is ours (sessions without the variable);
    3. ``$TMPDIR`` (else ``/tmp``) ``/aadhelper-UID``: another local user can create that name first, so the daemon
       creates it 0700 and refuses it unless it is a real directory of ours, and the client refuses a directory
       that is not ours alone or a daemon of another uid (:mod:`aadhelper.client`).
    """
    runtime = _session_runtime_dir(os.environ)
    if runtime is not None:
        return os.path.join(runtime, APP_NAME)
    # No session runtime dir (a container, or cron/ssh after the user's last logout without lingering): a private
    # directory in the temp dir.
    return os.path.join(os.environ.get("TMPDIR") or "/tmp", f"{APP_NAME}-{os.getuid()}")


def _session_runtime_dir(environ: Mapping[str, str]) -> str | None:
    """``$XDG_RUNTIME_DIR``, else ``/run/user/UID`` when it exists and is ours, else None."""
    xdg = environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg) and os.path.isdir(xdg):
        return xdg
    run_user = _RUN_USER.format(uid=os.getuid())
    try:
        return run_user if os.stat(run_user).st_uid == os.getuid() else None
    except OSError:
        return None


def session_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """What a daemon started from ``environ`` needs to reach the user's session: ``XDG_RUNTIME_DIR`` and
    ``DBUS_SESSION_BUS_ADDRESS`` filled in where they are missing. Returns only the variables to add.

    A cron job, or an SSH session without pam_systemd, has neither variable; a daemon it autostarts would find
    no Secret Service (python keyring's D-Bus library reads only ``DBUS_SESSION_BUS_ADDRESS``) and serve no
    secret, while the user's keyring is reachable on the user bus ``/run/user/UID/bus`` that systemd (with
    dbus-user-session) keeps while the user is logged in or lingering. libdbus and sd-bus fall back to that
    socket the same way. It is used only when it is a socket of ours in a runtime directory of ours.
    """
    added: dict[str, str] = {}
    runtime = _session_runtime_dir(environ)
    if runtime is None:
        return added
    if not environ.get("XDG_RUNTIME_DIR"):
        added["XDG_RUNTIME_DIR"] = runtime
    if not environ.get("DBUS_SESSION_BUS_ADDRESS"):
        bus = os.path.join(runtime, _USER_BUS)
        try:
            info = os.stat(bus)
        except OSError:
            return added
        if stat.S_ISSOCK(info.st_mode) and info.st_uid == os.getuid():
            added["DBUS_SESSION_BUS_ADDRESS"] = f"unix:path={bus}"
    return added


def socket_path() -> str:
    """The daemon's Unix socket: ``$AADHELPER_SOCKET`` or ``<runtime dir>/daemon.sock``."""
    return os.environ.get("AADHELPER_SOCKET") or os.path.join(runtime_dir(), SOCKET_NAME)


def config_file() -> str:
    """The TOML configuration file: ``$AADHELPER_CONFIG`` or ``<user config dir>/config.toml``."""
    override = os.environ.get("AADHELPER_CONFIG")
    if override:
        return override
    import platformdirs

    return os.path.join(platformdirs.user_config_dir(APP_NAME, appauthor=False), "config.toml")


def state_dir() -> str:
    """Where the autostarted daemon writes its log: ``$AADHELPER_STATE_DIR`` or the user state dir."""
    override = os.environ.get("AADHELPER_STATE_DIR")
    if override:
        return override
    import platformdirs

    return platformdirs.user_state_dir(APP_NAME, appauthor=False)


def ensure_private_dir(path: str) -> str:
    """Create ``path`` (and parents) with mode 0700, or check that an existing one is ours and private.

    A directory owned by someone else is refused: whoever owns it could swap our socket for theirs.
    A group/world-accessible one of ours is tightened, since older versions or a careless mkdir may have
    left it so.
    """
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{path} is not a directory", hint="remove it or point AADHELPER_SOCKET elsewhere")
    if info.st_uid != os.getuid():
        raise ConfigError(
            f"{path} belongs to uid {info.st_uid}, not to you (uid {os.getuid()})",
            hint="remove it or point AADHELPER_SOCKET elsewhere",
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path


def console_script(name: str = APP_NAME) -> list[str]:
    """The command that runs aadhelper from this installation (for autostart and unit files)."""
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(candidate, os.X_OK):
        return [candidate]
    return [sys.executable, "-m", "aadhelper"]


def write_file_atomically(target: str, text: str, *, mode: int = 0o600) -> None:
    """Write ``target`` whole or not at all: a temporary file in its directory (created 0600, then given ``mode``
    exactly, not through the umask), flushed to disk, then renamed over it. A reader sees the old content or the
    new, never part of either (the config file, the sign-in accounts, the az shim)."""
    import tempfile  # here: this module is on the thin client's path, which never writes a file

    fd, temp = tempfile.mkstemp(dir=os.path.dirname(target) or ".", prefix=f".{os.path.basename(target)}-",
                                suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        if mode != 0o600:
            os.chmod(temp, mode)
        os.replace(temp, target)
    except BaseException:
        os.unlink(temp)
        raise
