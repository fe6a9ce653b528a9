"""Command-line entry points: ``aadhelper`` and ``git-credential-aadhelper``.

The hot verbs (``header``, ``token``) are parsed by a small hand-written parser and never import argparse,
trio, httpx or keyring; anything unusual on their command line (``--help``, an unknown flag) falls through
to the full argparse application in :mod:`aadhelper.cli.app`, which gives the proper usage error.
Every expected failure prints one line on stderr and exits with its class's code (see ``aadhelper --help``).
"""

from __future__ import annotations

import sys

from ..errors import AadhelperError

TYPE_CHECKING = False  # not `from typing import ...`: the client path must not load typing (tests/test_import_rules.py)
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """The ``aadhelper`` command."""
    args = list(sys.argv[1:] if argv is None else argv)

    def dispatch() -> int:
        if args and args[0] == "__complete":  # the shell completion's profile names: fast, hidden
            from .completion import complete_fast

            return complete_fast(args[1:])
        if args and args[0] in ("header", "token"):
            from .token import run_fast

            code = run_fast(args)
            if code is not None:
                return code
        if args and args[0] == "kubectl-credential":
            from .kubectl import run_credential_fast

            code = run_credential_fast(args[1:])
            if code is not None:
                return code
        if args and args[0] == "az":  # az's own command line, never argparse's
            from .az import run as run_az

            return run_az(args[1:])
        if args and args[0] == "daemon":
            from .daemon import parse_fast
            from .daemon import run as run_daemon

            parsed = parse_fast(args[1:])
            if parsed is not None:
                return run_daemon(parsed)
        if args and args[0] == "exec":  # CMD's own words after `--` must not reach argparse
            from .app import build_parser
            from .exec import run_exec

            return run_exec(args[1:], build_parser)
        from .app import run

        return run(args)

    return guarded(dispatch)


def git_credential_main(argv: Sequence[str] | None = None) -> int:
    """The ``git-credential-aadhelper`` command (git runs it with ``get``, ``store`` or ``erase``)."""
    args = list(sys.argv[1:] if argv is None else argv)

    def dispatch() -> int:
        from .git import run_git_credential

        return run_git_credential(args)

    return guarded(dispatch)


def guarded(command: Callable[[], int]) -> int:
    """Run a command; expected failures become one stderr line and their exit code, never a traceback."""
    try:
        return command()
    except AadhelperError as exc:
        report(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("aadhelper: cancelled\n")
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `aadhelper token | head -c1`): nothing left to tell anyone.
        return 1


def report(exc: AadhelperError) -> None:
    sys.stderr.write(f"aadhelper: {exc.one_line()}\n")
