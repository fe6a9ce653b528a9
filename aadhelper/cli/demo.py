"""``aadhelper demo``: an end-to-end run against the built-in simulated authority (see aadhelper.demo)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "demo", help="show the whole tool working against a simulated authority (about 20 s)",
        description="Start a simulated Entra ID authority, a protected API and the daemon in a temporary home "
                    "(in-memory secrets, nothing of yours is touched), print a header, watch a background refresh, "
                    "call the API with curl, and clean up.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import main

    return main()
