"""Workload identity federation (``credential = "federated"``): the app proves itself with a JWT another identity
provider issued (Kubernetes' projected service-account token, a CI job's OIDC token), posted as the client
assertion of the client-credentials grant (:data:`~aadhelper.grants.client_credentials.JWT_BEARER`).

Where the assertion comes from, per profile:

* ``token_file``: read afresh at every exchange, never cached, because its writer rotates it (the kubelet
  renews a projected token at 80 % of its life; azure-identity re-reads at most every 600 s, we read it each time:
  an exchange is rare and the read is a few microseconds). Opened without blocking on a FIFO, regular files only,
  at most :data:`MAX_ASSERTION_BYTES`.
* ``token_command``: run at every exchange, without a shell, stdin closed, in a session of its own, for at most
  :data:`COMMAND_TIMEOUT` seconds (then its whole process group is killed); stdout (at most
  :data:`MAX_ASSERTION_BYTES`) is the assertion; on failure its stderr's last words (one line, truncated) are in
  the error.

The assertion must look like a JWT (three base64url parts, a JSON header) before it is posted. Every way of not
getting one (no such file, an empty one, a command that fails or hangs, something that is no JWT) is one line
naming the file or the command, never the token, raised as :class:`~aadhelper.errors.AuthorityUnavailable`:
the assertion's issuer (the kubelet, the CI's OIDC endpoint) is an authority too, and what it failed to provide
may be there a moment later, so the cache retries with its backoff and requests in between fail fast with this
line. Entra's refusals of the token itself (no matching federated credential, expired, bad signature: see
:data:`_REFUSALS`) are :class:`~aadhelper.errors.FederationRefused`, retried with backoff too: they are fixed in
the app registration or at the token's issuer, which no profile change would signal (a wrong client secret, by
contrast, sticks until ``secret set``). A profile with neither setting (``AZURE_FEDERATED_TOKEN_FILE`` unset
where the config was parsed) is a :class:`~aadhelper.errors.ConfigError`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shlex
import signal
import stat
import subprocess
import time
from functools import partial
from typing import Any

import trio

from ..config import FEDERATED_TOKEN_FILE_VARIABLE, FEDERATION_AUDIENCE, Profile
from ..errors import AuthenticationFailed, AuthorityUnavailable, ConfigError, FederationRefused
from ..tokens import TokenResponse, wipe
from .client_credentials import AppCredentialSource, assertion_proof
from .http import unverified_claims

#: Longest a token command may run (seconds): azure-identity gives `az` 10 s; an OIDC endpoint answers in < 1 s.
COMMAND_TIMEOUT = 10.0
#: Largest assertion read from a file or a command's stdout: a projected service-account token or a GitHub
#: Actions token is 1-2 KiB; anything much bigger is not one, and is not held in memory.
MAX_ASSERTION_BYTES = 64 * 1024
#: Bytes of a failed command's stderr kept (the rest is drained unread), and characters of it shown.
_STDERR_KEPT = 4096
_STDERR_SHOWN = 200
#: Entra's refusals of a federated token, and what fixes each: all are fixed outside aadhelper (module docstring).
_REFUSALS: dict[int, str] = {
    70021: "no federated credential of the app registration matches the token's issuer: add one with the token's "
           f"issuer, subject and audience {FEDERATION_AUDIENCE}",
    700211: "no federated credential of the app registration matches the token's issuer: add one with the token's "
            f"issuer, subject and audience {FEDERATION_AUDIENCE}",
    700212: f"the token's audience must be {FEDERATION_AUDIENCE} (or one the federated credential lists)",
    700213: "the federated credential's subject must match the token's exactly (case-sensitive)",
    7002137: "the federated credential's subject must match the token's exactly (case-sensitive)",
    7002138: "the federated credential's subject must match the token's exactly (case-sensitive)",
    700024: "the token has expired: its issuer (the kubelet, the token command) should renew it",
    700027: "the token's signature does not verify with the keys its issuer publishes: is it from that issuer?",
    50166: "Entra cannot reach the token issuer's discovery document or keys: check the issuer URL",
}
_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_RETRY = "aadhelper retries with backoff"


class FederatedSource(AppCredentialSource):
    """Proof by an assertion from another issuer, read from ``token_file`` or printed by ``token_command``."""

    async def proof(self) -> dict[str, str]:
        profile = self._profile
        if profile.token_command is not None:
            what = f"the federated token command {_shown_command(profile.token_command)}"
            raw = await run_token_command(profile.token_command, what, profile.name)
        elif profile.token_file is not None:
            what = f"the federated token file {profile.token_file}"
            raw = await trio.to_thread.run_sync(read_token_file, profile.token_file, what, profile.name)
        else:
            raise _no_source(profile)
        try:
            return assertion_proof(jwt_assertion(raw, what, profile.name))
        finally:
            wipe(raw)  # these bytes are ours to clear (the str made of them cannot be)

    async def state(self) -> dict[str, Any]:
        """What ``status`` shows (``federated``): the token file, when it was written and whose assertion it holds
        until when (its claims, never the token), with ``error`` when the next exchange would fail on it; or the
        token command (not run for a status: it may ask a CI's OIDC endpoint for a token each time)."""
        profile = self._profile
        if profile.token_command is not None:
            return {"federated": {"token_command": shlex.join(profile.token_command)}}
        if profile.token_file is None:
            return {"federated": {}, "error": _no_source(profile).to_wire()}
        what = f"the federated token file {profile.token_file}"
        shown: dict[str, Any] = {"token_file": profile.token_file}
        try:
            raw = await trio.to_thread.run_sync(read_token_file, profile.token_file, what, profile.name)
            shown["written"] = os.stat(profile.token_file).st_mtime
            try:
                claims = unverified_claims(jwt_assertion(raw, what, profile.name))
            finally:
                wipe(raw)
            shown.update({key: claims[key] for key in ("iss", "sub", "exp") if isinstance(claims.get(key), (str, int))})
            if isinstance(claims.get("exp"), int) and claims["exp"] <= self._clock():
                raise _unavailable(f"{what} holds a token that expired at {_when(claims['exp'])}", profile.name)
        except (AuthorityUnavailable, OSError) as exc:
            error = exc if isinstance(exc, AuthorityUnavailable) else _unavailable(f"cannot read {what}", profile.name)
            return {"federated": shown, "error": error.to_wire()}
        return {"federated": shown}

    async def acquire(self, scopes: tuple[str, ...]) -> TokenResponse:
        try:
            return await super().acquire(scopes)
        except AuthenticationFailed as exc:
            fix = _REFUSALS.get(exc.aadsts or 0)
            if fix is None:
                raise
            raise FederationRefused(exc.message.replace("the token request", "the federated token", 1),
                                    profile=exc.profile, error=exc.error, aadsts=exc.aadsts, reason=exc.reason,
                                    hint=f"{fix}; {_RETRY}") from None

    def __repr__(self) -> str:
        where = (f"token_command={_shown_command(self._profile.token_command)}" if self._profile.token_command
                 else f"token_file={self._profile.token_file!r}")
        return f"FederatedSource(profile={self._profile.name!r}, {where})"


def read_token_file(path: str, what: str, profile: str) -> bytes:
    """The file's bytes (blocking: run it in a thread): a regular file, not empty, at most MAX_ASSERTION_BYTES."""
    try:
        # O_NONBLOCK: a FIFO put there would otherwise hold the fetch until someone writes to it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise _unavailable(f"cannot read {what}: {exc.strerror or exc}", profile) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _unavailable(f"{what} is not a regular file", profile)
        data = os.read(fd, MAX_ASSERTION_BYTES + 1)
    except OSError as exc:
        raise _unavailable(f"cannot read {what}: {exc.strerror or exc}", profile) from None
    finally:
        os.close(fd)
    if len(data) > MAX_ASSERTION_BYTES:
        raise _unavailable(f"{what} holds more than {MAX_ASSERTION_BYTES} bytes: not a token", profile)
    if not data.strip():
        raise _unavailable(f"{what} is empty", profile)
    return data


async def run_token_command(argv: tuple[str, ...], what: str, profile: str) -> bytes:
    """The command's stdout, if it exits 0 within COMMAND_TIMEOUT having printed at most MAX_ASSERTION_BYTES."""
    try:
        process = await trio.lowlevel.open_process(
            list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True)
    except OSError as exc:
        raise _unavailable(f"cannot start {what}: {exc.strerror or exc}", profile) from None
    stdout, stderr = bytearray(), bytearray()
    too_much = False
    try:
        with trio.move_on_after(COMMAND_TIMEOUT) as deadline:
            async with trio.open_nursery() as nursery:
                assert process.stdout is not None and process.stderr is not None

                async def read_stdout() -> None:
                    nonlocal too_much
                    assert process.stdout is not None
                    too_much = not await _read(process.stdout, stdout, MAX_ASSERTION_BYTES)
                    if too_much:
                        nursery.cancel_scope.cancel()

                nursery.start_soon(read_stdout)
                nursery.start_soon(partial(_read, drain=True), process.stderr, stderr, _STDERR_KEPT)
            if not too_much:
                await process.wait()
    finally:
        if process.returncode is None:
            _kill_group(process)
            with trio.CancelScope(shield=True):
                await process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                with trio.CancelScope(shield=True):
                    await stream.aclose()
    try:
        if deadline.cancelled_caught:
            raise _unavailable(f"{what} did not finish within {COMMAND_TIMEOUT:.0f} s{_said(stderr)}", profile)
        if too_much:
            raise _unavailable(f"{what} printed more than {MAX_ASSERTION_BYTES} bytes: not a token", profile)
        code = process.returncode or 0
        if code != 0:
            status = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            raise _unavailable(f"{what} {status}{_said(stderr)}", profile)
        if not stdout.strip():
            raise _unavailable(f"{what} printed nothing{_said(stderr)}", profile)
        return bytes(stdout)
    finally:
        wipe(stdout)  # whatever it printed, token or not


def jwt_assertion(raw: bytes, what: str, profile: str) -> str:
    """The assertion text, if it looks like a JWT (three base64url parts whose first is a JSON object)."""
    text = raw.strip().decode("ascii", "replace")
    if _JWT.fullmatch(text):
        header = text.partition(".")[0]
        # RecursionError: a header nested deeper than the parser goes (a file of "[[[[..." encoded) is no JWT either.
        with contextlib.suppress(ValueError, RecursionError):
            if isinstance(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))), dict):
                return text
    raise _unavailable(f"{what} gave something that is not a JWT (expected three base64url parts separated by "
                       "dots)", profile)


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


async def _read(stream: trio.abc.ReceiveStream, into: bytearray, limit: int, *, drain: bool = False) -> bool:
    """Read ``stream`` to its end, keeping at most ``limit`` bytes in ``into``; False if it had more. With ``drain``
    the rest is read and dropped (stderr: the command must never block on a full pipe), else reading stops."""
    fits = True
    while chunk := await stream.receive_some(65536):
        room = limit - len(into)
        into += chunk[:max(room, 0)]
        if len(chunk) > room:
            fits = False
            if not drain:
                break
    return fits


def _kill_group(process: trio.Process) -> None:
    # The command runs in a session of its own: a shell script's children (curl...) go with it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        process.kill()


def _said(stderr: bytearray) -> str:
    """What a failed command wrote on stderr, as the end of a one-line message: its last words, printable."""
    text = " ".join(stderr.decode("utf-8", "replace").split())
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    if not text:
        return ""
    if len(text) > _STDERR_SHOWN:
        text = "..." + text[-_STDERR_SHOWN:]
    return f"; it said: {text}"


def _shown_command(argv: tuple[str, ...] | None) -> str:
    text = shlex.join(argv or ())
    return repr(text if len(text) <= 200 else text[:196] + "...")


def _no_source(profile: Profile) -> ConfigError:
    return ConfigError(f"profile {profile.name!r} has credential 'federated' but neither 'token_file' nor "
                       f"'token_command', and {FEDERATED_TOKEN_FILE_VARIABLE} was not set where the config was read",
                       profile=profile.name, hint=f"set token_file in the profile (`aadhelper profile show "
                                                  f"{profile.name}` names the config file)")


def _unavailable(message: str, profile: str) -> AuthorityUnavailable:
    return AuthorityUnavailable(message, profile=profile, hint=_RETRY)
