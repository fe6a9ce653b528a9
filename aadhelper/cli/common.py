"""What the CLI's verbs share (aws-vault's ``cli/global.go``): loading a profile of an expected kind, telling a
running daemon to reload, and the lines the commands print on stderr. Verbs import this, never another verb."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ..config import Profile, load_config
from ..errors import AadhelperError, ConfigError, SecretStoreError, UsageError

# What a profile of each credential kind does instead, and how to give it its credential.
_CREDENTIAL_USE = {
    "client_secret": ("uses a client secret, not a user sign-in",
                      "store the secret with `aadhelper secret set {name}`, or add the profile again with --user"),
    "user": ("signs in as a user and uses no client secret", "sign in with `aadhelper login {name}`"),
    "certificate": ("proves itself with a certificate, not a client secret",
                    "store it with `aadhelper secret set {name} --certificate FILE`"),
    "federated": ("proves itself with a federated token from another identity provider (token_file or "
                  "token_command), not a client secret or sign-in", "see `aadhelper profile show {name}`"),
    "managed_identity": ("uses the machine's managed identity: no secret and no sign-in",
                         "there is nothing to set up here: `aadhelper token {name}` asks the machine's identity"),
}


def load_profile(name: str | None, credential: str) -> Profile:
    """Profile ``name`` (None: the default) from the config file; it must use ``credential``, else a ConfigError
    saying what it uses instead and how to set that up."""
    config = load_config()
    profile = config.profile(name)
    if profile.credential != credential:
        uses, fix = _CREDENTIAL_USE.get(profile.credential, (f"is not {credential!r}",
                                                            "see `aadhelper profile show {name}`"))
        raise ConfigError(f"{config.path}: profile {profile.name!r}: key 'credential' is {profile.credential!r}, "
                          f"which {uses}", profile=profile.name, hint=fix.format(name=profile.name))
    return profile


def require_persistent_store(what: str) -> None:
    """Refuse to store ``what`` when ``AADHELPER_SECRET_STORE=memory``: that store lives in the memory of the process
    that opens it, so this command would report it stored and lose it at exit (the daemon cannot see it either)."""
    from ..secret_store import STORE_ENV, store_kind

    if store_kind() == "memory":
        raise ConfigError(f"{STORE_ENV}=memory keeps secrets only in the memory of the process that stores them: "
                          f"{what} would be lost when this command exits",
                          hint=f"unset {STORE_ENV} to use the OS keyring (memory is for tests and `aadhelper demo`)")


def delete_stored(name: str, kinds: Sequence[str], what: str, profile_check: Callable[[], object]) -> list[str]:
    """Delete ``kinds`` of profile ``name`` from the keyring; the kinds that were there.

    ``profile_check`` raises the ConfigError of an unknown or wrong-kind profile. It is raised (exit 3, as every
    other command) only when nothing was stored: a leftover of a profile removed or changed by hand is still
    cleaned up, with a note saying so."""
    from ..secret_store import open_secret_store

    problem: ConfigError | None = None
    try:
        profile_check()
    except ConfigError as exc:
        problem = exc
    try:
        store = open_secret_store()
        deleted = [kind for kind in kinds if store.delete(name, kind)]
    except SecretStoreError:
        if problem is not None:
            raise problem from None  # the profile's problem is the one to fix first
        raise
    if problem is not None:
        if not deleted:
            raise problem
        say(f"note: {problem.message}; deleted its leftover {what} all the same")
    return deleted


def forget_sign_in(name: str) -> None:
    """Drop the recorded account of a signed-out or removed profile (aadhelper.accounts); a failure only warns."""
    from .. import accounts

    try:
        accounts.forget(name)
    except OSError as exc:
        warn(f"could not update {accounts.file_path()}: {exc.strerror or exc}")


def credential_state(profile: Profile) -> dict[str, Any]:
    """What `status` and `profile show` say about a profile's credential, never its value: ``stored`` (True,
    False, or None when this process cannot tell), ``text`` (that in words), and for a user profile ``account``
    and ``tenant`` of the recorded sign-in (None: unknown)."""
    from .. import accounts
    from ..secret_chunks import CLIENT_SECRET, REFRESH_TOKEN
    from ..secret_store import STORE_ENV, open_secret_store, store_kind

    kind = {"client_secret": CLIENT_SECRET, "user": REFRESH_TOKEN}.get(profile.credential)
    state: dict[str, Any] = {"stored": None, "text": None}
    if profile.credential == "user":
        sign_in = accounts.sign_in_of(profile.name) or {}
        state.update(account=sign_in.get("account"), tenant=sign_in.get("tenant"))
    if kind is None:
        return state  # a credential kind with nothing of ours in the keyring
    what = "client secret" if kind == CLIENT_SECRET else "sign-in (refresh token)"
    if store_kind() == "memory":
        state["text"] = f"unknown here ({STORE_ENV}=memory: only the daemon's memory holds the {what})"
        return state
    try:
        stored = open_secret_store().get(profile.name, kind) is not None
    except SecretStoreError as exc:
        state["text"] = f"cannot tell: {exc.message}"
        return state
    state["stored"] = stored
    state["text"] = f"{what} stored in the OS keyring" if stored else f"no {what} stored"
    if profile.credential == "user" and stored and state.get("account"):
        tenant = f" (tenant {state['tenant']})" if state.get("tenant") else ""
        state["text"] = f"signed in as {state['account']}{tenant}; {state['text']}"
    elif profile.credential == "user" and not stored:
        state["text"] = f"not signed in: `aadhelper login {profile.name}`"
    elif not stored:
        state["text"] += f": `aadhelper secret set {profile.name}`"
    return state


def notify_daemon(profile: str | None = None) -> None:
    """Tell a running daemon to reload (all profiles, or one); no daemon is fine, a failure only a warning."""
    from .. import client

    try:
        if client.reload(profile):
            say("the running daemon reloaded its configuration")
    except AadhelperError as exc:
        warn(f"the running daemon did not reload: {exc.one_line()}; restart it to pick up the change")


#: Seconds to wait for one systemctl call (the user manager answers in milliseconds, or not at all).
SYSTEMCTL_TIMEOUT = 30.0
#: The unit names of `aadhelper service install`.
SOCKET_UNIT = "aadhelper.socket"
SERVICE_UNIT = "aadhelper.service"


def systemctl(*args: str) -> subprocess.CompletedProcess[str]:
    """``systemctl ARGS`` (output captured); a missing systemctl is exit code 127, as a shell says, and one that
    does not answer in time 124, as timeout(1) says."""
    path = shutil.which("systemctl")
    if path is None:
        return subprocess.CompletedProcess(["systemctl", *args], 127, "", "systemctl: not found")
    try:
        return subprocess.run([path, *args], capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess([path, *args], 124, "", f"no answer within {SYSTEMCTL_TIMEOUT:g} s")


def user_manager_answers(run: Callable[..., subprocess.CompletedProcess[str]] = systemctl) -> bool:
    """Whether a systemd user manager answers ``systemctl --user`` (none in containers, cron, many SSH sessions)."""
    return run("--user", "show-environment").returncode == 0


def systemctl_failure(result: subprocess.CompletedProcess[str]) -> str:
    """systemctl's own last line about a failure, for our one-line error."""
    lines = (result.stderr or result.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit {result.returncode}"


def say(line: str) -> None:
    sys.stderr.write(f"aadhelper: {line}\n")


def warn(line: str) -> None:
    say(f"warning: {line}")


def help_handler(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def show_help(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return show_help


def read_certificate_input(path: str, label: str = "--certificate") -> bytes:
    """The bytes of a certificate file named on the command line (or by ``AZURE_CLIENT_CERTIFICATE_PATH`` for
    ``profile add --from-env``: ``label`` says which), at most :data:`~aadhelper.certificates.MAX_CERTIFICATE_BYTES`;
    a usage error naming ``label`` and the path otherwise."""
    from ..certificates import MAX_CERTIFICATE_BYTES

    try:
        with open(path, "rb") as file:
            data = file.read(MAX_CERTIFICATE_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"{label} {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_CERTIFICATE_BYTES:
        raise UsageError(f"{label} {path}: over {MAX_CERTIFICATE_BYTES} bytes; is it the right file?")
    return data
