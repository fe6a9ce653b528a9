"""The daemon <-> token fetcher channel, declared once: its operations, fields, codecs, framing and build check.

Both ends import this module, and nothing else spells an op name or a field of this channel. Messages are JSON
lines in :mod:`aadhelper.protocol`'s encoding (its ``v``), over a socket pair, framed by
:class:`~aadhelper.protocol.LineBuffer` (:class:`LineLink`). Every request carries an ``id`` the daemon chose and
its reply the same ``id``; any number may be under way at once (the fetcher answers in the order they finish).

==================  ========================================================  =========================================
op                  request fields                                            reply fields
==================  ========================================================  =========================================
``hello``           (none: the fetcher's first line, sent unasked, no id)      ``version``, ``build``; or ``ok: false``
                                                                              and the error that stops it
``acquire``         ``profile`` {name, tenant, client_id, authority,           ``token`` {access_token, token_type,
                    credential, ca_bundle, proxy, certificate,                expires_on, refresh_on, scopes,
                    token_file, token_command}, ``scopes`` [...]             obtained_at, account}
``sign_in_states``  ``profiles`` [names of user profiles]                     ``login_required`` {name: error | null},
                                                                              ``unsaved`` [names whose rotated
                                                                              refresh token the keyring refused]
``credential_       ``profiles`` [profiles, as in ``acquire``]                ``states`` {name: {"error": error | null,
states``                                                                      kind-specific fields, e.g. "certificate"}}
==================  ========================================================  =========================================

Errors travel as in the client protocol (``{"ok": false, "error": {...}}``, :func:`error_of_reply`).

**Same code on both ends.** A fetcher forked from the daemon runs the daemon's code by construction; one started
again later (``python -m aadhelper.fetcher.child``) runs whatever is on disk, which after ``pip install -U`` under a
running daemon is newer. So the daemon passes its :func:`build_id` (the version and the size and mtime of every
module file, taken when the daemon started), the started fetcher computes its own, and on a mismatch it sends a
failed ``hello`` and exits: the daemon then refuses to start fetchers and tells every request to restart it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from collections.abc import Sequence
from typing import Any

import trio

from .. import __version__, protocol
from ..config import CertificateSettings, Profile
from ..errors import AadhelperError, LoginRequired, ProtocolError, error_from_wire
from ..proxy import ProxySetting
from ..tokens import Secret, Token, wipe

HELLO = "hello"
ACQUIRE = "acquire"
SIGN_IN_STATES = "sign_in_states"
CREDENTIAL_STATES = "credential_states"

_build: str | None = None


def build_id() -> str:
    """This installation's identity: the package version and every module file's path, size and mtime (no file is
    read: ~100 stats). Taken once per process, so a daemon keeps the value of the code it loaded."""
    global _build
    if _build is None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        digest = hashlib.sha256(__version__.encode())
        for directory, subdirectories, files in sorted(os.walk(root)):
            subdirectories[:] = sorted(name for name in subdirectories if name != "__pycache__")
            for name in sorted(files):
                if name.endswith(".py"):
                    info = os.stat(os.path.join(directory, name))
                    relative = os.path.relpath(os.path.join(directory, name), root)
                    digest.update(f"{relative}:{info.st_size}:{info.st_mtime_ns};".encode())
        _build = f"{__version__}+{digest.hexdigest()[:16]}"
    return _build


def hello(build: str) -> dict[str, Any]:
    return protocol.ok_reply(op=HELLO, version=__version__, build=build)


def hello_refused(error: AadhelperError) -> dict[str, Any]:
    return {**protocol.error_reply(error.to_wire()), "op": HELLO}


def acquire_request(profile: Profile, scopes: Sequence[str]) -> dict[str, Any]:
    return protocol.request(ACQUIRE, profile=profile_to_wire(profile), scopes=list(scopes))


def sign_in_states_request(profiles: Sequence[str]) -> dict[str, Any]:
    return protocol.request(SIGN_IN_STATES, profiles=list(profiles))


def sign_in_states_reply(logins: dict[str, LoginRequired | None], unsaved: Sequence[str]) -> dict[str, Any]:
    return protocol.ok_reply(login_required={name: error.to_wire() if error else None for name, error in
                                             logins.items()}, unsaved=list(unsaved))


def sign_in_states_from_wire(reply: dict[str, Any]) -> tuple[dict[str, LoginRequired | None], tuple[str, ...]]:
    wire = reply.get("login_required")
    if not isinstance(wire, dict):
        raise ProtocolError("the token fetcher sent malformed sign-in states")
    logins: dict[str, LoginRequired | None] = {}
    for name, error_wire in wire.items():
        error = error_from_wire(error_wire) if isinstance(error_wire, dict) else None
        if error_wire is not None and not isinstance(error, LoginRequired):
            raise ProtocolError("the token fetcher sent a malformed login state")
        logins[str(name)] = error if isinstance(error, LoginRequired) else None
    return logins, strings_from_wire(reply.get("unsaved"), "profile names")


def credential_states_request(profiles: Sequence[Profile]) -> dict[str, Any]:
    return protocol.request(CREDENTIAL_STATES, profiles=[profile_to_wire(profile) for profile in profiles])


def credential_states_from_wire(reply: dict[str, Any]) -> dict[str, dict[str, Any]]:
    states = reply.get("states")
    if not isinstance(states, dict) or not all(isinstance(state, dict) for state in states.values()):
        raise ProtocolError("the token fetcher sent malformed credential states")
    return {str(name): state for name, state in states.items()}


#: The profile settings a fetch needs (scopes travel per request; min_valid and git URLs are the cache's).
_PROFILE_FIELDS = ("name", "tenant", "client_id", "authority", "credential", "ca_bundle")


def profile_to_wire(profile: Profile) -> dict[str, Any]:
    return {**{key: getattr(profile, key) for key in _PROFILE_FIELDS}, "proxy": profile.proxy.to_wire(),
            "certificate": profile.certificate.as_dict() if profile.certificate else None,
            "token_file": profile.token_file,
            "token_command": None if profile.token_command is None else list(profile.token_command)}


def profile_from_wire(wire: object, scopes: tuple[str, ...]) -> Profile:
    if not isinstance(wire, dict):
        raise ProtocolError("fetch request without a profile")
    text = {key: wire.get(key) for key in _PROFILE_FIELDS if key != "ca_bundle"}
    ca_bundle = wire.get("ca_bundle")
    if not all(isinstance(value, str) for value in text.values()) or not isinstance(ca_bundle, (str, type(None))):
        raise ProtocolError("fetch request with a malformed profile")
    try:
        proxy = ProxySetting.from_wire(wire.get("proxy"))
    except ValueError:
        raise ProtocolError("fetch request with a malformed proxy setting") from None
    try:
        certificate = None if wire.get("certificate") is None else CertificateSettings.from_dict(wire["certificate"])
    except ValueError:
        raise ProtocolError("fetch request with malformed certificate settings") from None
    token_file, token_command = wire.get("token_file"), wire.get("token_command")
    if not isinstance(token_file, (str, type(None))):
        raise ProtocolError("fetch request with a malformed profile")
    return Profile(name=str(text["name"]), tenant=str(text["tenant"]), client_id=str(text["client_id"]),
                   scopes=scopes, authority=str(text["authority"]), credential=str(text["credential"]),
                   ca_bundle=ca_bundle, proxy=proxy, certificate=certificate, token_file=token_file,
                   token_command=None if token_command is None else strings_from_wire(token_command, "token command"))


def scopes_from_wire(wire: object) -> tuple[str, ...]:
    return strings_from_wire(wire, "scopes")


def strings_from_wire(wire: object, what: str) -> tuple[str, ...]:
    """A list of strings (scopes, profile names) sent between daemon and fetcher."""
    if not isinstance(wire, list) or not all(isinstance(s, str) for s in wire):
        raise ProtocolError(f"malformed {what} between daemon and fetcher")
    return tuple(wire)


def token_to_wire(token: Token) -> dict[str, Any]:
    return {"access_token": token.access_token.reveal(), "token_type": token.token_type,
            "expires_on": token.expires_on, "refresh_on": token.refresh_on, "scopes": list(token.scopes),
            "obtained_at": token.obtained_at, "account": token.account}


def token_from_wire(wire: object) -> Token:
    if not isinstance(wire, dict):
        raise ProtocolError("fetch reply without a token")
    access_token, token_type, refresh_on = wire.get("access_token"), wire.get("token_type"), wire.get("refresh_on")
    account = wire.get("account")
    if not isinstance(access_token, str) or not isinstance(token_type, str) \
            or not isinstance(account, (str, type(None))):
        raise ProtocolError("fetch reply with a malformed token")
    return Token(access_token=Secret(access_token), token_type=token_type, expires_on=_seconds(wire, "expires_on"),
                 refresh_on=None if refresh_on is None else _seconds(wire, "refresh_on"),
                 scopes=scopes_from_wire(wire.get("scopes")), obtained_at=_seconds(wire, "obtained_at"),
                 account=account)


def error_of_reply(reply: dict[str, Any]) -> AadhelperError | None:
    """The error a reply carries (``{"error": {...}}``), else None."""
    wire = reply.get("error")
    return error_from_wire(wire) if isinstance(wire, dict) else None


def _seconds(wire: dict[str, Any], key: str) -> float:
    value = wire.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ProtocolError(f"fetch reply with a malformed token ({key})")
    return float(value)


class LineLink:
    """One end of the daemon-fetcher socket: whole JSON lines out (one writer at a time) and in.

    The lines carry access tokens (and the fetcher's replies nothing else secret), so neither end leaves a copy
    behind: a line sent is wiped once written, and received bytes go straight into the channel's
    :class:`~aadhelper.protocol.LineBuffer` (which zeroes what it hands out), each line wiped once decoded.
    """

    #: Largest line either side accepts: a token reply is a few KB.
    MAX_LINE = 1024 * 1024
    #: The receive buffer's first size: a token reply fits, so it normally never grows.
    _FIRST_BUFFER = 64 * 1024

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._sock = sock
        self._lines = protocol.LineBuffer(self.MAX_LINE, size=self._FIRST_BUFFER)
        self._send_lock = trio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        line = protocol.encode(message)
        try:
            with memoryview(line) as view:
                sent = 0
                async with self._send_lock:
                    while sent < len(line):
                        sent += await self._sock.send(view[sent:])
        finally:
            wipe(line)

    async def receive(self) -> dict[str, Any] | None:
        """The next message; None at end of stream. A malformed or oversized line raises ProtocolError."""
        try:
            while (line := self._lines.pop_line()) is None:
                with self._lines.space() as space:
                    received = await self._sock.recv_into(space)
                if not received:
                    return None
                self._lines.commit(received)
        except protocol.LineTooLong:
            raise ProtocolError(f"a line longer than {self.MAX_LINE} bytes between daemon and fetcher") from None
        try:
            return protocol.decode(line)
        finally:
            wipe(line)

    def finish(self) -> None:
        """No more messages from this end (the other end reads end of stream); replies can still arrive."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._sock.close()
