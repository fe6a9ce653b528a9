"""``aadhelper az``: an ``az`` for programs that shell out to the Azure CLI for a token.

``aadhelper az --profile PROFILE account get-access-token [--resource R | --scope S ...] [--tenant T |
--subscription S] [--output json]`` prints what ``az`` prints, with the daemon's token; every other ``az`` command
line is refused with one line naming the argument (exit 2). ``aadhelper az install-shim --profile PROFILE DIR``
writes ``DIR/az`` (0755), a shell script running ``aadhelper az --profile PROFILE "$@"`` by this installation's
absolute path, so AzureCliCredential and scripts that find ``az`` on PATH get aadhelper instead;
:func:`write_az_shim` is the same for other commands (``aadhelper exec --az-shim``).

Decisions where az and aadhelper differ: no ``--resource``/``--scope`` means the profile's scopes (not ARM's);
``--tenant`` must be the profile's tenant (its configured name or the token's ``tid``), since a profile's tokens
come from one tenant; ``--subscription`` is accepted and echoed (the token does not depend on it: az only uses
it to pick the tenant). A thin-client path: the token call imports nothing beyond ``aadhelper token``'s modules,
``time`` and ``binascii`` (tests/test_import_rules.py).
"""

from __future__ import annotations

import os
import sys

from .. import client
from ..protocol import dumps
from . import az_format

TYPE_CHECKING = False  # not `from typing import ...`: the client path must not load typing (tests/test_import_rules.py)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

SHIM_NAME = "az"


def run(argv: Sequence[str]) -> int:
    """``aadhelper az ARGS`` (``argv`` without ``az``)."""
    command = az_format.parse(argv)
    if command.action == "help":
        sys.stdout.write(az_format.USAGE + "\n")
        return 0
    if command.action == "install-shim":
        assert command.profile is not None and command.directory is not None
        return install_shim(command.directory, command.profile, force=command.force)
    return get_access_token(command)


def get_access_token(command: az_format.AzCommand) -> int:
    reply = client.get_token(command.profile, scopes=command.scopes, autostart=True)
    token: str = reply["access_token"]
    expires_on = client.check_expiry(reply)
    configured = reply.get("tenant")
    tid = az_format.token_tenant(token)
    if command.tenant is not None:
        az_format.check_tenant(command.tenant, str(reply.get("profile") or command.profile),
                               [configured if isinstance(configured, str) else None, tid])
    tenant = tid or (configured if isinstance(configured, str) else None)
    sys.stdout.write(dumps(az_format.access_token(token, reply["token_type"], expires_on, tenant,
                                                  command.subscription)) + "\n")
    sys.stdout.flush()
    return 0


def write_az_shim(directory: str, profile: str, *, force: bool = False) -> str:
    """Write ``DIR/az`` (mode 0755) running this installation's ``aadhelper az --profile PROFILE "$@"``; its path.

    ``directory`` is created if missing. An ``az`` there that is not an aadhelper shim (a real Azure CLI) is
    refused with :class:`ConfigError` unless ``force``. Written to a temporary name and renamed: a caller running
    ``az`` meanwhile sees the old file or the new one, never half of one.
    """
    from .. import paths
    from ..errors import ConfigError

    directory = os.path.abspath(directory)
    path = os.path.join(directory, SHIM_NAME)
    try:
        os.makedirs(directory, exist_ok=True)
        if not force and os.path.lexists(path) and not _is_shim(path):
            raise ConfigError(f"{path} exists and is not an aadhelper az shim (a real Azure CLI?)",
                              hint="choose another directory, or pass --force to replace it")
        # 0755 exactly, not through the umask: the shim must be executable by its callers.
        paths.write_file_atomically(path, az_format.shim_script(paths.console_script(), profile), mode=0o755)
    except OSError as exc:
        raise ConfigError(f"cannot write the az shim in {directory}: {exc.strerror or exc}") from None
    return path


def _is_shim(path: str) -> bool:
    try:
        with open(path, "rb") as existing:
            return az_format.SHIM_MARKER.encode() in existing.read(4096)
    except OSError:
        return False


def install_shim(directory: str, profile: str, *, force: bool = False) -> int:
    """``aadhelper az install-shim``: check the profile exists, write the shim, say how to use it."""
    from ..config import load_config

    load_config().profile(profile)  # an unknown profile: one line naming the config file, now rather than later
    path = write_az_shim(directory, profile, force=force)
    sys.stderr.write(f"aadhelper: wrote {path}: `az account get-access-token` now answers with profile {profile!r} "
                     f"for every program that finds this az first on PATH "
                     f"(export PATH=\"{os.path.dirname(path)}:$PATH\")\n")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``az`` to the help listing; its command line is az's, so it is read by :func:`run` in any case."""
    import argparse

    helps = "answer `az account get-access-token` with a profile's token (and `az install-shim` to put it on PATH)"
    parser = sub.add_parser("az", help=helps, description=helps, add_help=False)
    parser.add_argument("args", nargs=argparse.REMAINDER)
    parser.set_defaults(func=lambda args: run(args.args))
