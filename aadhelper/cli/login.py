"""`aadhelper login` and `aadhelper logout`: sign a user profile in and store its refresh token in the OS keyring;
sign it out again.

The sign-in runs here, in the CLI process (device code by default, ``--browser`` for the authorization code flow
with PKCE); the daemon is then told to reload the profile, so it uses the new refresh token at once. A
Conditional Access challenge (``claims``) the daemon received for the profile is passed on to the new sign-in.
The refresh token is never printed; messages go to stderr, stdout stays empty.
"""

from __future__ import annotations

import argparse
import json

from ..errors import AadhelperError, KeyringLocked, KeyringUnavailable, SecretStoreError, UsageError
from ..secret_chunks import REFRESH_TOKEN
from .args import seconds, word
from .common import delete_stored, forget_sign_in, load_profile, notify_daemon, require_persistent_store, say, warn

KIND = REFRESH_TOKEN
#: Seconds to wait for a running daemon's status (for its claims challenge) before going on without it.
STATUS_TIMEOUT = 5.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this verb's subparsers."""
    login = sub.add_parser(
        "login", help="sign in as a user (device code, or --browser) and store the refresh token",
        description="Sign in to a user profile (added with --user) and store its refresh token in the OS keyring. "
                    "By default a device code is shown: open the URL on any device and enter the code. With "
                    "--browser, a browser on this machine signs in (authorization code with PKCE through a "
                    "http://127.0.0.1 redirect). A running daemon uses the new sign-in at once.")
    login.add_argument("name", nargs="?", metavar="NAME", help="profile name (default: the default profile)")
    login.add_argument("--browser", action="store_true",
                       help="sign in with a browser on this machine instead of a device code")
    login.add_argument("--no-browser", action="store_true",
                       help="with --browser: only print the sign-in URL, do not start a browser")
    login.add_argument("--scope", dest="scopes", action="append", metavar="SCOPE", type=word("scope"),
                       help="consent to this scope instead of the profile's (repeatable; one resource)")
    login.add_argument("--claims", metavar="JSON",
                       help="a Conditional Access claims challenge to satisfy (default: the one the daemon last "
                            "received for the profile)")
    login.add_argument("--timeout", type=seconds(1), metavar="SECONDS",
                       help="how long to wait for the sign-in (default: 600 with --browser, else until the device "
                            "code expires, 15 min on Entra)")
    login.set_defaults(func=_login)

    logout = sub.add_parser(
        "logout", help="delete a profile's refresh token and drop its cached tokens",
        description="Delete the refresh token of profile NAME from the OS keyring (every chunk of it) and tell a "
                    "running daemon to drop the profile's cached tokens.")
    logout.add_argument("name", nargs="?", metavar="NAME", help="profile name (default: the default profile)")
    logout.set_defaults(func=_logout)


def _login(args: argparse.Namespace) -> int:
    from ..login import LoginOptions, sign_in
    from ..secret_store import open_secret_store

    if args.no_browser and not args.browser:
        raise UsageError("--no-browser goes with --browser (it prints the sign-in URL instead of starting a "
                         "browser); the device code flow never starts one")
    profile = load_profile(args.name, "user")
    require_persistent_store("the sign-in (its refresh token)")
    claims = _claims_option(args.claims) if args.claims is not None else _claims_from_daemon(profile.name)
    if claims and args.claims is None:
        say(f"passing on the Conditional Access challenge the daemon received for profile {profile.name!r}")
    store = open_secret_store()
    try:
        # Fail before the user signs in, not after, when the keyring is missing or locked.
        store.get(profile.name, KIND)
    except (KeyringUnavailable, KeyringLocked):
        raise
    except SecretStoreError:
        pass  # a corrupted old sign-in: this one replaces it
    result = sign_in(profile, LoginOptions(browser=args.browser, open_browser=not args.no_browser,
                                           timeout=args.timeout, scopes=tuple(args.scopes or ()),
                                           claims=claims))
    store.set(profile.name, KIND, result.refresh_token)
    _remember(profile.name, result.account, result.tenant)
    who = f" as {result.account}" if result.account else ""
    say(f"signed in{who}; stored the refresh token of profile {profile.name!r} in the OS keyring")
    notify_daemon(profile.name)
    return 0


def _logout(args: argparse.Namespace) -> int:
    name = args.name
    if name is None:
        from ..config import load_config

        name = load_config().profile(None).name
    forget_sign_in(name)
    if delete_stored(name, [KIND], "refresh token", lambda: load_profile(name, "user")):
        say(f"signed out: deleted the refresh token of profile {name!r} from the OS keyring")
    else:
        say(f"profile {name!r} was not signed in (no refresh token stored)")
    # Also when nothing was stored: the daemon may still hold access tokens of an earlier sign-in.
    notify_daemon(name)
    return 0


def _remember(name: str, account: str | None, tenant: str | None) -> None:
    """Record who signed in, for `status` and `profile show`; a failure only costs that label."""
    from .. import accounts

    try:
        accounts.record(name, account=account, tenant=tenant)
    except OSError as exc:
        warn(f"could not record the signed-in account in {accounts.file_path()}: {exc.strerror or exc}")


def _claims_option(text: str) -> str:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise UsageError("--claims must be a JSON object, e.g. '{\"access_token\":{\"acrs\":{\"essential\":true,"
                         "\"value\":\"c1\"}}}'")
    return text


def _claims_from_daemon(name: str) -> str | None:
    """The claims challenge of the profile's last error in a running daemon, if any (no daemon: None)."""
    from .. import client, protocol

    try:
        reply = client.call(protocol.request("status"), timeout=STATUS_TIMEOUT)
    except AadhelperError:
        return None
    for profile in reply.get("profiles", []):
        if isinstance(profile, dict) and profile.get("name") == name:
            for token in profile.get("tokens", []):
                error = token.get("last_error") if isinstance(token, dict) else None
                claims = error.get("claims") if isinstance(error, dict) else None
                if isinstance(claims, str) and claims:
                    return claims
    return None

