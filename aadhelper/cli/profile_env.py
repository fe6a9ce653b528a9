"""`aadhelper profile add NAME --from-env`: write the profile :mod:`aadhelper.cli.from_env` reads from ``AZURE_*``,
store its secret in the OS keyring, and say which variables were used and which may now be unset.

The profile is written first (its validation then covers everything), the secret stored after; if the keyring
refuses, the profile stays and the line says how to store the secret by hand.
"""

from __future__ import annotations

import argparse
import os

from ..errors import SecretStoreError, UsageError
from ..secret_chunks import CLIENT_SECRET
from .common import notify_daemon, say, warn
from .from_env import CERTIFICATE_PATH, EnvProfile, from_environment

#: Options that --from-env replaces: the environment decides them.
_EXCLUSIVE = (("tenant", "--tenant"), ("client_id", "--client-id"), ("credential", "--credential"),
              ("user", "--user"), ("token_file", "--token-file"), ("token_command", "--token-command"))


def add_from_env(args: argparse.Namespace) -> int:
    from ..config_edit import add_profile

    given = [option for key, option in _EXCLUSIVE if getattr(args, key)]
    if given:
        raise UsageError(f"--from-env takes the tenant, client id and credential from AZURE_*; drop {given[0]}")
    env = from_environment(os.environ)
    if env.credential == "certificate":
        _check_certificate_support(args, env)
    elif args.keep_path:
        raise UsageError("--keep-path is for a certificate (AZURE_CLIENT_CERTIFICATE_PATH)")
    ca_bundle = None
    if args.ca_bundle is not None:
        ca_bundle = os.path.abspath(os.path.expanduser(args.ca_bundle))
        if not os.path.isfile(ca_bundle):
            raise UsageError(f"--ca-bundle {args.ca_bundle}: no such file")
    config = add_profile(
        None, args.name, tenant=env.tenant, client_id=env.client_id, scopes=args.scopes,
        authority=args.authority or env.authority, credential=env.credential, min_valid=args.min_valid,
        ca_bundle=ca_bundle, git_urls=args.git_urls, git_username=args.git_username, make_default=args.default,
        replace=args.replace, token_file=env.token_file)
    marker = " as the default" if config.default_profile == args.name else ""
    say(f"added profile {args.name!r} ({env.credential}) to {config.path}{marker} from {', '.join(env.used)}")
    for variable in env.ignored:
        say(f"{variable} is set too, but azure-identity (and so aadhelper) uses "
            f"{next(v for v in env.used if v not in ('AZURE_TENANT_ID', 'AZURE_CLIENT_ID', 'AZURE_AUTHORITY_HOST'))}"
            " first; it was not used")
    code = _store_secrets(args.name, env)
    notify_daemon(args.name)
    if env.token_file is not None and not os.path.isfile(env.token_file):
        warn(f"the token file {env.token_file} does not exist (yet): token requests fail until it does")
    if code == 0 and env.secret_variables:
        names = " ".join(env.secret_variables)
        say(f"the secret is in the OS keyring now, not in the config file: you may unset {names} "
            f"(`unset {names}`)")
    if code == 0:
        say(f"next: `aadhelper token {args.name}`")
    return code


def _store_secrets(name: str, env: EnvProfile) -> int:
    """Store what the environment held that is secret; the exit code (4 when the keyring refused)."""
    if env.secret is None:
        return 0
    from .. import secret_store

    try:
        secret_store.open_secret_store().set(name, CLIENT_SECRET, env.secret)
    except SecretStoreError as exc:
        warn(f"the profile was added, but its client secret could not be stored: {exc.one_line()}; store it with "
             f"`aadhelper secret set {name}`")
        return exc.exit_code
    say(f"stored the client secret of profile {name!r} in the OS keyring")
    return 0


def _check_certificate_support(args: argparse.Namespace, env: EnvProfile) -> None:
    raise UsageError(f"--from-env: {CERTIFICATE_PATH} is set, and certificate profiles are not supported by this "
                     "build yet", hint="unset it to use another AZURE_* credential")
