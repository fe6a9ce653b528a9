"""How aadhelper's long-running processes (the daemon and its token fetcher) set themselves up: a clean start
(working directory and environment of their own), the log format on stderr, no ptrace or core dumps by other
processes of the same user, memory locked against swap, a name of their own, and the fetcher's CPU priority.

Memory locking (:func:`lock_memory`) is ``mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)``, and only when
``RLIMIT_MEMLOCK`` covers the process's whole address space now plus :data:`MEMLOCK_HEADROOM` (or is unlimited):

- ``MCL_CURRENT | MCL_FUTURE``: tokens and secrets live in memory allocated at any time (a refresh an hour after
  start), so locking only what exists at start would miss most of them.
- ``MCL_ONFAULT`` (Linux >= 4.4): pages are locked when first touched, not all at once. Without it ``MCL_CURRENT``
  would make the whole address space resident (glibc reserves 64 MiB per thread arena, each thread has an 8 MiB
  stack: a few hundred MiB for a process whose RSS is ~35 MiB). On an older kernel memory is not locked.
- The kernel counts every locked *mapping* against the limit, touched or not, and with ``MCL_FUTURE`` a mapping
  that would exceed it fails (``mmap``/``brk``/``pthread_create`` get ``EAGAIN``: a MemoryError or "can't start
  new thread" in Python). That is why the limit must cover the address space with room to grow, why a limit that
  does not is met with one INFO line and no locking rather than a process whose allocations start failing, and
  why the systemd unit sets ``LimitMEMLOCK=`` well above the measured size (see ``systemd/aadhelper.service``).
  A process with ``CAP_IPC_LOCK`` (root, normally) is not held to the limit by the kernel: it locks whatever the
  limit, and no allocation of it can fail for that reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Mapping, MutableMapping
from types import MappingProxyType

from .proxy import PROXY_VARIABLES, redact

#: Address space the process may still add after locking its memory (bytes): with MCL_FUTURE every new mapping
#: counts against RLIMIT_MEMLOCK, and one past it fails. A thread's stack is 8 MiB, a new glibc malloc arena
#: reserves 64 MiB; the daemon's and the fetcher's worker threads come and go (trio keeps idle ones ~10 s).
MEMLOCK_HEADROOM = 128 * 1024 * 1024
# mlockall(2) flags, from <linux/mman.h> (the same on every Linux architecture).
_MCL_CURRENT, _MCL_FUTURE, _MCL_ONFAULT = 1, 2, 4
#: The capability that lifts RLIMIT_MEMLOCK (<linux/capability.h>).
_CAP_IPC_LOCK = 14

log = logging.getLogger("aadhelper")

#: What the daemon keeps of the environment it was started with (:func:`clean_start_environment`): where the user's
#: files, session bus and locale are, which CAs to trust, the cloud, aadhelper's and keyring's own switches, and
#: what systemd passes to the services it starts (socket activation, sd_notify, watchdog, journal).
KEPT_VARIABLES = frozenset({
    "HOME", "USER", "LOGNAME", "PATH", "LANG", "TZ", "TMPDIR", "DBUS_SESSION_BUS_ADDRESS",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "AZURE_AUTHORITY_HOST", "PYTHON_KEYRING_BACKEND",
    "NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID",
    "INVOCATION_ID", "JOURNAL_STREAM",
    # Federated profiles: the default token file (Azure Workload Identity's webhook sets it in the pod), and what
    # a GitHub Actions token_command needs to ask for the job's OIDC token (short-lived, the job's own).
    "AZURE_FEDERATED_TOKEN_FILE", "ACTIONS_ID_TOKEN_REQUEST_URL", "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
})
#: ... and every variable whose name starts with one of these (KEYRING_PROPERTY_*: keyring's backend properties).
KEPT_PREFIXES = ("LC_", "XDG_", "AADHELPER_", "KEYRING_PROPERTY_")

# The proxy variables of the daemon's start environment, kept aside (never in os.environ, so neither the
# libraries nor a child process see them) for the opt-in `[daemon] proxy_from_environment`. None in a process
# that did not clean its environment (a CLI command): there the process's own environment is the start one.
_start_proxies: Mapping[str, str] | None = None
#: The variables that say where the machine's managed identity answers (App Service, Azure Arc, the IMDS host
#: override azure-identity and msal honour), read by ``credential = "managed_identity"`` profiles to detect their
#: source. IDENTITY_HEADER is the App Service endpoint's secret: like the proxy variables they are kept aside in
#: memory (:func:`start_identity_environment`), never in os.environ, so no child process inherits the secret.
IDENTITY_VARIABLES = ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IMDS_ENDPOINT", "AZURE_POD_IDENTITY_AUTHORITY_HOST")
_start_identity: Mapping[str, str] | None = None


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

    What ``/proc/PID/environ`` shows is the environment block the process was started with, not ``os.environ``:
    the values kept aside (IDENTITY_HEADER is App Service's secret; a proxy URL may hold a password) are
    overwritten there too (:func:`_scrub_start_value`), so not even root finds them in that file (the daemon is
    not dumpable, :func:`harden_process`, so no one else can read it anyway).
    """
    global _start_proxies, _start_identity
    os.chdir("/")
    _start_proxies = MappingProxyType({name: environ[name] for name in PROXY_VARIABLES if name in environ})
    _start_identity = MappingProxyType({name: environ[name] for name in IDENTITY_VARIABLES if name in environ})
    if environ is os.environ:
        for name in (*_start_proxies, *_start_identity):
            _scrub_start_value(name)
    for name in [name for name in environ if name not in KEPT_VARIABLES and not name.startswith(KEPT_PREFIXES)]:
        del environ[name]
    return sorted(environ)


def _scrub_start_value(name: str) -> None:
    """Overwrite the value of variable ``name`` in the C environment (for a variable the process was started with:
    the block ``/proc/PID/environ`` reads) with ``*``; best effort, before the variable is unset. Found by
    tests/test_leak_check_kinds.py: the App Service header stayed readable there after ``del os.environ[...]``."""
    import ctypes

    try:
        getenv = ctypes.CDLL(None).getenv
    except (OSError, AttributeError):  # pragma: no cover - no C library to ask (not Linux/macOS)
        return
    getenv.restype, getenv.argtypes = ctypes.c_void_p, [ctypes.c_char_p]
    address = getenv(os.fsencode(name))
    if address:
        ctypes.memset(address, ord("*"), len(ctypes.string_at(address)))


def start_proxy_environment() -> Mapping[str, str]:
    """The proxy variables this process was started with: kept aside by :func:`clean_start_environment` in the
    daemon (and the fetcher it forks), else (a CLI command such as ``aadhelper login``) its own environment's."""
    if _start_proxies is not None:
        return _start_proxies
    return {name: os.environ[name] for name in PROXY_VARIABLES if name in os.environ}


def start_identity_environment() -> Mapping[str, str]:
    """The managed-identity variables (:data:`IDENTITY_VARIABLES`) this process was started with: kept aside by
    :func:`clean_start_environment` in the daemon (and the fetcher it forks), else its own environment's."""
    if _start_identity is not None:
        return _start_identity
    return {name: os.environ[name] for name in IDENTITY_VARIABLES if name in os.environ}


#: The variables whose values decide what a daemon does and which a shell may set differently: the config file, the
#: cloud, the secret store and keyring backend, the session bus the keyring is reached over, the CAs. ``status``
#: reports the daemon's (with its start environment's proxy variables), so ``aadhelper doctor`` can show the
#: differences from the shell it runs in.
REPORTED_VARIABLES = ("AADHELPER_CONFIG", "AZURE_AUTHORITY_HOST", "AADHELPER_SECRET_STORE", "PYTHON_KEYRING_BACKEND",
                      "DBUS_SESSION_BUS_ADDRESS", "SSL_CERT_FILE", "SSL_CERT_DIR")


def environment_report(environ: Mapping[str, str] = os.environ) -> dict[str, str | None]:
    """The :data:`REPORTED_VARIABLES` and the proxy variables of this process's start environment (None: unset), the
    proxies' passwords redacted: nothing here is secret."""
    report: dict[str, str | None] = {name: environ.get(name) for name in REPORTED_VARIABLES}
    proxies = start_proxy_environment() if environ is os.environ else environ
    report.update((name, redact(proxies[name]) if name in proxies else None) for name in PROXY_VARIABLES)
    return report


def configure_logging(verbose: bool, level: str = "info") -> None:
    """Log lines on stderr, tagged with the process id (the fetcher's lines land in the daemon's log too), at
    ``level`` (a name of :data:`aadhelper.config.LOG_LEVELS`; ``verbose`` means debug)."""
    # Under systemd the journal stamps each line already; elsewhere add a timestamp.
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{stamp}aadhelper[%(process)d] %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("aadhelper")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else getattr(logging, level.upper(), logging.INFO))
    root.propagate = False


def set_process_name(name: str) -> None:
    """The name ``ps -o comm``, top and the journal show (15 bytes at most), so the fetcher is told apart from
    the daemon it was forked from."""
    _prctl(15, name.encode()[:15], "PR_SET_NAME")  # PR_SET_NAME


def harden_process() -> None:
    """Keep other processes of the same user from ptrace-ing us or reading a core dump (ssh-agent does this), and
    keep our memory out of swap where the limits allow (:func:`lock_memory`)."""
    _prctl(4, 0, "PR_SET_DUMPABLE")  # PR_SET_DUMPABLE
    lock_memory()


def lock_memory() -> bool:
    """Lock this process's memory, present and future, against swap (see the module's docstring for the flags and
    the limit); True when locked. Never fails: where the limit is too small, or the kernel or libc cannot, one
    INFO line says so and the process runs unlocked."""
    if sys.platform != "linux":
        return False
    import resource

    limit = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
    needed = _address_space() + MEMLOCK_HEADROOM
    if limit != resource.RLIM_INFINITY and limit < needed and not _has_capability(_CAP_IPC_LOCK):
        log.info("memory not locked against swap: RLIMIT_MEMLOCK is %s, this process needs %s (its address "
                 "space and room to grow); raise it (LimitMEMLOCK= in the systemd unit) to lock it",
                 _mib(limit), _mib(needed))
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        failed = libc.mlockall(_MCL_CURRENT | _MCL_FUTURE | _MCL_ONFAULT) != 0
        error = ctypes.get_errno()
    except (OSError, AttributeError):
        failed, error = True, 0
    if failed:
        # EINVAL: a kernel older than 4.4 (no MCL_ONFAULT); ENOMEM/EPERM: the limit or a seccomp filter.
        log.info("memory not locked against swap: mlockall failed (%s)",
                 os.strerror(error) if error else "not available")
        return False
    log.debug("memory locked against swap (RLIMIT_MEMLOCK %s)",
              "unlimited" if limit == resource.RLIM_INFINITY else _mib(limit))
    return True


def _has_capability(bit: int) -> bool:
    """True when the capability numbered ``bit`` is in this process's effective set."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def _address_space() -> int:
    """The process's mapped address space in bytes (VmSize), what mlockall counts against the limit."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"


def run_at_idle_priority() -> str:
    """Let every other thread on the machine go first (``SCHED_IDLE``; threads started later inherit it).

    For the token fetcher, whose work is background work (refreshes ahead of expiry): a normal thread that
    wakes up preempts a ``SCHED_IDLE`` one at once, so the daemon's serving loop answers while a refresh runs
    on the same CPU. No nice value promises that (measured with ``scripts/bench --rows 5`` on 2 CPUs: p99
    during refreshes 1.28-1.33 x outside with SCHED_IDLE; 2.19 with nice 19, 2.26 with nice 10, 2.54 without).
    The cost: on a machine whose every CPU is saturated by normal work, a fetch waits for idle time (measured
    with two busy loops on 2 CPUs: 0.4 s median, 3 s at worst), and the priority cannot be raised again while a
    client waits (unprivileged, see :mod:`aadhelper.fetcher.parent`): the daemon bounds that wait instead. Where the
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
