"""What the CLI's verbs share (aws-vault's ``cli/global.go``): loading a profile of an expected kind, telling a
running daemon to reload, and the lines the commands print on stderr. Verbs import this, never another verb."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from ..config import Profile, load_config
from ..errors import AadhelperError, ConfigError

# What a profile of each credential kind does instead, and how to give it its credential.
_CREDENTIAL_USE = {
    "client_secret": ("uses a client secret, not a user sign-in",
                      "store the secret with `aadhelper secret set {name}`, or add the profile again with --user"),
    "user": ("signs in as a user and uses no client secret", "sign in with `aadhelper login {name}`"),
    "certificate": ("proves itself with a certificate, not a client secret",
                    "store it with `aadhelper secret set {name} --certificate FILE`"),
    "federated": ("proves itself with a federated token (token_file or token_command), no secret to store",
                  "there is nothing to store: `aadhelper token {name}` exchanges the federated token"),
    "managed_identity": ("uses the machine's managed identity: no secret and no sign-in",
                         "there is nothing to set up here: `aadhelper token {name}` asks the machine's identity"),
}


def load_profile(name: str | None, credential: str) -> Profile:
    """Profile ``name`` (None: the default) from the config file; it must use ``credential``, else a ConfigError
    saying what it uses instead and how to set that up."""
    config = load_config()
    profile = config.profile(name)
    if profile.credential != credential:
        uses, fix = _CREDENTIAL_USE[profile.credential]
        raise ConfigError(f"{config.path}: profile {profile.name!r}: key 'credential' is {profile.credential!r}, "
                          f"which {uses}", profile=profile.name, hint=fix.format(name=profile.name))
    return profile


def notify_daemon(profile: str | None = None) -> None:
    """Tell a running daemon to reload (all profiles, or one); no daemon is fine, a failure only a warning."""
    from .. import client

    try:
        if client.reload(profile):
            say("the running daemon reloaded its configuration")
    except AadhelperError as exc:
        warn(f"the running daemon did not reload: {exc.one_line()}; restart it to pick up the change")


def say(line: str) -> None:
    sys.stderr.write(f"aadhelper: {line}\n")


def warn(line: str) -> None:
    say(f"warning: {line}")


def help_handler(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def show_help(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return show_help
