"""``aadhelper exec PROFILE [--scope S ...] -- CMD [ARG ...]``: run CMD with a managed-identity endpoint of its own.

CMD gets ``IDENTITY_ENDPOINT``/``IDENTITY_HEADER`` pointing at a private loopback endpoint that speaks the App
Service managed-identity protocol (:mod:`aadhelper.mi_endpoint`), backed by the daemon, so Azure SDKs in CMD use
the daemon's cached tokens of PROFILE with no change to their code. No token or secret of the profile goes into
CMD's environment or argv: only the endpoint's address and its per-exec secret.

The process around CMD behaves as a shell running a foreground command would (or ``env``, ``sudo``):

* CMD stays in exec's process group, so it keeps the terminal: it can read it, Ctrl-C and Ctrl-Z reach it (and
  exec) straight from the terminal, and job control (``fg``, ``bg``) moves both together.
* SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to exec are forwarded to CMD; exec does not die of them but waits for
  CMD. A signal the terminal sent (``si_code`` SI_KERNEL: Ctrl-C, a hang-up) already reached CMD, which shares exec's
  process group, so it is not sent a second time; nor is one CMD sent to exec.
* exec exits with CMD's exit status, or 128 + N when CMD died of signal N (a shell's ``$?``); 127 when CMD is not
  found, 126 when it cannot be run. The endpoint stops answering when CMD exits (its port then refuses).

The signals are blocked in exec (before any endpoint thread exists, so no thread takes one) and collected with
``sigtimedwait``, which also says who sent each; CMD starts with an empty signal mask and default dispositions
for the signals Python ignores (SIGPIPE, SIGXFSZ), as a shell would give it.

``--az-shim`` also puts an ``az`` first on CMD's PATH that answers ``az account get-access-token`` with PROFILE's
tokens (:func:`aadhelper.cli.az.write_az_shim`), for what in CMD shells out to the Azure CLI (AzureCliCredential,
scripts): it lives in a private temporary directory (0700, :func:`child_path_dirs`) removed when exec ends, and a
CMD named without a slash is looked up on CMD's PATH, so ``-- az ...`` itself runs the shim.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator, Sequence

from .. import client, protocol
from ..config import load_config
from ..errors import UsageError
from .common import say

USAGE = "aadhelper exec PROFILE [--scope SCOPE ...] [--az-shim] -- CMD [ARG ...]"
#: Signals forwarded to CMD (SIGQUIT too: a Ctrl-backslash that CMD handles, e.g. a JVM's thread dump, must not
#: kill exec and its endpoint under CMD); SIGCHLD only wakes the wait.
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
#: Signals Python ignores in itself that CMD must get with their default action again (subprocess's restore_signals).
RESTORED = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, name))
#: ``si_code`` of a signal the kernel sent (the terminal's Ctrl-C, hang-up): CMD, in our process group, got it too.
SI_KERNEL = 0x80
#: Seconds between two checks of CMD while no signal arrives (SIGCHLD normally wakes the wait at once).
WAIT_POLL = 1.0
#: Exit statuses a shell uses when the command cannot be found or run.
NOT_FOUND, NOT_EXECUTABLE = 127, 126


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    helps = "run a command with a managed-identity endpoint for Azure SDKs, backed by the daemon"
    parser = sub.add_parser("exec", help=helps, usage=USAGE, description=(
        helps + ". CMD gets IDENTITY_ENDPOINT and IDENTITY_HEADER (App Service protocol, 127.0.0.1 only, a fresh "
        "secret per run); ManagedIdentityCredential and DefaultAzureCredential in CMD then get PROFILE's tokens. "
        "exec exits with CMD's status."))
    parser.add_argument("profile", help="profile whose identity CMD uses")
    parser.add_argument("--scope", action="append", metavar="SCOPE",
                        help="serve only these scopes' resources (repeatable; e.g. https://management.azure.com/"
                             ".default); default: any resource the profile's app may use")
    parser.add_argument("--az-shim", action="store_true",
                        help="also put an `az` first on CMD's PATH that answers `az account get-access-token` with "
                             "PROFILE's tokens (AzureCliCredential, scripts); removed when exec ends")
    # Shown in --help and the man page, and parsed (the examples are held to the parser); run_exec takes CMD from
    # after `--` itself, before argparse could read CMD's own options as exec's.
    parser.add_argument("command", nargs="*", metavar="CMD", help="the command to run, after `--`")
    parser.set_defaults(func=lambda args: _missing_command())


def run_exec(argv: Sequence[str], build_parser: Callable[[], argparse.ArgumentParser]) -> int:
    """``aadhelper exec ARGV``: the options before ``--`` are parsed by the argparse application ``build_parser``
    makes (usage errors, ``--help``), the words after it are CMD, untouched (argparse would take CMD's own options
    for exec's). The dispatcher passes ``build_parser`` in: this verb importing the application would be a cycle."""
    argv = list(argv)
    if "--" in argv:
        split = argv.index("--")
        options, command = argv[:split], argv[split + 1:]
    else:
        options, command = argv, []
    args = build_parser().parse_args(["exec", *options])  # --help exits here; bad options raise UsageError
    if not command:
        _missing_command()
    return execute(args.profile, args.scope, command, az_shim=args.az_shim)


def _missing_command() -> int:
    raise UsageError("exec: no command: put it after `--`", hint=f"usage: {USAGE}")


@contextlib.contextmanager
def child_path_dirs(profile: str, *, az_shim: bool) -> Iterator[list[str]]:
    """Directories to put first on CMD's PATH while it runs: with ``az_shim``, a private temporary one (0700, as
    mkdtemp makes it) holding the ``az`` shim of ``profile``, removed on exit whatever happens."""
    if not az_shim:
        yield []
        return
    from .az import write_az_shim

    with tempfile.TemporaryDirectory(prefix="aadhelper-az-shim-") as directory:
        write_az_shim(directory, profile)
        yield [directory]


def execute(profile_name: str, scopes: list[str] | None, command: list[str], *, az_shim: bool = False) -> int:
    """Run ``command`` with the endpoint of ``profile_name``; CMD's exit status (module docstring)."""
    # Here, not at the top: every other command builds the parser, which imports this module (~3 ms saved on each,
    # bench row 7's daemon start among them).
    from ..mi_endpoint import Endpoint, child_environment

    profile = load_config().profile(profile_name)  # an unknown profile fails here, before CMD runs
    client.call(protocol.request("ping"), autostart=True)  # likewise a daemon that cannot start
    wanted = {*FORWARDED, signal.SIGCHLD}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    try:
        with (Endpoint(profile.name, client_id=profile.client_id, scopes=scopes) as endpoint,
              child_path_dirs(profile.name, az_shim=az_shim) as extra):
            env = child_environment(os.environ, endpoint.url, endpoint.secret)
            program = command[0]
            if extra:
                env["PATH"] = os.pathsep.join([*extra, env.get("PATH", os.defpath)])
                # posix_spawnp searches exec's own PATH, not the one CMD is given.
                if os.sep not in program:
                    program = shutil.which(program, path=env["PATH"]) or program
            try:
                pid = os.posix_spawnp(program, command, env, setsigmask=(), setsigdef=RESTORED)
            except FileNotFoundError:
                say(f"exec: {command[0]}: command not found")
                return NOT_FOUND
            except OSError as exc:
                say(f"exec: {command[0]}: {exc.strerror or exc}")
                return NOT_EXECUTABLE
            status = _wait(pid, wanted)
        # The endpoint is closed here: the port refuses before exec reports CMD's status.
    finally:
        # Consume what arrived after CMD's end: unblocked, a pending SIGINT would become a KeyboardInterrupt and
        # replace CMD's status by "cancelled".
        while signal.sigtimedwait(wanted, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return _exit_status(status)


def _wait(pid: int, wanted: set[signal.Signals]) -> int:
    """CMD's wait status, forwarding signals to it meanwhile."""
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        info = signal.sigtimedwait(wanted, WAIT_POLL)
        if info is None or info.si_signo == signal.SIGCHLD:
            continue
        if info.si_code == SI_KERNEL or info.si_pid == pid:
            continue  # the terminal's signal reached CMD already; CMD's own is not echoed back to it
        with contextlib.suppress(ProcessLookupError):  # CMD exited meanwhile: the next waitpid collects it
            os.kill(pid, info.si_signo)


def _exit_status(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code
