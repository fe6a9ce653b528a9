"""``aadhelper daemon``: run the token daemon in the foreground (systemd, a terminal, or autostart)."""

from __future__ import annotations

import argparse
import logging
import os

log = logging.getLogger("aadhelper.daemon")

#: The environment variables that name a path the daemon uses.
_PATH_VARIABLES = ("AADHELPER_CONFIG", "AADHELPER_SOCKET", "AADHELPER_STATE_DIR", "SSL_CERT_FILE", "SSL_CERT_DIR")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "daemon", help="run the token daemon in the foreground",
        description="Run the daemon: keeps secrets in the OS keyring, tokens in memory, refreshes them ahead of "
                    "expiry and answers clients on a Unix socket. Uses systemd's socket when socket-activated.")
    parser.add_argument("--socket", metavar="PATH", help="socket path (default: $AADHELPER_SOCKET or "
                        "$XDG_RUNTIME_DIR/aadhelper/daemon.sock)")
    parser.add_argument("--config", metavar="FILE", help="config file (default: $AADHELPER_CONFIG or the "
                        "user config dir)")
    parser.add_argument("--secret-store", choices=("keyring", "memory"),
                        help="where secrets live (default: $AADHELPER_SECRET_STORE or keyring); "
                             "memory is for tests and demos")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details (never secrets)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..process_setup import clean_start_environment, configure_logging

    # Paths given relative to the starter's directory keep meaning what they meant once the daemon is in /.
    args.config, args.socket = (os.path.abspath(path) if path else path for path in (args.config, args.socket))
    for name in _PATH_VARIABLES:
        if os.environ.get(name):
            os.environ[name] = os.path.abspath(os.environ[name])
    # Then, before anything reads the starter's environment: the daemon's own (see the function).
    kept = clean_start_environment()
    configure_logging(args.verbose)
    log.debug("started in / with the environment variables %s (values not shown)", ", ".join(kept))
    # Imported only now: no library reads the starter's environment at import time either.
    import trio

    from ..daemon import serve
    from ..fetcher_process import ProcessFetcher
    from ..secret_store import store_kind

    # Checked here (the fetcher process opens the store): a bad $AADHELPER_SECRET_STORE stops the start.
    fetcher = ProcessFetcher(secret_store=store_kind(args.secret_store), verbose=args.verbose)
    fetcher.start_early()
    trio.run(lambda: serve(fetcher, config_path=args.config, socket_path=args.socket))
    return 0
