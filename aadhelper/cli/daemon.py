"""``aadhelper daemon``: run the token daemon in the foreground (systemd, a terminal, or autostart)."""

from __future__ import annotations

import argparse


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
    from ..daemon_start import run_daemon

    return run_daemon(config_path=args.config, socket_path=args.socket, secret_store=args.secret_store,
                      verbose=args.verbose)
