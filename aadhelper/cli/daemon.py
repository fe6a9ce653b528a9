"""``aadhelper daemon``: run the token daemon in the foreground (systemd, a terminal, or autostart)."""

from __future__ import annotations

import argparse
import logging
import os
import sys


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


def configure_logging(verbose: bool) -> None:
    # Under systemd the journal stamps each line already; elsewhere add a timestamp.
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{stamp}aadhelper[%(process)d] %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("aadhelper")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def run(args: argparse.Namespace) -> int:
    import trio

    from ..daemon import serve
    from ..secret_store import open_secret_store

    configure_logging(args.verbose)
    store = open_secret_store(args.secret_store)
    trio.run(lambda: serve(store, config_path=args.config, socket_path=args.socket))
    return 0
