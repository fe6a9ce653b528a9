"""`aadhelper secret`: store or delete a profile's client secret or certificate in the OS keyring.

The secret is read from stdin when stdin is not a terminal (`... | aadhelper secret set NAME`), else from a
no-echo prompt; never from the command line, where other users could read it in the process list. A certificate
(``--certificate FILE``: PEM with key and chain, or PFX) is checked, stored as its key and chain, and described by
its thumbprints and expiry; its password comes from stdin (``--password-stdin``) or a no-echo prompt, never argv.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TextIO

from ..errors import Cancelled, UsageError
from ..secret_chunks import CERTIFICATE, CERTIFICATE_PASSWORD, CLIENT_SECRET
from ..tokens import Secret
from .common import (
    delete_stored,
    help_handler,
    load_profile,
    notify_daemon,
    read_certificate_input,
    require_persistent_store,
    say,
    warn,
)

KIND = CLIENT_SECRET
#: What `secret delete` removes: an application's credentials (a user's refresh token goes with `logout`/`remove`).
_APP_KINDS = (CLIENT_SECRET, CERTIFICATE, CERTIFICATE_PASSWORD)
#: Entra secrets are ~40 characters; anything this long is a wrong file piped in.
MAX_SECRET_CHARS = 16 * 1024


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this verb's subparsers."""
    parser = sub.add_parser(
        "secret", help="store or delete a profile's client secret or certificate in the OS keyring",
        description="Store or delete the client secret (credential client_secret) or the certificate (credential "
                    "certificate) of a profile in the OS keyring.")
    parser.set_defaults(func=help_handler(parser))
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    store = actions.add_parser(
        "set", help="store the client secret (read from stdin, or prompted for without echo)",
        description="Store the client secret of profile NAME. It is read from stdin when stdin is not a terminal "
                    "(one trailing newline is dropped), otherwise prompted for without echo. It is never taken "
                    "from the command line.")
    store.add_argument("name", metavar="NAME", help="profile name")
    store.add_argument("--certificate", metavar="FILE",
                       help="store this certificate instead (credential certificate): PEM with the private key and "
                            "the certificate chain in any order, or PKCS#12/PFX")
    store.add_argument("--password-stdin", action="store_true",
                       help="read the certificate's password from stdin (otherwise prompted for when needed)")
    store.add_argument("--certificate-password", action="store_true",
                       help="store the password of the profile's encrypted certificate_path file (read from stdin "
                            "or prompted for)")
    # Caught so that a secret typed on the command line is refused without argparse echoing it back.
    store.add_argument("stray", nargs="*", help=argparse.SUPPRESS)
    store.set_defaults(func=_set)
    delete = actions.add_parser("delete", help="delete the stored client secret or certificate",
                                description="Delete the client secret, certificate or certificate file password of "
                                            "profile NAME from the OS keyring.")
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
    if args.certificate is not None or args.certificate_password:
        return _set_certificate(args)
    if args.password_stdin:
        raise UsageError("--password-stdin goes with --certificate FILE")
    profile = load_profile(args.name, KIND)
    require_persistent_store("the client secret")
    secret = read_secret(f"Client secret for profile {profile.name!r} (input hidden): ")
    secret_store.open_secret_store().set(profile.name, KIND, secret)
    say(f"stored the client secret of profile {profile.name!r} in the OS keyring")
    notify_daemon(profile.name)
    return 0


def _set_certificate(args: argparse.Namespace) -> int:
    from ..certificates import PasswordNeeded, store_certificate, store_certificate_password

    profile = load_profile(args.name, "certificate")
    require_persistent_store("the certificate")
    path = profile.certificate.path if profile.certificate else None
    if args.certificate_password:
        if args.certificate is not None or path is None:
            raise UsageError("--certificate-password is for a profile whose certificate is a file (certificate_path)",
                             hint=f"store a certificate in the keyring with `aadhelper secret set {profile.name} "
                                  "--certificate FILE [--password-stdin]`")
        password = read_secret(f"Password of {path} (input hidden): ")
        summary = store_certificate_password(profile.name, path, password)
        say(f"stored the password of {path} for profile {profile.name!r} in the OS keyring")
    else:
        if path is not None:
            raise UsageError(f"profile {profile.name!r} reads its certificate from {path} (certificate_path)",
                             hint="remove certificate_path from the profile to keep the certificate in the keyring, "
                                  f"or run `aadhelper secret set {profile.name} --certificate-password`")
        data = read_certificate_input(args.certificate)
        prompt = f"Password of {args.certificate} (input hidden): "
        given = read_secret(prompt) if args.password_stdin else None
        try:
            summary = store_certificate(profile.name, data, given)
        except PasswordNeeded:
            if given is not None or not sys.stdin.isatty():
                raise
            summary = store_certificate(profile.name, data, read_secret(prompt))
        say(f"stored the certificate of profile {profile.name!r} in the OS keyring ({summary.subject})")
    say(f"SHA-256 thumbprint {summary.sha256_thumbprint}")
    say(f"SHA-1 thumbprint {summary.sha1_thumbprint} (what the Entra portal lists); expires {summary.expires}")
    if summary.expiring(time.time()):
        warn(f"the certificate expires in {summary.days_left(time.time()):.0f} days")
    notify_daemon(profile.name)
    return 0


def _app_profile(name: str) -> None:
    """Raise the ConfigError of a profile `secret delete` is not for: unknown, or a user's (whose sign-in goes with
    `logout`)."""
    from ..config import load_config

    if load_config().profile(name).credential == "user":
        load_profile(name, KIND)  # raises, saying what the profile uses instead


def _delete(args: argparse.Namespace) -> int:
    deleted = delete_stored(args.name, _APP_KINDS, "client secret or certificate", lambda: _app_profile(args.name))
    if not deleted:
        say(f"no client secret was stored for profile {args.name!r}")
        return 0
    names = " and ".join(kind.replace("_", " ") for kind in deleted)
    say(f"deleted the {names} of profile {args.name!r} from the OS keyring")
    notify_daemon(args.name)
    return 0
