"""How the daemon process starts: the whole recipe in one function, in the order that matters.

1. **A clean start** (:func:`~aadhelper.process_setup.clean_start_environment`): ``/`` as working directory and an
   allow-listed environment, before any library reads the starter's (an autostarting shell's ``HTTPS_PROXY``).
2. **Logging** on stderr (the journal, or the autostart log).
3. **Imports**: trio, the daemon, and everything a fetch needs (:func:`aadhelper.fetcher.child.preload`), so that the
   fetcher forked below starts with every module loaded (~0.2 s of imports it does not repeat).
4. **gc.freeze()**: everything loaded so far lives as long as the processes do. Frozen, the garbage collector no
   longer walks it: a full collection in the daemon took ~5 ms of its serving loop (28,000 objects) and now takes
   microseconds, and neither process's collections write to (and so copy) the pages they share.
5. **Fork the fetcher** (:meth:`~aadhelper.fetcher.parent.ProcessFetcher.fork`): while this process has no thread
   and no trio loop, which a fork must not copy.
6. **trio.run** the daemon (:func:`aadhelper.daemon.serve`).

The fetcher child's own life after the fork is :func:`aadhelper.fetcher.child.run`.
"""

from __future__ import annotations

import gc
import logging
import os
import signal

log = logging.getLogger("aadhelper.daemon")

#: The environment variables that name a path the daemon uses.
_PATH_VARIABLES = ("AADHELPER_CONFIG", "AADHELPER_SOCKET", "AADHELPER_STATE_DIR", "SSL_CERT_FILE", "SSL_CERT_DIR")


def _start_settings(config_path: str | None) -> tuple[str, bool]:
    """What the start needs from the config: the log level (``$AADHELPER_LOG_LEVEL``, else the config's
    ``[daemon] log_level``) and whether a profile uses a certificate. A broken config is reported later, when the
    daemon reads it for requests, with the variable alone deciding the level until then."""
    from .config import LOG_LEVEL_ENV, LOG_LEVELS, load_config
    from .errors import ConfigError

    try:
        config = load_config(config_path)
    except ConfigError:
        value = os.environ.get(LOG_LEVEL_ENV, "").strip().lower()
        return (value if value in LOG_LEVELS else "info"), False
    return config.log_level, any(profile.credential == "certificate" for profile in config.profiles.values())


def run_daemon(*, config_path: str | None, socket_path: str | None, secret_store: str | None,
               verbose: bool) -> int:
    """Run the daemon in this process until it is stopped; returns the exit code."""
    from .process_setup import clean_start_environment, configure_logging

    # 1. Paths given relative to the starter's directory keep meaning what they meant once the daemon is in /.
    config_path, socket_path = (os.path.abspath(path) if path else path for path in (config_path, socket_path))
    for name in _PATH_VARIABLES:
        if os.environ.get(name):
            os.environ[name] = os.path.abspath(os.environ[name])
    kept = clean_start_environment()
    # A starter may have had the signals we stop on blocked (the thread of `aadhelper exec`'s endpoint that
    # autostarts a daemon blocks them for exec's own handling), and a signal mask survives fork and exec: unblock
    # them, or SIGTERM from systemd, kill or a closing session would never reach the daemon (or its fetcher).
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    # 2.
    level, certificates = _start_settings(config_path)
    configure_logging(verbose, level)
    log.debug("started in / with the environment variables %s (values not shown)", ", ".join(kept))
    # 3. Only now: no library reads the starter's environment at import time either.
    import trio

    from .daemon import serve
    from .fetcher.child import preload
    from .fetcher.parent import ProcessFetcher
    from .secret_store import store_kind

    # Checked here (the fetcher process opens the store): a bad $AADHELPER_SECRET_STORE stops the start.
    fetcher = ProcessFetcher(secret_store=store_kind(secret_store), verbose=verbose, log_level=level)
    preload(certificates=certificates)
    # 4.
    gc.freeze()
    # 5.
    fetcher.fork()
    # 6.
    trio.run(lambda: serve(fetcher, config_path=config_path, socket_path=socket_path))
    return 0
