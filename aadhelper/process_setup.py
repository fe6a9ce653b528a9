"""How aadhelper's long-running processes (the daemon and its token fetcher) set themselves up: a clean start
(working directory and environment of their own), the log format on stderr, no ptrace or core dumps by other
processes of the same user, a name of their own, and the fetcher's CPU priority.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Mapping, MutableMapping
from types import MappingProxyType

from .proxy import PROXY_VARIABLES

log = logging.getLogger("aadhelper")

#: What the daemon keeps of the environment it was started with (:func:`clean_start_environment`): where the user's
#: files, session bus and locale are, which CAs to trust, the cloud, aadhelper's and keyring's own switches, and
#: what systemd passes to the services it starts (socket activation, sd_notify, watchdog, journal).
KEPT_VARIABLES = frozenset({
    "HOME", "USER", "LOGNAME", "PATH", "LANG", "TZ", "TMPDIR", "DBUS_SESSION_BUS_ADDRESS",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "AZURE_AUTHORITY_HOST", "PYTHON_KEYRING_BACKEND",
    "NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID",
    "INVOCATION_ID", "JOURNAL_STREAM",
})
#: ... and every variable whose name starts with one of these (KEYRING_PROPERTY_*: keyring's backend properties).
KEPT_PREFIXES = ("LC_", "XDG_", "AADHELPER_", "KEYRING_PROPERTY_")

# The proxy variables of the daemon's start environment, kept aside (never in os.environ, so neither the
# libraries nor a child process see them) for the opt-in `[daemon] proxy_from_environment`. None in a process
# that did not clean its environment (a CLI command): there the process's own environment is the start one.
_start_proxies: Mapping[str, str] | None = None


def clean_start_environment(environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """Make the daemon independent of whoever started it: change to ``/`` and keep only the variables in
    :data:`KEPT_VARIABLES` and :data:`KEPT_PREFIXES`. Returns the names kept, for the log.

    The daemon calls this first thing, however it is started: autostarted by the first client that found none
    (which would otherwise hand it that shell's cwd, kept busy even once deleted, and its variables, e.g. an
    ``HTTPS_PROXY`` that then carried every later fetch's client secret), by hand (``aadhelper daemon``) or by the
    systemd unit. Before the token fetcher is forked, so the fetcher starts clean too; a fetcher started later is
    given ``os.environ``, which is the clean one by then. The proxy variables are kept aside in memory, for
    ``[daemon] proxy_from_environment = true`` only (:func:`start_proxy_environment`). systemd's variables are
    kept because :mod:`aadhelper.systemd` reads them later, while serving.

    The kernel's copy of the environment the process was started with (``/proc/PID/environ``) cannot be changed;
    the daemon is not dumpable (:func:`harden_process`), so only root can read it.
    """
    global _start_proxies
    os.chdir("/")
    _start_proxies = MappingProxyType({name: environ[name] for name in PROXY_VARIABLES if name in environ})
    for name in [name for name in environ if name not in KEPT_VARIABLES and not name.startswith(KEPT_PREFIXES)]:
        del environ[name]
    return sorted(environ)


def start_proxy_environment() -> Mapping[str, str]:
    """The proxy variables this process was started with: kept aside by :func:`clean_start_environment` in the
    daemon (and the fetcher it forks), else (a CLI command such as ``aadhelper login``) its own environment's."""
    if _start_proxies is not None:
        return _start_proxies
    return {name: os.environ[name] for name in PROXY_VARIABLES if name in os.environ}


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
