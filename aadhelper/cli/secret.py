"""`aadhelper secret`: store or delete a profile's client secret in the OS keyring.

The secret is read from stdin when stdin is not a terminal (`... | aadhelper secret set NAME`), else from a
no-echo prompt; never from the command line, where other users could read it in the process list.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from ..errors import Cancelled, UsageError
from ..secret_chunks import CLIENT_SECRET
from ..tokens import Secret
from .common import delete_stored, help_handler, load_profile, notify_daemon, require_persistent_store, say

KIND = CLIENT_SECRET
#: Entra secrets are ~40 characters; anything this long is a wrong file piped in.
MAX_SECRET_CHARS = 16 * 1024


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this verb's subparsers."""
    parser = sub.add_parser(
        "secret", help="store or delete a profile's client secret in the OS keyring",
        description="Store or delete the client secret of a profile (credential client_secret) in the OS keyring.")
    parser.set_defaults(func=help_handler(parser))
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    store = actions.add_parser(
        "set", help="store the client secret (read from stdin, or prompted for without echo)",
        description="Store the client secret of profile NAME. It is read from stdin when stdin is not a terminal "
                    "(one trailing newline is dropped), otherwise prompted for without echo. It is never taken "
                    "from the command line.")
    store.add_argument("name", metavar="NAME", help="profile name")
    # Caught so that a secret typed on the command line is refused without argparse echoing it back.
    store.add_argument("stray", nargs="*", help=argparse.SUPPRESS)
    store.set_defaults(func=_set)
    delete = actions.add_parser("delete", help="delete the stored client secret",
                                description="Delete the client secret of profile NAME from the OS keyring.")
    delete.add_argument("name", metavar="NAME", help="profile name")
    delete.set_defaults(func=_delete)


def read_secret(prompt: str, stdin: TextIO | None = None) -> Secret:
    """One secret line from a pipe, or from a no-echo prompt on a terminal."""
    stdin = stdin or sys.stdin
    try:
        if stdin.isatty():
            import getpass

            value = getpass.getpass(prompt)
        else:
            value = stdin.read(MAX_SECRET_CHARS + 1)
            value = value[:-2] if value.endswith("\r\n") else value.removesuffix("\n")
    except EOFError:
        raise Cancelled("no secret entered") from None
    except UnicodeDecodeError:
        raise UsageError("the secret on stdin is not valid text in the locale's encoding") from None
    if not value:
        raise UsageError("the secret is empty", hint="pipe it in or type it at the prompt")
    if len(value) > MAX_SECRET_CHARS:
        raise UsageError(f"the secret is longer than {MAX_SECRET_CHARS} characters; is that the right input?")
    if not value.isprintable():
        raise UsageError("the secret contains a line break or control characters; pass exactly one line")
    return Secret(value)


def _set(args: argparse.Namespace) -> int:
    from .. import secret_store

    if args.stray:
        raise UsageError("the secret is never taken from the command line, where the process list shows it",
                         hint=f"pipe it in (`... | aadhelper secret set {args.name}`) or type it at the prompt")
    profile = load_profile(args.name, KIND)
    require_persistent_store("the client secret")
    secret = read_secret(f"Client secret for profile {profile.name!r} (input hidden): ")
    secret_store.open_secret_store().set(profile.name, KIND, secret)
    say(f"stored the client secret of profile {profile.name!r} in the OS keyring")
    notify_daemon(profile.name)
    return 0


def _delete(args: argparse.Namespace) -> int:
    if not delete_stored(args.name, KIND, "client secret", lambda: load_profile(args.name, KIND)):
        say(f"no client secret was stored for profile {args.name!r}")
        return 0
    say(f"deleted the client secret of profile {args.name!r} from the OS keyring")
    notify_daemon(args.name)
    return 0
