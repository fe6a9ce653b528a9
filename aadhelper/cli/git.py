"""The git credential helper: ``git-credential-aadhelper ACTION`` and ``aadhelper git-credential ACTION``.

Configure it with ``git config --global credential.helper aadhelper`` (git then runs
``git-credential-aadhelper get|store|erase``). Actions:

* ``get``: asks the daemon for a token for the remote URL (the daemon picks the profile by its git URL
  prefixes, longest wins) and prints it in the form this git understands. A URL no profile maps, or a
  non-HTTP(S) request, prints nothing and exits 0, so git asks its next helper. A missing daemon is started
  as for ``aadhelper header`` (unless autostart is off). Any other failure (login required, authority down,
  ...) prints one line on stderr and exits with that error's code: git then treats the helper as having
  nothing and moves on, and the user sees why.
* ``erase`` (git sends it after the server refused the credential with 401): tells the daemon to drop the
  cached token for that URL, so the next ``get`` returns a freshly issued one. It drops it whatever
  password git names, as Git Credential Manager does: git erases only after the server refused what it
  sent for this URL, comparing would cost a token request when nothing is cached, and a needless drop
  costs one token request. Git 2.39 does not retry within the same command after a 401: the next git
  command gets the fresh token. Silent, exit 0, also when no profile maps the URL or no daemon runs
  (then nothing is cached).
* ``store`` and unknown actions: read and discard stdin, print nothing, exit 0 (git adds actions over
  time; helpers must ignore the ones they do not know).

Whatever arrives on stdin (garbage, NUL bytes, invalid UTF-8, over-long lines, no blank line at the end) and
whatever happens to stdout (closed, full, git gone: EPIPE), the helper ends with one line on stderr and an
exit code, never a traceback. A remote URL too long for the daemon's request limit is refused before any
connection, with the same error whether a daemon runs or not.

stdout carries only the dialogue; ``--verbose`` or ``AADHELPER_GIT_VERBOSE=1`` adds diagnostics on stderr
(never a token). This is the hot path of every git HTTP request: it must not import argparse, trio, httpx,
keyring or platformdirs (argparse only for ``register``, which the full CLI calls).
"""

from __future__ import annotations

import os
import sys

from .. import client, git_helper
from ..errors import AadhelperError, DaemonNotRunning, NoProfileForUrl, UsageError

TYPE_CHECKING = False  # not `from typing import ...`: the client path must not load typing (tests/test_import_rules.py)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import BinaryIO

USAGE = "usage: git-credential-aadhelper [--verbose] get|store|erase"
VERBOSE_ENV = "AADHELPER_GIT_VERBOSE"


def run_git_credential(args: list[str]) -> int:
    """The ``git-credential-aadhelper`` command line: ``[-v|--verbose] ACTION``."""
    verbose = False
    actions: list[str] = []
    for arg in args:
        if arg in ("-v", "--verbose"):
            verbose = True
        elif arg in ("-h", "--help"):
            sys.stdout.write(USAGE + "\n")
            return 0
        elif arg.startswith("-") and arg != "-":
            raise UsageError(f"git-credential-aadhelper: unknown option {arg!r}", hint=USAGE)
        else:
            actions.append(arg)
    if len(actions) != 1:
        raise UsageError("git-credential-aadhelper: expected one action (get, store or erase)", hint=USAGE)
    return serve(actions[0], verbose=verbose)


def serve(action: str, *, verbose: bool = False) -> int:
    """Run one git credential action on this process's stdin/stdout; the exit code."""
    verbose = verbose or os.environ.get(VERBOSE_ENV, "") not in ("", "0")
    log = _stderr_log if verbose else _no_log
    stdin = sys.stdin.buffer if sys.stdin is not None else None
    if action == "get":
        reply = answer_get(git_helper.parse(git_helper.read_request(stdin)), log)
        if reply:
            _write_to_git(reply)
    elif action == "erase":
        erase(git_helper.parse(git_helper.read_request(stdin)), log)
    else:
        log(f"git-credential {action}: nothing to do")
        _drain(stdin)
    return 0


def answer_get(request: git_helper.CredentialRequest, log: Callable[[str], None]) -> bytes:
    """The reply to ``get``: empty when aadhelper has nothing for this request (git asks the next helper)."""
    if not request.is_http_remote:
        log(f"get: not an HTTP(S) remote (protocol {request.protocol!r}); leaving it to other helpers")
        return b""
    url = request.url()
    try:
        reply = client.get_token(url=url, autostart=True)
    except NoProfileForUrl:
        hint = "" if request.path else " (git sent no path: set credential.useHttpPath=true for path mappings)"
        log(f"get: no profile maps {url}{hint}; leaving it to other helpers")
        return b""
    expires_on = reply.get("expires_on")
    if isinstance(expires_on, bool) or not isinstance(expires_on, (int, float)):
        expires_on = None
    username = reply.get("username")
    token_type = reply["token_type"]
    out = git_helper.format_get_reply(
        request, token=reply["access_token"], token_type=token_type, expires_on=expires_on,
        username=username if isinstance(username, str) else None)
    form = "Bearer credential" if git_helper.uses_bearer(request, token_type) else "Basic password"
    log(f"get: {url} -> profile {reply.get('profile')!r}, as {form}, expires_on {expires_on}")
    return out


def erase(request: git_helper.CredentialRequest, log: Callable[[str], None]) -> None:
    """Drop the daemon's cached token for the request's URL, if any profile maps it and a daemon runs."""
    if not request.is_http_remote:
        return
    url = request.url()
    try:
        dropped = client.invalidate(url=url)
    except (NoProfileForUrl, DaemonNotRunning) as exc:
        log(f"erase: nothing to drop for {url} ({exc.code})")
        return
    log(f"erase: dropped {dropped} cached token(s) for {url}")


def _write_to_git(reply: bytes) -> None:
    """Write the answer on stdout; git having gone away (EPIPE) or stdout closed or full is one clear error."""
    out = sys.stdout
    if out is None:  # started with fd 1 closed
        raise AadhelperError("cannot answer git: the helper's stdout is closed")
    try:
        out.buffer.write(reply)
        out.flush()
    except OSError as exc:
        # What could not be written stays in the buffer, and the interpreter's last flush at exit would fail again
        # with a second message: from now on stdout writes to /dev/null.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, out.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass  # nothing more to lose: the answer is already gone
        reason = "git closed the pipe" if isinstance(exc, BrokenPipeError) else os.strerror(exc.errno or 0)
        raise AadhelperError(f"cannot answer git on stdout: {reason}") from None


def _drain(stream: BinaryIO | None) -> None:
    # Git writes the whole request before reading anything; consuming it spares git a broken pipe.
    if stream is not None:
        while stream.read(65536):
            pass


def _stderr_log(message: str) -> None:
    sys.stderr.write(f"aadhelper: {message}\n")
    sys.stderr.flush()


def _no_log(message: str) -> None:
    pass


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``aadhelper git-credential ACTION`` (the same helper, for ``credential.helper="!aadhelper ..."``)."""
    parser = sub.add_parser(
        "git-credential",
        help="git credential helper (configure: git config --global credential.helper aadhelper)",
        description="Answer git's credential requests (get/store/erase on stdin) with tokens from the daemon.",
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help=f"diagnostics on stderr (also {VERBOSE_ENV}=1)")
    parser.add_argument("action", help="get, store or erase (other actions are ignored)")
    parser.set_defaults(func=_handle)


def _handle(args: argparse.Namespace) -> int:
    return serve(str(args.action), verbose=bool(args.verbose))
