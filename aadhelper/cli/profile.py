"""`aadhelper profile`: add, list, show and remove profiles, pick the default, map git URLs to a profile.

Data (list, show) goes to stdout; confirmations and warnings go to stderr. After every change a running daemon
is told to reload its configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from .. import git_helper
from ..config import ASSERTION_ALGS, CREDENTIALS, MANAGED_IDENTITY_SOURCES, Config, GitUrl, Profile, load_config
from ..errors import SecretStoreError, UsageError
from ..protocol import MAX_MIN_VALID
from ..secret_chunks import SECRET_KINDS
from ..urls import normalize_git_url
from .args import seconds, word
from .common import credential_state, forget_sign_in, help_handler, notify_daemon, say, warn

#: The settings `profile set --unset` may remove (their defaults then apply).
UNSETTABLE = ("authority", "min_valid", "ca_bundle")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this verb's subparsers."""
    parser = sub.add_parser(
        "profile", help="manage profiles (an app registration in a tenant) in the config file",
        description="Manage profiles in the config file ($AADHELPER_CONFIG or the user config dir). "
                    "Comments and layout of the file are kept.")
    parser.set_defaults(func=help_handler(parser))
    actions = parser.add_subparsers(dest="action", metavar="ACTION")

    add = actions.add_parser("add", help="add a profile", description="Add a profile. The first one becomes the "
                             "default. Then store its secret (`aadhelper secret set NAME`) or sign in "
                             "(`aadhelper login NAME`, with --user).")
    add.add_argument("name", metavar="NAME", help="profile name: letters, digits, '-', '_', '.'; at most 64")
    add.add_argument("--tenant", help="tenant GUID or domain (common/organizations: --user only; not for a "
                                      "managed identity); required unless --from-env or a managed identity")
    add.add_argument("--client-id", help="application (client) id of the app registration (required unless "
                                         "--from-env); with --credential managed_identity, the optional client id "
                                         "of a user-assigned identity")
    add.add_argument("--scope", dest="scopes", action="append", required=True, metavar="SCOPE",
                     help="default scope, e.g. https://graph.microsoft.com/.default; repeat for several")
    add.add_argument("--authority", help="public, usgov, china or an https:// URL "
                                         "(default: $AZURE_AUTHORITY_HOST, else public)")
    add.add_argument("--ca-bundle", metavar="FILE", help="PEM file of CAs to trust for the authority's TLS")
    add.add_argument("--min-valid", type=int, metavar="SECONDS",
                     help=f"seconds a served token must still be valid (0-{MAX_MIN_VALID}, default 300)")
    add.add_argument("--user", action="store_true",
                     help="sign in as a user (public client, no secret) instead of with a client secret")
    add.add_argument("--credential", choices=CREDENTIALS,
                     help="how the app proves itself: client_secret (default), user (= --user), certificate, "
                          "federated (--token-file or --token-command), managed_identity (the machine's identity)")
    add.add_argument("--certificate-path", metavar="FILE",
                     help="certificate: read the key and certificate from this PEM/PFX file (mode 0600) instead of "
                          "the keyring")
    add.add_argument("--x5c", action="store_true",
                     help="certificate: send the certificate chain (subject name + issuer authentication)")
    add.add_argument("--assertion-alg", choices=ASSERTION_ALGS,
                     help="certificate: sign assertions with PS256 (default) or RS256 (SHA-1 x5t)")
    add.add_argument("--token-file", metavar="FILE", help="federated: the file holding the assertion, re-read at "
                     "every exchange (default: $AZURE_FEDERATED_TOKEN_FILE of the daemon)")
    add.add_argument("--token-command", metavar="COMMAND", help="federated: a command printing the assertion, "
                     "split like a shell would but run without one, e.g. '/usr/local/bin/ci-oidc-token --audience "
                     "api://AzureADTokenExchange'")
    add.add_argument("--from-env", action="store_true", help="take tenant, client id, authority and the "
                     "credential from AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_AUTHORITY_HOST and one of "
                     "AZURE_CLIENT_SECRET, AZURE_CLIENT_CERTIFICATE_PATH, AZURE_FEDERATED_TOKEN_FILE (azure-identity's "
                     "order); secrets go to the OS keyring")
    add.add_argument("--keep-path", action="store_true", help="with --from-env and a certificate: reference "
                     "AZURE_CLIENT_CERTIFICATE_PATH from the profile instead of storing the certificate in the keyring")
    add.add_argument("--git-url", dest="git_urls", action="append", default=[], metavar="URL",
                     help="serve git remotes under this URL prefix with this profile; repeatable")
    add.add_argument("--git-username", metavar="USER", help="username git gets for --git-url "
                     "(default: the client id, or with --user the signed-in account)")
    managed = add.add_argument_group("managed identity (--credential managed_identity)")
    managed.add_argument("--source", choices=MANAGED_IDENTITY_SOURCES,
                         help="where the identity's tokens come from (default: detected from the daemon's environment)")
    managed.add_argument("--object-id", help="object (principal) id of a user-assigned identity")
    managed.add_argument("--msi-res-id", metavar="RESOURCE_ID", help="Azure resource id of a user-assigned identity")
    managed.add_argument("--endpoint", metavar="URL", help="the identity endpoint's token URL (tests)")
    add.add_argument("--default", action="store_true", help="make it the default profile")
    add.add_argument("--replace", action="store_true", help="overwrite an existing profile of that name (its git "
                     "URL mappings are kept unless --git-url is given)")
    add.set_defaults(func=_add)

    change = actions.add_parser(
        "set", help="change single settings of a profile",
        description="Change single settings of profile NAME; everything else (git URL mappings, comments, the "
                    "stored secret or sign-in) stays. --unset KEY removes a setting so its default applies.")
    change.add_argument("name", metavar="NAME", help="profile name")
    change.add_argument("--tenant", help="tenant GUID or domain")
    change.add_argument("--client-id", help="application (client) id")
    change.add_argument("--scope", dest="scopes", action="append", metavar="SCOPE", type=word("scope"),
                        help="default scope; repeat for several (replaces the profile's list)")
    change.add_argument("--authority", help="public, usgov, china or an https:// URL")
    change.add_argument("--ca-bundle", metavar="FILE", help="PEM file of CAs to trust for the authority's TLS")
    change.add_argument("--min-valid", type=seconds(), metavar="SECONDS",
                        help=f"seconds a served token must still be valid (0-{MAX_MIN_VALID})")
    change.add_argument("--unset", action="append", default=[], choices=UNSETTABLE, metavar="KEY",
                        help=f"remove a setting, back to its default ({', '.join(UNSETTABLE)}); repeatable")
    change.set_defaults(func=_set)

    listing = actions.add_parser("list", help="list profiles", description="List profiles; * marks the default.")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(func=_list)

    show = actions.add_parser("show", help="show a profile's settings", description="Show every setting of a "
                              "profile, with defaults and the resolved authority.")
    show.add_argument("name", metavar="NAME", nargs="?", help="profile name (default: the default profile)")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=_show)

    remove = actions.add_parser("remove", help="remove a profile and its stored secrets",
                                description="Remove a profile from the config file and delete its client "
                                            "secret and refresh token from the OS keyring.")
    remove.add_argument("name", metavar="NAME", help="profile name")
    remove.set_defaults(func=_remove)

    default = actions.add_parser("default", help="set the default profile",
                                 description="Make NAME the profile used when a command names none.")
    default.add_argument("name", metavar="NAME", help="profile name")
    default.set_defaults(func=_default)

    git_url = actions.add_parser("git-url", help="map git remote URLs to a profile",
                                 description="Git remotes whose URL starts with a mapped prefix (on whole path "
                                             "segments; the longest prefix wins) get tokens of that profile.")
    git_url.set_defaults(func=help_handler(git_url))
    git_actions = git_url.add_subparsers(dest="git_action", metavar="ACTION")
    for verb, help_text, func in (("add", "map a URL prefix to the profile", _git_url_add),
                                  ("remove", "remove a URL prefix from the profile", _git_url_remove)):
        action = git_actions.add_parser(verb, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        action.add_argument("name", metavar="NAME", help="profile name")
        action.add_argument("url", metavar="URL", help="http(s) URL prefix, e.g. https://dev.azure.com/contoso/")
        if verb == "add":
            action.add_argument("--username", metavar="USER", help="username git gets with the token "
                                "(default: the client id, or the signed-in account for user profiles)")
        action.set_defaults(func=func)


def _add(args: argparse.Namespace) -> int:
    from ..config_edit import add_profile

    if args.git_username is not None and not args.git_urls:
        raise UsageError("--git-username needs at least one --git-url")
    if args.from_env:
        from .profile_env import add_from_env

        return add_from_env(args)
    if args.keep_path:
        raise UsageError("--keep-path goes with --from-env")
    ca_bundle = _ca_bundle(args.ca_bundle)
    replacing = args.replace and args.name in _configured_names()
    credential, options = _credential_options(args)
    password_needed = _check_certificate_file(options.get("certificate_path"))
    config = add_profile(
        None, args.name, tenant=args.tenant, client_id=args.client_id, scopes=args.scopes, authority=args.authority,
        credential=credential, min_valid=args.min_valid, ca_bundle=ca_bundle,
        git_urls=args.git_urls, git_username=args.git_username, make_default=args.default, replace=args.replace,
        options=options)
    marker = " as the default" if config.default_profile == args.name else ""
    if replacing:
        mappings = len(config.profile(args.name).git_urls)
        kept = f"; its git URL mappings were {'replaced' if args.git_urls else 'kept'} ({mappings})" if mappings \
            else ""
        say(f"replaced profile {args.name!r} in {config.path}{marker}{kept}")
    else:
        say(f"added profile {args.name!r} to {config.path}{marker}")
    notify_daemon()
    for url in config.profile(args.name).git_urls:
        git_setup_hint(url.url)
    if credential == "certificate":
        _certificate_next_step(config.profile(args.name), password_needed)
        return 0
    if credential == "managed_identity":
        say(f"next: `aadhelper token {args.name}` (no secret to store: the machine's identity is used)")
        return 0
    nxt = {"user": f"aadhelper login {args.name}", "client_secret": f"aadhelper secret set {args.name}"}.get(
        credential, f"aadhelper token {args.name}")
    say(f"next: `{nxt}`")
    return 0


def _configured_names() -> list[str]:
    from ..errors import ConfigError

    try:
        return list(load_config().profiles)
    except ConfigError:
        return []  # add_profile reports the broken file


def _set(args: argparse.Namespace) -> int:
    from ..config_edit import set_profile

    settings: dict[str, object] = {key: value for key, value in (
        ("tenant", args.tenant), ("client_id", args.client_id), ("scopes", args.scopes),
        ("authority", args.authority), ("ca_bundle", _ca_bundle(args.ca_bundle)), ("min_valid", args.min_valid))
        if value is not None}
    clash = sorted(set(settings) & set(args.unset))
    if clash:
        raise UsageError(f"--unset {clash[0]} and a new value for it at once")
    if not settings and not args.unset:
        raise UsageError("nothing to change: give at least one setting, e.g. --min-valid 600",
                         hint=f"the current ones: `aadhelper profile show {args.name}`")
    before = load_config().profile(args.name).as_dict()
    config = set_profile(None, args.name, settings, args.unset)
    after = config.profile(args.name).as_dict()
    changes = [f"{key} {_shown(before[key])} -> {_shown(after[key])}" for key in (*settings, *args.unset)
               if before.get(key) != after.get(key)]
    say(f"profile {args.name!r} in {config.path}: " + ("; ".join(changes) if changes else "nothing changed"))
    if changes:
        notify_daemon()
    return 0


def _shown(value: object) -> str:
    if isinstance(value, list):
        return " ".join(map(str, value)) or "none"
    return "default" if value is None else str(value)


def _ca_bundle(value: str | None) -> str | None:
    """A --ca-bundle argument as the absolute path the config keeps; an error for a file that is not there."""
    if value is None:
        return None
    path = os.path.abspath(os.path.expanduser(value))
    if not os.path.isfile(path):
        raise UsageError(f"--ca-bundle {value}: no such file")
    return path


def _credential_options(args: argparse.Namespace) -> tuple[str, dict[str, object]]:
    """The credential kind and its keys from ``--credential``/``--user`` and the certificate and federated
    options."""
    credential = args.credential or ("user" if args.user else "client_secret")
    if args.user and credential != "user":
        raise UsageError(f"--user and --credential {credential} exclude each other")
    options: dict[str, object] = {}
    if args.certificate_path is not None:
        options["certificate_path"] = os.path.abspath(os.path.expanduser(args.certificate_path))
    if args.x5c:
        options["x5c"] = True
    if args.assertion_alg is not None:
        options["assertion_alg"] = args.assertion_alg
    if options and credential != "certificate":
        raise UsageError("--certificate-path, --x5c and --assertion-alg need --credential certificate")
    if args.token_file is not None:
        options["token_file"] = os.path.abspath(os.path.expanduser(args.token_file))
    token_command = _split_command(args.token_command)
    if token_command is not None:
        options["token_command"] = token_command
    if (args.token_file is not None or token_command is not None) and credential != "federated":
        raise UsageError("--token-file and --token-command go with --credential federated")
    managed = {key: value for key, value in (("source", args.source), ("object_id", args.object_id),
                                             ("msi_res_id", args.msi_res_id), ("endpoint", args.endpoint))
               if value is not None}
    if credential == "managed_identity":
        if args.tenant is not None:
            raise UsageError("a managed identity takes no --tenant: the machine's identity has its own")
    else:
        if managed:
            raise UsageError(f"--{next(iter(managed)).replace('_', '-')} is an option of --credential "
                             "managed_identity only")
        for flag, value in (("--tenant", args.tenant), ("--client-id", args.client_id)):
            if value is None:
                raise UsageError(f"{flag} is required for --credential {credential} (or --from-env)")
    options.update(managed)
    return credential, options


def _check_certificate_file(path: object) -> bool:
    """Refuse a ``--certificate-path`` file the fetcher would refuse (others can read it, no key, not matching,
    expired...) before the profile is written; True when it is encrypted (its password is the next step)."""
    from ..certificates import PasswordNeeded, check_validity, load_certificate, read_certificate_file

    if not isinstance(path, str):
        return False
    source = f"the certificate file {path}"
    try:
        certificate = load_certificate(read_certificate_file(path), source=source)
    except PasswordNeeded:
        return True
    check_validity(certificate, time.time(), source=source)
    say(f"{path}: {certificate.summary().describe(time.time())}")
    return False


def _certificate_next_step(profile: Profile, password_needed: bool) -> None:
    """What a new certificate profile still needs: its certificate in the keyring, or the file's password."""
    path = profile.certificate.path if profile.certificate else None
    if path is None:
        say(f"next: `aadhelper secret set {profile.name} --certificate FILE` (PEM with key and chain, or PFX; "
            "add --password-stdin for an encrypted one)")
    elif password_needed:
        say(f"next: `aadhelper secret set {profile.name} --certificate-password` ({path} is encrypted)")


def _split_command(text: str | None) -> list[str] | None:
    if text is None:
        return None
    import shlex

    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise UsageError(f"--token-command: {exc}") from None
    if not argv:
        raise UsageError("--token-command is empty")
    return argv


def git_setup_hint(prefix: str) -> None:
    """The git settings a URL mapping needs: git sends a path to helpers only with useHttpPath."""
    origin, needs_path = git_helper.helper_config(prefix)
    if needs_path:
        say(f"for git: `git config --global credential.{origin}.useHttpPath true` (git sends the path, so "
            f"{prefix} can match)")
    say(f"for git: `git config --global credential.{origin}.helper ''` then "
        f"`git config --global --add credential.{origin}.helper {git_helper.HELPER}`")


def _list(args: argparse.Namespace) -> int:
    config = load_config()
    if args.json:
        _print_json([_profile_json(config, p) for p in config.profiles.values()])
        return 0
    if not config.profiles:
        say(f"no profiles in {config.path}; add one with `aadhelper profile add NAME ...`")
        return 0
    rows = [("", "NAME", "TENANT", "CLIENT ID", "CREDENTIAL")]
    rows += [("*" if p.name == config.default_profile else "", p.name, p.tenant, p.client_id, p.credential)
             for p in config.profiles.values()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        sys.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n")
    return 0


def _show(args: argparse.Namespace) -> int:
    config = load_config()
    profile = config.profile(args.name)
    credential = credential_state(profile)
    if args.json:
        data = {**_profile_json(config, profile), **_certificate_json(profile)}
        data["secret_stored"] = credential["stored"]
        if profile.credential == "user":
            data["signed_in"] = {"account": credential.get("account"), "tenant": credential.get("tenant")}
        _print_json(data)
        return 0
    rows = [("name", profile.name), ("default", "yes" if profile.name == config.default_profile else "no"),
            ("tenant", profile.tenant), ("client_id", profile.client_id), ("credential", profile.credential),
            ("scopes", " ".join(profile.scopes)), ("authority", profile.authority),
            ("token_endpoint", profile.token_endpoint), ("min_valid", str(profile.min_valid)),
            ("ca_bundle", profile.ca_bundle or "-"), ("config", config.path)]
    if credential["text"]:
        rows.insert(5, ("secret" if profile.credential != "user" else "sign-in", credential["text"]))
    if profile.credential == "federated":
        import shlex

        rows.insert(5, ("token_command", shlex.join(profile.token_command)) if profile.token_command else
                    ("token_file", profile.token_file or "- (AZURE_FEDERATED_TOKEN_FILE is not set: set token_file)"))
    rows += [("git_url", f"{g.url} (username {git_user(profile, g)})") for g in profile.git_urls]
    rows += _certificate_rows(profile)
    if profile.managed_identity is not None:
        from ..config import describe_managed_identity

        # Detected here from this shell's environment; the daemon detects from its own (see `aadhelper status`).
        rows = [row for row in rows if row[0] not in ("tenant", "client_id", "authority", "token_endpoint")]
        line = describe_managed_identity(profile.managed_identity.as_dict())
        if profile.managed_identity.detected:
            line += " (this shell's environment; the daemon detects from its own: `aadhelper status`)"
        rows.append(("identity", line))
    for key, value in rows:
        sys.stdout.write(f"{key:<15} {value}\n")
    return 0


def _remove(args: argparse.Namespace) -> int:
    from ..config_edit import remove_profile

    config = remove_profile(None, args.name)
    say(f"removed profile {args.name!r} from {config.path}")
    _delete_secrets(args.name)
    forget_sign_in(args.name)
    if config.profiles and config.default_profile is None:
        say("there is no default profile now; choose one with `aadhelper profile default NAME`")
    notify_daemon()
    return 0


def _default(args: argparse.Namespace) -> int:
    from ..config_edit import set_default_profile

    config = set_default_profile(None, args.name)
    say(f"the default profile in {config.path} is now {args.name!r}")
    notify_daemon()
    return 0


def _git_url_add(args: argparse.Namespace) -> int:
    from ..config_edit import add_git_url

    config = add_git_url(None, args.name, args.url, args.username)
    profile = config.profile(args.name)
    mapping = next(g for g in profile.git_urls if g.url == normalize_git_url(args.url))
    say(f"git remotes under {mapping.url} now use profile {args.name!r} (username {git_user(profile, mapping)})")
    git_setup_hint(mapping.url)
    notify_daemon()
    return 0


def _git_url_remove(args: argparse.Namespace) -> int:
    from ..config_edit import remove_git_url

    remove_git_url(None, args.name, args.url)
    say(f"removed git URL {args.url} from profile {args.name!r}")
    notify_daemon()
    return 0


def _delete_secrets(name: str) -> None:
    from .. import secret_store

    try:
        store = secret_store.open_secret_store()
        deleted = [kind for kind in SECRET_KINDS if store.delete(name, kind)]
    except SecretStoreError as exc:
        warn(f"could not delete the stored secrets of profile {name!r}: {exc.one_line()}")
        return
    if deleted:
        say(f"deleted its {' and '.join(k.replace('_', ' ') for k in deleted)} from the OS keyring")


def git_user(profile: Profile, mapping: GitUrl) -> str:
    """The username git gets for ``mapping``, in words: a user profile sends the signed-in account, which only the
    sign-in knows (Profile.git_username's last resort is for a sign-in that carried no account name)."""
    return "the signed-in account" if _sends_account(profile, mapping) else profile.git_username(mapping)


def _sends_account(profile: Profile, mapping: GitUrl) -> bool:
    return profile.credential == "user" and not mapping.username


def _certificate_state(profile: Profile) -> tuple[dict[str, object] | None, str]:
    """A certificate profile's certificate (as ``summary.as_dict()``) and a one-line description, read from the
    keyring or the file; (None, the reason) when it cannot be read."""
    from .. import secret_store
    from ..certificates import load_certificate, read_certificate_file
    from ..errors import AadhelperError
    from ..secret_chunks import CERTIFICATE, CERTIFICATE_PASSWORD

    path = profile.certificate.path if profile.certificate else None
    try:
        store = secret_store.open_secret_store()
        if path is not None:
            certificate = load_certificate(read_certificate_file(path), store.get(profile.name, CERTIFICATE_PASSWORD),
                                           source=f"the certificate file {path}")
        else:
            stored = store.get(profile.name, CERTIFICATE)
            if stored is None:
                return None, f"none stored: run `aadhelper secret set {profile.name} --certificate FILE`"
            certificate = load_certificate(stored.reveal().encode("ascii"), checked=True, source="the stored one")
    except AadhelperError as exc:
        return None, exc.one_line()
    summary = certificate.summary()
    return summary.as_dict(), summary.describe(time.time())


def _certificate_rows(profile: Profile) -> list[tuple[str, str]]:
    if profile.certificate is None:
        return []
    settings = profile.certificate
    _, line = _certificate_state(profile)
    return [("certificate", settings.path or "in the OS keyring"), ("  state", line),
            ("assertion_alg", settings.assertion_alg), ("x5c", "yes" if settings.x5c else "no")]


def _certificate_json(profile: Profile) -> dict[str, Any]:
    if profile.certificate is None:
        return {}
    summary, line = _certificate_state(profile)
    return {"certificate_state": summary if summary is not None else {"error": line}}


def _profile_json(config: Config, profile: Profile) -> dict[str, Any]:
    data = {**profile.as_dict(), "default": profile.name == config.default_profile}
    # null: the signed-in account (see git_user), not the placeholder as_dict() would show.
    data["git_urls"] = [{"url": g.url, "username": None if _sends_account(profile, g) else profile.git_username(g)}
                        for g in profile.git_urls]
    return data


def _print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")

