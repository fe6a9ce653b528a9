"""How aadhelper's long-running processes (the daemon and its token fetcher) set themselves up: the log format
on stderr, no ptrace or core dumps by other processes of the same user, a name of their own, and the fetcher's
CPU priority.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

log = logging.getLogger("aadhelper")


def configure_logging(verbose: bool) -> None:
    """Log lines on stderr, tagged with the process id (the fetcher's lines land in the daemon's log too)."""
    # Under systemd the journal stamps each line already; elsewhere add a timestamp.
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{stamp}aadhelper[%(process)d] %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("aadhelper")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def set_process_name(name: str) -> None:
    """The name ``ps -o comm``, top and the journal show (15 bytes at most), so the fetcher is told apart from
    the daemon it was forked from."""
    _prctl(15, name.encode()[:15], "PR_SET_NAME")  # PR_SET_NAME


def harden_process() -> None:
    """Keep other processes of the same user from ptrace-ing us or reading a core dump (ssh-agent does this)."""
    _prctl(4, 0, "PR_SET_DUMPABLE")  # PR_SET_DUMPABLE


def run_at_idle_priority() -> str:
    """Let every other thread on the machine go first (``SCHED_IDLE``; threads started later inherit it).

    For the token fetcher, whose work is background work (refreshes ahead of expiry): a normal thread that
    wakes up preempts a ``SCHED_IDLE`` one at once, so the daemon's serving loop answers while a refresh runs
    on the same CPU. No nice value promises that (measured with ``scripts/bench --rows 5`` on 2 CPUs: p99
    during refreshes 1.28-1.33 x outside with SCHED_IDLE; 2.19 with nice 19, 2.26 with nice 10, 2.54 without).
    The cost: on a machine whose every CPU is saturated by normal work, a fetch waits for idle time (measured
    with two busy loops on 2 CPUs: 0.4 s median, 3 s at worst), and the priority cannot be raised again while a
    client waits (unprivileged, see :mod:`aadhelper.fetcher_process`): the daemon bounds that wait instead. Where the
    policy is not available (not Linux, or a seccomp filter), nice 19 is the next best thing. Returns which of
    them it got, for the log.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return "SCHED_IDLE"
    except (AttributeError, OSError):
        with contextlib.suppress(OSError):
            os.nice(19)
            return "nice 19"
    return "normal CPU priority"


def _prctl(option: int, argument: int | bytes, what: str) -> None:
    if sys.platform != "linux":
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(option, argument, 0, 0, 0)
    except (OSError, AttributeError):
        log.debug("prctl(%s) not available", what)
