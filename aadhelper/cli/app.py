"""The full argparse application: one module per verb, each contributing its subparsers via ``register``."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from .. import __version__
from ..errors import EXIT_CODES, UsageError
from ..suggest import did_you_mean
from . import (
    az,
    completion,
    daemon,
    demo,
    doctor,
    git,
    kubectl,
    login,
    logs,
    man,
    profile,
    secret,
    service,
    status,
    token,
    tree,
)
from . import exec as exec_verb

VERB_MODULES = (profile, secret, daemon, token, status, login, git, service, demo, logs, completion, kubectl, az,
                exec_verb, doctor, man)

Handler = Callable[[argparse.Namespace], int]


class Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` (one line, exit 2) instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        # The error line starts with "aadhelper: " already; name the subcommand, if any, after it.
        verb = self.prog.removeprefix("aadhelper").strip() if self.prog.startswith("aadhelper") else self.prog
        raise UsageError(f"{verb}: {message}" if verb else message, hint=f"see `{self.prog} --help`")

    def _check_value(self, action: argparse.Action, value: object) -> None:
        # argparse's own check, plus a did-you-mean for a mistyped subcommand or choice (suggest.py's policy).
        choices = action.choices
        if choices is not None and isinstance(value, str) and value not in choices:
            names = [str(choice) for choice in choices]
            raise argparse.ArgumentError(action, f"invalid choice: {value!r}{did_you_mean(value, names)} "
                                                 f"(choose from {', '.join(names)})")
        super()._check_value(action, value)


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
    tree.finish(parser)
    # Commands that describe the command line itself (`aadhelper man`) read it from here, not by importing this module.
    parser.set_defaults(parser=parser)
    return parser


def run(argv: Sequence[str]) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(list(argv))
    if extras:
        unknown(getattr(args, "_parser", parser), extras)
    if getattr(args, "verbose", False) and getattr(args, "func", None) is not daemon.run:
        verbose()  # (the daemon in the foreground logs at debug level instead)
    handler: Handler | None = getattr(args, "func", None)
    if handler is None:
        parser.print_help()
        return 2
    return handler(args)


def unknown(parser: argparse.ArgumentParser, extras: list[str]) -> None:
    """The usage error for arguments the (sub)command does not take, suggesting the option meant."""
    option = next((extra.partition("=")[0] for extra in extras if extra.startswith("-")), None)
    hint = did_you_mean(option, tree.options(parser)) if option else ""
    parser.error(f"unrecognized arguments: {' '.join(extras)}{hint}")


def verbose() -> None:
    """``-v``: each request to the daemon, and the CLI's own authority requests (login), reported on stderr."""
    import logging

    from .. import client
    from .common import say

    client.set_trace(say)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("aadhelper: %(message)s"))
    root = logging.getLogger("aadhelper")
    if not root.handlers:
        root.addHandler(handler)
        root.setLevel(logging.DEBUG)
        root.propagate = False
