"""``aadhelper header`` and ``aadhelper token``: print the current Authorization header or access token.

These run on every curl/script call, so :func:`run_fast` parses their few options by hand and touches only
the thin client (no argparse, trio, httpx, keyring or platformdirs); :func:`register` adds the same verbs to
the argparse application, which handles ``--help`` and reports usage errors for anything unusual.
"""

from __future__ import annotations

import sys

from .. import client
from ..protocol import MAX_MIN_VALID
from .values import whole_seconds

TYPE_CHECKING = False  # not `from typing import ...`: the client path must not load typing (tests/test_import_rules.py)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any

VERBS = ("header", "token")


class FastArgs:
    """What the fast parser read: the same fields argparse's namespace has for these verbs (a plain class: a
    NamedTuple or dataclass would import typing, ~2 ms on every call)."""

    __slots__ = ("json", "min_valid", "profile", "scope")

    def __init__(self, profile: str | None, scope: list[str] | None, min_valid: int | None, json: bool) -> None:
        self.profile = profile
        self.scope = scope
        self.min_valid = min_valid
        self.json = json

    def __repr__(self) -> str:
        return (f"FastArgs(profile={self.profile!r}, scope={self.scope!r}, min_valid={self.min_valid!r}, "
                f"json={self.json!r})")


def parse_fast(argv: Sequence[str]) -> FastArgs | None:
    """The options of ``header``/``token`` (without the verb), or None when argparse should decide (anything
    unusual: --help, an unknown or abbreviated flag, a value that looks like an option, an invalid number).

    A test holds it to argparse: whenever this returns a result, argparse parses the same command line to the same
    values."""
    rest = list(argv)
    profile: str | None = None
    scopes: list[str] = []
    min_valid: int | None = None
    as_json = False
    while rest:
        arg = rest.pop(0)
        name, eq, value = arg.partition("=")
        if arg == "--json":
            as_json = True
        elif name in ("--scope", "--min-valid"):
            if not eq:
                if not rest or rest[0].startswith("-"):  # argparse takes "-x" for an option, not a value
                    return None
                value = rest.pop(0)
            if name == "--scope":
                if not _word(value):
                    return None
                scopes.append(value)
                continue
            min_valid = whole_seconds(value, 0, MAX_MIN_VALID)
            if min_valid is None:
                return None
        elif arg.startswith("-") or profile is not None or not _word(arg):
            return None
        else:
            profile = arg
    return FastArgs(profile, scopes or None, min_valid, as_json)


def _word(value: str) -> bool:
    """What argparse's ``word`` type takes (cli/args.py); anything else goes to argparse, which says why."""
    return bool(value) and value.isprintable() and " " not in value


def run_fast(argv: Sequence[str]) -> int | None:
    """Run ``header``/``token`` from a plain command line; None when argparse should handle it instead."""
    args = parse_fast(argv[1:])
    if args is None:
        return None
    return emit(argv[0], profile=args.profile, scopes=args.scope, min_valid=args.min_valid, as_json=args.json)


def emit(verb: str, *, profile: str | None, scopes: list[str] | None, min_valid: int | None, as_json: bool) -> int:
    reply = client.get_token(profile, scopes=scopes, min_valid=min_valid, autostart=True)
    if as_json:
        import json

        fields: dict[str, Any] = {key: reply.get(key) for key in
                                  ("access_token", "token_type", "expires_on", "profile", "scopes")}
        if verb == "header":
            fields["header"] = f"Authorization: {reply['token_type']} {reply['access_token']}"
        sys.stdout.write(json.dumps(fields) + "\n")
    elif verb == "header":
        sys.stdout.write(f"Authorization: {reply['token_type']} {reply['access_token']}\n")
    else:
        sys.stdout.write(reply["access_token"] + "\n")
    sys.stdout.flush()
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .args import seconds, word  # here, not at the top: the fast path must not import argparse

    helps = {"header": "print `Authorization: Bearer <token>` for a profile (for curl -H)",
             "token": "print the access token of a profile"}
    for verb in VERBS:
        parser = sub.add_parser(verb, help=helps[verb], description=helps[verb] + ". Served from the daemon's "
                                "memory; the daemon refreshes it before it expires.")
        parser.add_argument("profile", nargs="?", type=word("profile name"),
                            help="profile name (default: the configured default profile)")
        parser.add_argument("--scope", action="append", metavar="SCOPE", type=word("scope"),
                            help="ask for these scopes instead of the profile's (repeatable)")
        parser.add_argument("--min-valid", type=seconds(), metavar="SECONDS",
                            help="minimum remaining validity of the token (default: the profile's, 300)")
        parser.add_argument("--json", action="store_true",
                            help="print access_token, token_type, expires_on, profile and scopes as JSON")
        parser.set_defaults(func=lambda args, verb=verb: emit(verb, profile=args.profile, scopes=args.scope,
                                                              min_valid=args.min_valid, as_json=args.json))

