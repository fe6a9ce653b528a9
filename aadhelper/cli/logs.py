"""``aadhelper logs [-f] [-n LINES]``: show the daemon's log, wherever it goes.

Where that is depends on how the daemon started, and the running daemon says (``status``: ``daemon.log``): the
systemd journal for the unit (shown with ``journalctl --user -u aadhelper.service``), the autostart log file in
the state directory, or the terminal of an ``aadhelper daemon`` run by hand. With no daemon running, the
autostart file is shown, or the journal when the systemd socket unit is enabled.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from typing import Any

from .. import client, protocol
from ..errors import AadhelperError
from .common import SERVICE_UNIT, say

#: Lines shown by default (journalctl's and tail's habit is 10; a daemon start alone logs ~5).
DEFAULT_LINES = 50
#: Seconds between two looks at a followed file.
FOLLOW_INTERVAL = 0.25
#: Seconds to wait for a running daemon to say where it logs.
STATUS_TIMEOUT = 5.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .args import count

    parser = sub.add_parser(
        "logs", help="show the daemon's log (the journal under systemd, else the autostart log file)",
        description="Show the last lines of the daemon's log: `journalctl --user -u aadhelper.service` when systemd "
                    "runs it, else the file an autostarted daemon writes (<state dir>/daemon.log). Raise the detail "
                    "with AADHELPER_LOG_LEVEL=debug or [daemon] log_level = \"debug\", then "
                    "`aadhelper daemon restart`.")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until Ctrl-C")
    parser.add_argument("-n", "--lines", type=count(0, 1_000_000), default=DEFAULT_LINES, metavar="N",
                        help=f"how many of the last lines to show (default {DEFAULT_LINES})")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    where = _destination()
    kind = where.get("kind")
    if kind == "journal":
        return _journal(args.lines, args.follow)
    if kind in ("terminal", "other"):
        say(f"the running daemon (pid {where.get('pid')}) logs to {where.get('shown')}: not to a file this command "
            "can read")
        return 0
    path = str(where.get("path"))
    if not os.path.exists(path):
        say(f"no daemon log yet: {path} does not exist (an autostarted daemon writes it)")
        return 0
    _print_file(path, args.lines, args.follow)
    return 0


def _destination() -> dict[str, Any]:
    """Where the log is: the running daemon's own account, else where a daemon started now would log."""
    from .. import autostart

    try:
        daemon = client.call(protocol.request("ping"), timeout=STATUS_TIMEOUT)
    except AadhelperError:
        daemon = {}
    log = daemon.get("log")
    if isinstance(log, dict) and log.get("kind") in ("journal", "file", "terminal", "other"):
        return {**log, "pid": daemon.get("pid")}
    if autostart.systemd_socket_enabled():
        return {"kind": "journal"}
    return {"kind": "file", "path": autostart.log_path()}


def _journal(lines: int, follow: bool) -> int:
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        raise AadhelperError("the daemon logs to the systemd journal, but journalctl is not installed here")
    argv = [journalctl, "--user", "-u", SERVICE_UNIT, "-n", str(lines), "--no-pager", *(["-f"] if follow else [])]
    sys.stdout.flush()
    os.execv(journalctl, argv)  # journalctl's own output, exit code and Ctrl-C


def _print_file(path: str, lines: int, follow: bool) -> None:
    """The last ``lines`` lines of ``path``; with ``follow``, then what is appended (from the start again when the
    file is truncated or replaced), until Ctrl-C."""
    out = sys.stdout.buffer
    log = open(path, "rb")  # noqa: SIM115 -- reopened below when the file is replaced
    try:
        out.write(_tail(log, lines))
        out.flush()
        if not follow:
            return
        identity = os.fstat(log.fileno())
        while True:
            chunk = log.read(65536)
            if chunk:
                out.write(chunk)
                out.flush()
                continue
            time.sleep(FOLLOW_INTERVAL)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                continue
            if (now.st_ino, now.st_dev) != (identity.st_ino, identity.st_dev) or now.st_size < log.tell():
                say(f"{path} was truncated or replaced: reading it from the start")
                log.close()
                log = open(path, "rb")  # noqa: SIM115
                identity = os.fstat(log.fileno())
    finally:
        log.close()


def _tail(log: Any, lines: int) -> bytes:
    """The last ``lines`` lines of an open binary file (read backwards in blocks: the log may be large)."""
    if lines == 0:
        log.seek(0, os.SEEK_END)
        return b""
    end = log.seek(0, os.SEEK_END)
    data, position = b"", end
    while position > 0 and data.count(b"\n") <= lines:
        step = min(65536, position)
        position -= step
        log.seek(position)
        data = log.read(step) + data
    log.seek(end)
    kept = data.splitlines(keepends=True)[-lines:]
    return b"".join(kept)
