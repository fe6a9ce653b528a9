"""The ``az`` shim's data, pure: which ``az`` command lines it answers and the JSON it prints. No I/O
(:mod:`aadhelper.cli.az` does that).

What the callers need (confirmed in azure-identity 1.27.0's ``AzureCliCredential`` and the Go, JS and .NET ones):

- They run ``az account get-access-token --output json --resource R [--tenant T] [--subscription S]`` (Go passes
  ``-o json``) with cwd ``/bin``, stdin closed and a 10 s timeout; scripts also use ``--scope S [S ...]``.
- stdout must be only the JSON object; Python reads ``accessToken`` and ``expires_on`` (``int()`` of it), else
  ``expiresOn`` (``%Y-%m-%d %H:%M:%S.%f`` local time, microseconds required); Go decodes ``expires_on`` into an
  int64, so it must be a JSON integer.
- On failure they show stderr; a message containing "az login" becomes azure-identity's fixed "Please run 'az
  login'", hiding ours, so no error line here says it.

Stdlib-only (``time``, ``binascii``): the shim is a thin-client path (tests/test_import_rules.py).
"""

from __future__ import annotations

import time

from ..errors import ConfigError, UsageError
from ..protocol import loads

TYPE_CHECKING = False  # not `from typing import ...`: the client path must not load typing (tests/test_import_rules.py)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

#: The examples of ``aadhelper az --help`` (below) and of the argparse tree's ``az`` (the man page: cli/tree.py).
EXAMPLES = ("aadhelper az account get-access-token --profile arm --resource https://management.azure.com",
            "aadhelper az install-shim ~/.local/lib/aadhelper-az --profile arm && "
            "export PATH=\"$HOME/.local/lib/aadhelper-az:$PATH\"")
#: All of ``aadhelper az --help``: the two command lines, and the examples.
USAGE = ("usage: aadhelper az [--profile PROFILE] account get-access-token [--resource RESOURCE | --scope SCOPE "
         "[SCOPE ...]] [--tenant TENANT | --subscription SUBSCRIPTION] [--output json]\n"
         "       aadhelper az install-shim --profile PROFILE [--force] DIR\n\nexamples:\n"
         + "\n".join(f"  {line}" for line in EXAMPLES))
_ANSWERS = "the aadhelper az shim answers only `az account get-access-token`"
_HINT = "see `aadhelper az --help`"


class AzCommand:
    """One parsed ``aadhelper az`` command line (a plain class: the client path must not import dataclasses)."""

    __slots__ = ("action", "directory", "force", "profile", "scopes", "subscription", "tenant")

    def __init__(self, action: str, profile: str | None) -> None:
        #: ``token`` (account get-access-token), ``install-shim`` or ``help``.
        self.action = action
        self.profile = profile
        self.scopes: list[str] | None = None
        self.tenant: str | None = None
        self.subscription: str | None = None
        self.directory: str | None = None
        self.force = False

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"AzCommand({fields})"


def parse(argv: Sequence[str]) -> AzCommand:
    """The command line after ``aadhelper az``; anything the shim does not answer is a one-line :class:`UsageError`
    naming the argument."""
    rest = list(argv)
    words: list[str] = []
    options: dict[str, list[str]] = {}
    flags: set[str] = set()
    while rest:
        arg = rest.pop(0)
        if arg in ("-h", "--help"):
            return AzCommand("help", None)
        if not arg.startswith("-") or arg == "-":
            words.append(arg)
            continue
        name, eq, value = arg.partition("=")
        if name.startswith("-o") and name != "-o":  # -ojson, as argparse reads a short option's value
            name, eq, value = "-o", "=", arg[2:]
        name = {"-o": "--output", "-t": "--tenant"}.get(name, name)
        if name in ("--only-show-errors", "--force"):
            if eq:
                raise UsageError(f"az: {name} takes no value", hint=_HINT)
            flags.add(name)
            continue
        if name not in ("--profile", "--output", "--resource", "--scope", "--tenant", "--subscription"):
            raise UsageError(f"az: unknown argument {arg!r}: {_ANSWERS} (with --resource, --scope, --tenant, "
                             "--subscription, --output json)", hint=_HINT)
        if name in options:
            raise UsageError(f"az: {name} given twice", hint=_HINT)
        values = [value] if eq else []
        if not eq:
            # --scope takes one or more values, as az's does; every other option exactly one.
            while rest and not rest[0].startswith("-") and (name == "--scope" or not values):
                values.append(rest.pop(0))
        if not values or not all(values):
            raise UsageError(f"az: {name} needs a value", hint=_HINT)
        options[name] = values

    profile = options.pop("--profile", [None])[0]
    if words[:1] == ["install-shim"]:
        return _install_shim(words, options, flags, profile)
    if words != ["account", "get-access-token"]:
        shown = " ".join(words) or "(no command)"
        raise UsageError(f"az: {shown!r} is not supported: {_ANSWERS}", hint=_HINT)
    if "--force" in flags:
        raise UsageError("az: unknown argument '--force' for account get-access-token", hint=_HINT)
    command = AzCommand("token", profile)
    output = options.pop("--output", ["json"])[0]
    if output != "json":
        raise UsageError(f"az: --output {output} is not supported: the shim prints json only", hint=_HINT)
    resource = options.pop("--resource", [None])[0]
    scopes = options.pop("--scope", None)
    if resource is not None and scopes is not None:
        raise UsageError("az: give only one of --resource and --scope", hint=_HINT)
    if resource is not None:
        scopes = [resource_scope(resource)]
    command.scopes = scopes
    command.tenant = options.pop("--tenant", [None])[0]
    command.subscription = options.pop("--subscription", [None])[0]
    if command.tenant is not None and command.subscription is not None:
        raise UsageError("az: give only one of --tenant and --subscription (as az says)", hint=_HINT)
    return command


def _install_shim(words: list[str], options: dict[str, list[str]], flags: set[str],
                  profile: str | None) -> AzCommand:
    if options:
        raise UsageError(f"az install-shim: unknown argument {next(iter(options))!r}", hint=_HINT)
    if "--only-show-errors" in flags:
        raise UsageError("az install-shim: unknown argument '--only-show-errors'", hint=_HINT)
    if len(words) != 2:
        raise UsageError("az install-shim: expected one directory", hint=_HINT)
    if profile is None:
        raise UsageError("az install-shim: --profile PROFILE is required (the shim answers for one profile)",
                         hint=_HINT)
    command = AzCommand("install-shim", profile)
    command.directory = words[1]
    command.force = "--force" in flags
    return command


def resource_scope(resource: str) -> str:
    """The scope az asks for a v1 resource: ``RESOURCE/.default``, always appended, so ARM's
    ``https://management.core.windows.net/`` becomes ``...net//.default`` exactly as in az and MSAL."""
    return resource + "/.default"


def token_tenant(token: str) -> str | None:
    """The ``tid`` claim of a JWT access token (what az prints as ``tenant``: a GUID even when the profile names
    its tenant by domain or as ``organizations``); None for a token that is not a JWT carrying one."""
    import binascii

    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1].replace("-", "+").replace("_", "/")
    try:
        data = binascii.a2b_base64(payload + "=" * (-len(payload) % 4))
        # Not even an object (an opaque token that happens to hold two dots): no parse, whose error path would
        # import the json package on this thin path.
        if not (data.startswith(b"{") and data.rstrip().endswith(b"}")):
            return None
        claims = loads(data)
    except (ValueError, RecursionError):  # binascii.Error is a ValueError
        return None
    tid = claims.get("tid") if isinstance(claims, dict) else None
    return tid if isinstance(tid, str) and tid else None


def check_tenant(requested: str, profile: str, tenants: Sequence[str | None]) -> None:
    """``--tenant`` must name the tenant the profile's token is from (its configured tenant or the token's
    ``tid``, case-insensitively): the shim serves one profile and never a token of another tenant."""
    known = [tenant for tenant in tenants if tenant]
    if requested.casefold() in (tenant.casefold() for tenant in known):
        return
    mine = " / ".join(dict.fromkeys(known)) or "unknown"
    raise ConfigError(f"az: --tenant {requested} asked, but profile {profile!r} gets tokens of tenant {mine}",
                      profile=profile, hint="point the shim at a profile of that tenant "
                      "(`aadhelper az install-shim --profile NAME DIR`)")


def local_time(epoch: int) -> str:
    """``expiresOn`` as az prints it: local time with microseconds (``datetime.fromtimestamp(...)`` in az)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) + ".000000"


def access_token(token: str, token_type: str, expires_on: int, tenant: str | None,
                 subscription: str | None) -> dict[str, Any]:
    """The object ``az account get-access-token --output json`` prints (az leaves ``subscription`` out for
    ``--tenant``; the shim knows no subscriptions, so only an asked one is echoed)."""
    reply: dict[str, Any] = {"accessToken": token, "expiresOn": local_time(expires_on), "expires_on": expires_on}
    if subscription is not None:
        reply["subscription"] = subscription
    if tenant is not None:
        reply["tenant"] = tenant
    reply["tokenType"] = token_type
    return reply


def shim_script(command: Sequence[str], profile: str) -> str:
    """The ``az`` shell script: ``exec`` this installation's aadhelper (absolute path) for ``profile``."""
    import shlex  # install-shim only, never the shim's own calls

    # Every word quoted (the profile too: whatever it holds stays one argument and never becomes shell code).
    words = " ".join(shlex.quote(word) for word in (*command, "az", "--profile", profile))
    return (f"#!/bin/sh\n{SHIM_MARKER}\n"
            "# Answers `az account get-access-token` with the profile's token from the aadhelper daemon.\n"
            f'exec {words} "$@"\n')


#: The second line of every shim: install-shim replaces only files that carry it (never a real az) unless --force.
SHIM_MARKER = "# aadhelper az shim (written by `aadhelper az install-shim`; `aadhelper az --help`)"
