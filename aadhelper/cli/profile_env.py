"""`aadhelper profile add NAME --from-env`: write the profile :mod:`aadhelper.cli.from_env` reads from ``AZURE_*``,
store its secret in the OS keyring, and say which variables were used and which may now be unset.

A certificate (``AZURE_CLIENT_CERTIFICATE_PATH``, with its password) is loaded and checked first, so a bad file or
password leaves nothing behind; then it is stored in the keyring (key and chain, as ``secret set --certificate``
does), or with ``--keep-path`` the profile references the file (which must then be yours and mode 0600, as the
fetcher reads it at every exchange) and only its password goes to the keyring. The profile is written before the
secret is stored (its validation covers everything else); if the keyring then refuses, the profile stays and the
line says how to store the secret by hand. Nothing secret is ever written to the config file.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import TYPE_CHECKING

from ..errors import SecretStoreError, UsageError
from ..secret_chunks import CLIENT_SECRET
from .common import notify_daemon, read_certificate_input, say, warn
from .from_env import CERTIFICATE_PATH, EnvProfile, from_environment

if TYPE_CHECKING:
    from ..certificates import CertificateSummary

#: Options that --from-env replaces: the environment decides them (the credential kind's own options included:
#: given with --from-env they would otherwise be dropped without a word).
_EXCLUSIVE = (("tenant", "--tenant"), ("client_id", "--client-id"), ("credential", "--credential"),
              ("user", "--user"), ("token_file", "--token-file"), ("token_command", "--token-command"),
              ("certificate_path", "--certificate-path"), ("x5c", "--x5c"), ("assertion_alg", "--assertion-alg"),
              ("source", "--source"), ("object_id", "--object-id"), ("msi_res_id", "--msi-res-id"),
              ("endpoint", "--endpoint"))


def add_from_env(args: argparse.Namespace) -> int:
    from ..config_edit import add_profile

    given = [option for key, option in _EXCLUSIVE if getattr(args, key)]
    if given:
        raise UsageError(f"--from-env takes the tenant, client id and credential from AZURE_*; drop {given[0]}")
    env = from_environment(os.environ)
    options: dict[str, object] = {}
    certificate: CertificateSummary | None = None
    if env.credential == "certificate":
        # Checked before anything is written: a bad file or password leaves neither a profile nor a secret.
        certificate = _check_certificate(env, keep_path=args.keep_path)
        if args.keep_path:
            options["certificate_path"] = env.certificate_path
        if env.send_chain:
            options["x5c"] = True
    elif args.keep_path:
        raise UsageError("--keep-path is for a certificate (AZURE_CLIENT_CERTIFICATE_PATH)")
    elif env.token_file is not None:
        options["token_file"] = env.token_file
    ca_bundle = None
    if args.ca_bundle is not None:
        ca_bundle = os.path.abspath(os.path.expanduser(args.ca_bundle))
        if not os.path.isfile(ca_bundle):
            raise UsageError(f"--ca-bundle {args.ca_bundle}: no such file")
    config = add_profile(
        None, args.name, tenant=env.tenant, client_id=env.client_id, scopes=args.scopes,
        authority=args.authority or env.authority, credential=env.credential, min_valid=args.min_valid,
        ca_bundle=ca_bundle, git_urls=args.git_urls, git_username=args.git_username, make_default=args.default,
        replace=args.replace, options=options)
    marker = " as the default" if config.default_profile == args.name else ""
    say(f"added profile {args.name!r} ({env.credential}) to {config.path}{marker} from {', '.join(env.used)}")
    for variable in env.ignored:
        say(f"{variable} is set too, but azure-identity (and so aadhelper) prefers {env.variable}; it was not used")
    if certificate is not None:
        say(f"{env.certificate_path}: {certificate.describe(time.time())} (SHA-1 thumbprint "
            f"{certificate.sha1_thumbprint}, what the Entra portal lists)")
    code = _store_secrets(args.name, env, keep_path=args.keep_path)
    notify_daemon(args.name)
    if env.token_file is not None and not os.path.isfile(env.token_file):
        warn(f"the token file {env.token_file} does not exist (yet): token requests fail until it does")
    kept = ("AZURE_CLIENT_CERTIFICATE_PATH",) if args.keep_path else ()
    secret_variables = [name for name in env.secret_variables if name not in kept]
    if code == 0 and secret_variables:
        names = " ".join(secret_variables)
        say(f"the secret is in the OS keyring now, not in the config file: you may unset {names} "
            f"(`unset {names}`)")
    if code == 0:
        say(f"next: `aadhelper token {args.name}`")
    return code


def _store_secrets(name: str, env: EnvProfile, *, keep_path: bool) -> int:
    """Store what the environment held that is secret; the exit code (4 when the keyring refused)."""
    from .. import secret_store
    from ..certificates import store_certificate, store_certificate_password

    what, fix = "client secret", f"aadhelper secret set {name}"
    try:
        if env.secret is not None:
            secret_store.open_secret_store().set(name, CLIENT_SECRET, env.secret)
        elif env.certificate_path is not None and keep_path:
            if env.certificate_password is None:
                return 0
            what, fix = "certificate's password", f"aadhelper secret set {name} --certificate-password"
            store_certificate_password(name, env.certificate_path, env.certificate_password)
        elif env.certificate_path is not None:
            what, fix = "certificate", f"aadhelper secret set {name} --certificate {env.certificate_path}"
            store_certificate(name, read_certificate_input(env.certificate_path, f"--from-env: {CERTIFICATE_PATH}"),
                              env.certificate_password)
        else:
            return 0
    except SecretStoreError as exc:
        warn(f"the profile was added, but its {what} could not be stored: {exc.one_line()}; store it with `{fix}`")
        return exc.exit_code
    say(f"stored the {what} of profile {name!r} in the OS keyring")
    return 0


def _check_certificate(env: EnvProfile, *, keep_path: bool) -> CertificateSummary:
    """The certificate the environment names, loaded with its password and valid now; else the one line why.
    With ``keep_path`` the file is read as the fetcher will read it (yours, mode 0600)."""
    from ..certificates import check_validity, load_certificate, read_certificate_file

    assert env.certificate_path is not None
    path = env.certificate_path
    source = f"the certificate file {path} ({CERTIFICATE_PATH})"
    data = read_certificate_file(path) if keep_path else read_certificate_input(path, f"--from-env: {CERTIFICATE_PATH}")
    certificate = load_certificate(data, env.certificate_password, source=source)
    check_validity(certificate, time.time(), source=source)
    return certificate.summary()
