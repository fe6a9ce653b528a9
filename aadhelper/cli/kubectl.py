"""kubectl: ``aadhelper kubectl-credential PROFILE [--scope S]`` (the exec credential plugin kubectl runs) and
``aadhelper kubeconfig PROFILE [--server-id ID] [--context NAME] [--kubeconfig FILE]`` (the kubeconfig entry that
runs it, like kubelogin's ``convert-kubeconfig``).

``kubectl-credential`` runs before kubectl's first request of every process, so it is a thin-client path like
``aadhelper token``: :func:`run_credential_fast` parses its options by hand (anything unusual goes to argparse, which
gives the usage error) and imports no argparse, json, trio, httpx or keyring. It reads ``KUBERNETES_EXEC_INFO``,
never stdin, prints one ExecCredential on stdout, and fails with one line on stderr (kubectl shows it) and a
non-zero exit. See :mod:`aadhelper.cli.kube_exec` for the contract and the expiry it reports.

``kubeconfig`` merges with kubectl itself (``kubectl config set-credentials --exec-...``): kubeconfig is YAML, and
kubectl's own writer keeps every other entry and writes only what kubectl reads, where a hand-made YAML edit
would need a YAML library. Without ``--kubeconfig`` it prints the entry (YAML whose values are JSON) to paste.
"""

from __future__ import annotations

import os
import sys
import time

from .. import client
from ..protocol import dumps
from . import kube_exec

TYPE_CHECKING = False  # not `from typing import ...`: the client path must not load typing (tests/test_import_rules.py)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence


def parse_credential(argv: Sequence[str]) -> tuple[str, list[str] | None] | None:
    """``(profile, scopes)`` of ``kubectl-credential PROFILE [--scope S ...]`` (without the verb), or None when
    argparse should decide (a missing profile, --help, an unknown or abbreviated flag, a value like an option).

    A test holds it to argparse: whenever this returns a result, argparse reads the same values."""
    rest = list(argv)
    profile: str | None = None
    scopes: list[str] = []
    while rest:
        arg = rest.pop(0)
        name, eq, value = arg.partition("=")
        if name == "--scope":
            if not eq:
                if not rest or rest[0].startswith("-"):  # argparse takes "-x" for an option, not a value
                    return None
                value = rest.pop(0)
            scopes.append(value)
        elif arg.startswith("-") or profile is not None:
            return None
        else:
            profile = arg
    if profile is None:
        return None
    return profile, scopes or None


def run_credential_fast(argv: Sequence[str]) -> int | None:
    """``aadhelper kubectl-credential ...`` (``argv`` without the verb); None when argparse should handle it."""
    parsed = parse_credential(argv)
    if parsed is None:
        return None
    return credential(*parsed)


def credential(profile: str, scopes: list[str] | None) -> int:
    """Print the ExecCredential kubectl asked for; bad ``KUBERNETES_EXEC_INFO`` fails before the daemon is asked."""
    version = kube_exec.answer_version(os.environ.get(kube_exec.EXEC_INFO_ENV))
    reply = client.get_token(profile, scopes=scopes, autostart=True)
    expires_on = client.check_expiry(reply)
    min_valid = reply.get("min_valid")  # absent from an older daemon: the token's own expiry
    margin = min_valid if type(min_valid) is int else 0
    expiry = kube_exec.credential_expiry(expires_on, margin, time.time())
    sys.stdout.write(dumps(kube_exec.exec_credential(version, reply["access_token"], expiry)) + "\n")
    sys.stdout.flush()
    return 0


# -- aadhelper kubeconfig ---------------------------------------------------------------------------------------


def kubeconfig(profile: str, *, server_id: str, context: str | None, path: str | None) -> int:
    """Print the user entry, or merge it (and point ``context`` at it) into the kubeconfig at ``path``."""
    from .. import paths
    from ..config import load_config
    from ..errors import UsageError

    load_config().profile(profile)  # an unknown profile is one line naming the config file, now, not at kubectl time
    scope = kube_exec.server_scope(server_id)
    name = kube_exec.user_name(profile, server_id)
    command = paths.console_script()
    if path is None:
        if context is not None:
            raise UsageError("kubeconfig: --context needs --kubeconfig FILE (the kubeconfig that holds the context)")
        sys.stdout.write(kube_exec.users_yaml(name, kube_exec.exec_stanza(command, profile, scope)))
        sys.stderr.write(f"aadhelper: add this to your kubeconfig's users, then `kubectl config set-context CONTEXT "
                         f"--user {name}` (or run again with --kubeconfig FILE [--context CONTEXT])\n")
        return 0
    from .kubeconfig_merge import merge_user

    merge_user(path, name, kube_exec.exec_stanza(command, profile, scope), context)
    done = f"context {context!r} now uses it" if context else \
        f"point a context at it: kubectl --kubeconfig {path} config set-context CONTEXT --user {name}"
    sys.stderr.write(f"aadhelper: {path}: user {name!r} runs `aadhelper {kube_exec.VERB} {profile} --scope "
                     f"{scope}`; {done}\n")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``kubectl-credential`` (for --help and usage errors; plain command lines take the fast path) and
    ``kubeconfig``."""
    helps = "kubectl exec credential plugin: print an ExecCredential with the profile's token"
    parser = sub.add_parser(kube_exec.VERB, help=helps, description=helps + ". kubectl runs it (see `aadhelper "
                            "kubeconfig`); it reads KUBERNETES_EXEC_INFO, never stdin.")
    parser.add_argument("profile", help="profile name")
    parser.add_argument("--scope", action="append", metavar="SCOPE",
                        help="ask for these scopes instead of the profile's (repeatable; kubeconfig writes the "
                             "cluster's server application's)")
    parser.set_defaults(func=lambda args: credential(args.profile, args.scope))

    helps = "print or merge the kubeconfig user entry that runs `aadhelper kubectl-credential`"
    parser = sub.add_parser("kubeconfig", help=helps, description=helps + " (apiVersion v1, interactiveMode Never, "
                            "this installation's absolute path). Merging uses kubectl and keeps every other entry.")
    parser.add_argument("profile", help="profile whose tokens kubectl gets")
    parser.add_argument("--server-id", default=kube_exec.AKS_SERVER_ID, metavar="ID",
                        help="the cluster's Entra server application id (default: AKS's, %(default)s); the scope "
                             "is ID/.default")
    parser.add_argument("--context", metavar="NAME", help="make this context of --kubeconfig use the entry")
    parser.add_argument("--kubeconfig", metavar="FILE",
                        help="merge into this kubeconfig (created if missing) instead of printing")
    parser.set_defaults(func=lambda args: kubeconfig(args.profile, server_id=args.server_id, context=args.context,
                                                     path=args.kubeconfig))
