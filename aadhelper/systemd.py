"""The daemon's side of the systemd protocols: inherited listening sockets and sd_notify messages.

Socket activation (``sd_listen_fds(3)``): systemd passes listening sockets as fds 3, 4, ... and describes them in
``LISTEN_PID`` (the process they are meant for), ``LISTEN_FDS`` (how many) and ``LISTEN_FDNAMES`` (colon-separated
names). Readiness and status (``sd_notify(3)``): one datagram of newline-separated ``KEY=value`` lines sent to the
``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` (a leading ``@`` names the abstract namespace).

Both are reimplemented here with the standard library instead of linking libsystemd, so the daemon has no native
dependency and everything also works (as no-ops) on systems without systemd. Nothing here raises when systemd is
absent; only inherited fds that are not what our socket unit declares are an error (:class:`ConfigError`).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping, MutableMapping

from .errors import ConfigError

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3

_LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
_UNIT_HINT = "the socket unit must declare exactly one ListenStream= Unix socket (see systemd/aadhelper.socket)"


def listen_fds_with_names(unset_environment: bool = True,
                          environ: MutableMapping[str, str] = os.environ) -> list[tuple[str, socket.socket]]:
    """The listening sockets systemd passed to this process, with their ``FileDescriptorName=`` names.

    Empty when the variables are absent or meant for another process (``LISTEN_PID`` is not our pid, e.g. they
    leaked from a parent). Like ``sd_listen_fds(3)``, the variables are removed afterwards in every case (so that
    children we start do not believe the fds are theirs) and each fd is made close-on-exec. Each fd must be a
    listening ``AF_UNIX`` stream socket, the only kind this daemon serves; anything else is a :class:`ConfigError`.
    """
    try:
        count = _fd_count(environ)
        names_value = environ.get("LISTEN_FDNAMES")
    finally:
        if unset_environment:
            for name in _LISTEN_VARS:
                environ.pop(name, None)
    if not count:
        return []
    # systemd names unnamed fds "unknown"; a mismatched list means the variables were not set by systemd.
    names = names_value.split(":") if names_value is not None else ["unknown"] * count
    if len(names) != count:
        raise ConfigError(f"LISTEN_FDNAMES names {len(names)} sockets but LISTEN_FDS says {count}", hint=_UNIT_HINT)
    return [(name, _adopt(fd)) for name, fd in zip(names, range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count),
                                                    strict=True)]


def listen_fds(unset_environment: bool = True, environ: MutableMapping[str, str] = os.environ) -> list[socket.socket]:
    """The listening sockets systemd passed to this process (see :func:`listen_fds_with_names`)."""
    return [sock for _name, sock in listen_fds_with_names(unset_environment, environ)]


def is_socket_activated(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether systemd passed sockets to this process; reads the variables without consuming them."""
    try:
        return _fd_count(environ) > 0
    except ConfigError:
        return False


def _fd_count(environ: Mapping[str, str]) -> int:
    """``LISTEN_FDS`` when ``LISTEN_PID`` is ours, else 0; malformed values are a :class:`ConfigError`."""
    pid_value = environ.get("LISTEN_PID")
    if pid_value is None:
        return 0
    pid = _positive_int("LISTEN_PID", pid_value)
    if pid != os.getpid():
        return 0
    count_value = environ.get("LISTEN_FDS")
    if count_value is None:
        return 0
    return _positive_int("LISTEN_FDS", count_value)


def _positive_int(name: str, value: str) -> int:
    # int() alone would accept " 3", "+3" and "3_0"; systemd sets plain decimal digits.
    if not value.isascii() or not value.isdigit() or int(value) <= 0:
        raise ConfigError(f"{name}={value!r} is not a positive number", hint=_UNIT_HINT)
    return int(value)


def _adopt(fd: int) -> socket.socket:
    """Wrap an inherited fd as a socket object after checking it is a listening Unix stream socket."""
    try:
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ConfigError(f"inherited fd {fd} is not an open socket: {exc.strerror or exc}",
                          hint=_UNIT_HINT) from None
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM or not listening:
        kind = f"{_enum_name(sock.family)} {_enum_name(sock.type)}{'' if listening else ' (not listening)'}"
        sock.close()
        raise ConfigError(f"inherited fd {fd} is a {kind} socket, not a listening AF_UNIX SOCK_STREAM socket",
                          hint=_UNIT_HINT)
    return sock


def _enum_name(value: int) -> str:
    # The socket module returns a plain int for families and types it has no enum member for.
    return getattr(value, "name", str(value))


def notify(*lines: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send ``KEY=value`` lines as one datagram to ``$NOTIFY_SOCKET``; True when it was sent.

    False when the variable is unset (not started by systemd) or the socket cannot take the message: a status
    report must never take the daemon down, so delivery failures are logged at debug level only. A newline inside
    a line becomes a space, so a value (a path, an error text) cannot smuggle in another key. The send does not
    block (the daemon calls this from its event loop); a full queue drops the message.
    """
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        target = "\0" + address[1:]
    elif address.startswith("/"):
        target = address
    else:
        # vsock: and other transports of newer systemd versions are for VMs, not for a user service.
        log.debug("NOTIFY_SOCKET=%r is not a Unix socket path; not notifying", address)
        return False
    message = "\n".join(" ".join(line.splitlines()) for line in lines)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(message.encode(), target)
    except OSError as exc:
        log.debug("cannot notify systemd on %r: %s", address, exc)
        return False
    return True


def ready(status: str | None = None, *, environ: Mapping[str, str] = os.environ) -> bool:
    """Tell systemd the daemon serves requests (``Type=notify`` units wait for this), with an optional status."""
    lines = ["READY=1"] + ([f"STATUS={status}"] if status is not None else [])
    return notify(*lines, environ=environ)


def status(text: str, *, environ: Mapping[str, str] = os.environ) -> bool:
    """Set the one-line status ``systemctl --user status aadhelper`` shows."""
    return notify(f"STATUS={text}", environ=environ)


def stopping(*, environ: Mapping[str, str] = os.environ) -> bool:
    """Tell systemd the daemon is shutting down on its own (before it closes the socket)."""
    return notify("STOPPING=1", environ=environ)


def reloading(*, environ: Mapping[str, str] = os.environ) -> bool:
    """Tell systemd a reload started; send :func:`ready` when it is done.

    ``MONOTONIC_USEC`` is what ``Type=notify-reload`` (systemd 253+) requires to match the message to the reload
    it asked for; older versions ignore it.
    """
    monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}", environ=environ)


def watchdog(*, environ: Mapping[str, str] = os.environ) -> bool:
    """Tell systemd the daemon is alive (send every :func:`watchdog_interval` seconds when that is not None)."""
    return notify("WATCHDOG=1", environ=environ)


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between :func:`watchdog` pings, or None when the unit has no ``WatchdogSec=`` for this process.

    This is half of ``WATCHDOG_USEC``, as ``sd_watchdog_enabled(3)`` advises, so one late ping does not get the
    daemon killed. ``WATCHDOG_PID``, when set, must be our pid (the variables may have leaked from a parent).
    Malformed values mean no watchdog rather than an error: a missed ping is systemd's to judge.
    """
    usec_value = environ.get("WATCHDOG_USEC", "")
    if not usec_value.isascii() or not usec_value.isdigit() or int(usec_value) <= 0:
        return None
    pid_value = environ.get("WATCHDOG_PID")
    if pid_value is not None and pid_value != str(os.getpid()):
        return None
    return int(usec_value) / 2_000_000


__all__ = [
    "SD_LISTEN_FDS_START",
    "is_socket_activated",
    "listen_fds",
    "listen_fds_with_names",
    "notify",
    "ready",
    "reloading",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
]
