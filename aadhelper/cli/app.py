"""The full argparse application: one module per verb, each contributing its subparsers via ``register``."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from .. import __version__
from ..errors import EXIT_CODES, UsageError
from . import daemon, demo, git, login, logs, profile, secret, service, status, token

VERB_MODULES = (profile, secret, daemon, token, status, login, git, service, demo, logs)

Handler = Callable[[argparse.Namespace], int]


class Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` (one line, exit 2) instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        # The error line starts with "aadhelper: " already; name the subcommand, if any, after it.
        verb = self.prog.removeprefix("aadhelper").strip() if self.prog.startswith("aadhelper") else self.prog
        raise UsageError(f"{verb}: {message}" if verb else message, hint=f"see `{self.prog} --help`")


def build_parser() -> argparse.ArgumentParser:
    codes = "\n".join(f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES)
    parser = Parser(
        prog="aadhelper",
        description="Entra ID (Azure AD) access tokens for curl, git, kubectl and SDKs, from a per-user daemon.",
        epilog=f"exit codes:\n{codes}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"aadhelper {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module in VERB_MODULES:
        module.register(sub)
    return parser


def run(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv))
    handler: Handler | None = getattr(args, "func", None)
    if handler is None:
        parser.print_help()
        return 2
    return handler(args)
