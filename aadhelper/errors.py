"""The whole aadhelper exception tree, and how errors travel over the socket.

Every failure a user can meet is one of these classes. Each class has a stable ``code`` that travels in
error replies (``{"ok": false, "error": {"code": ..., "message": ..., "hint": ...}}``) so the thin client
raises the same class the daemon raised, and a distinct ``exit_code`` so scripts can branch on the kind::

    AadhelperError                     code "error"                 exit 1
    ├── UsageError                     code "usage"                 exit 2   bad command-line arguments
    ├── ConfigError                    code "config"                exit 3   config file, profile or key is wrong
    │   ├── UnknownProfile             code "unknown_profile"       exit 3
    │   └── NoProfileForUrl            code "no_profile_for_url"    exit 3   no git URL mapping matches
    ├── SecretStoreError               code "secret_store"          exit 4   the OS keyring failed
    │   ├── SecretMissing              code "secret_missing"        exit 4   nothing stored for the profile
    │   ├── KeyringUnavailable         code "keyring_unavailable"   exit 4   no keyring backend / bus
    │   └── KeyringLocked              code "keyring_locked"        exit 4   collection locked, no prompt possible
    ├── AuthorityError                 code "authority"             exit 5   the authority answered with an error
    │   ├── AuthenticationFailed       code "auth_failed"           exit 5   invalid_client, unauthorized_client, ...
    │   │   └── FederationRefused      code "federation_refused"    exit 5   a federated token refused (retried)
    │   ├── LoginRequired              code "login_required"        exit 6   refresh token expired/revoked, MFA needed
    │   ├── LoginFailed                code "login_failed"          exit 6   an interactive login ended without tokens
    │   └── AuthorityUnavailable       code "authority_unavailable" exit 7   network, 5xx, 429, malformed reply
    ├── DaemonNotRunning               code "daemon_not_running"    exit 8   nothing answers on the socket
    │   └── DaemonTimedOut             (the same code)                     it took the request, no reply in time
    ├── DaemonAlreadyRunning           code "daemon_already_running" exit 11 another daemon owns the socket path
    ├── ProtocolError                  code "protocol"              exit 9   a malformed message (socket, fetcher, git)
    ├── UnsafeSocket                   code "unsafe_socket"         exit 10  the socket's directory or peer is not ours
    └── Cancelled                      code "cancelled"             exit 130 the user pressed Ctrl-C

What the daemon's token cache does after a failure is the class's ``recovery`` (one home for that policy):
``"backoff"`` (AuthorityUnavailable: try again after an exponential backoff or Retry-After), ``"sticky"``
(configuration and authority refusals: no automatic attempt until the profile changes), ``"local"`` (everything
else, e.g. the keyring or the fetcher process: cheap, so the next request tries again at once).

Messages never contain a secret: constructors take only names, codes and the authority's non-secret
fields (``error``, AADSTS code, ``error_description`` trimmed of trace ids). This module is stdlib-only and
imports nothing, because the thin client loads it on every call.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not `from typing import ...`: the client path must not load typing (tests/test_import_rules.py)
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, ClassVar, Self

# code -> class, filled by __init_subclass__, used to rebuild an exception from an error reply.
_BY_CODE: dict[str, type[AadhelperError]] = {}


class AadhelperError(Exception):
    """Base of every expected aadhelper failure: printed as one line, no traceback."""

    code: ClassVar[str] = "error"
    exit_code: ClassVar[int] = 1
    #: What the token cache does after this failure (see the module docstring).
    recovery: ClassVar[str] = "local"

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        profile: str | None = None,
        error: str | None = None,
        aadsts: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.profile = profile
        self.error = error
        self.aadsts = aadsts

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Subclasses that only refine behaviour (not the wire identity) keep their parent's code.
        if "code" in cls.__dict__:
            _BY_CODE[cls.code] = cls

    def copy(self, message: str | None = None) -> Self:
        """A copy (with another message, if given) keeping every other field (the authority's reason, retry_after,
        claims...), without a traceback: raising one kept error again and again would pile up every raise's frames
        on it, and concurrent waiters would share them."""
        message = self.message if message is None else message
        clone = type(self).__new__(type(self), message)
        clone.__dict__.update(self.__dict__)
        clone.message = message
        return clone

    def one_line(self) -> str:
        """The line a user sees: what failed, the profile, the authority's error and AADSTS code, the fix."""
        parts = [self.message]
        if self.profile and self.profile not in self.message:
            parts[0] = f"{self.message} (profile {self.profile!r})"
        if self.error:
            detail = self.error + (f" AADSTS{self.aadsts}" if self.aadsts else "")
            if detail not in self.message:
                parts.append(f"[{detail}]")
        line = " ".join(parts)
        if self.hint:
            line += f"; {self.hint}"
        return line

    def to_wire(self) -> dict[str, Any]:
        """The error object of an error reply."""
        wire: dict[str, Any] = {"code": self.code, "message": self.message}
        for key in ("hint", "profile", "error", "aadsts"):
            value = getattr(self, key)
            if value is not None:
                wire[key] = value
        extra = self.wire_extra()
        if extra:
            wire.update(extra)
        return wire

    def wire_extra(self) -> dict[str, Any]:
        """Subclass hook: further non-secret fields to send."""
        return {}

    def load_wire_extra(self, wire: Mapping[str, Any]) -> None:
        """Subclass hook: read back what :meth:`wire_extra` sent."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.one_line()!r})"


def error_from_wire(wire: Mapping[str, Any]) -> AadhelperError:
    """Rebuild the exception a daemon sent; an unknown code becomes the base class (newer daemon, older client)."""
    cls = _BY_CODE.get(str(wire.get("code", "")), AadhelperError)
    aadsts = wire.get("aadsts")
    exc = cls(
        str(wire.get("message") or "the daemon reported an error without a message"),
        hint=_opt_str(wire.get("hint")),
        profile=_opt_str(wire.get("profile")),
        error=_opt_str(wire.get("error")),
        aadsts=aadsts if isinstance(aadsts, int) and not isinstance(aadsts, bool) else None,
    )
    exc.load_wire_extra(wire)
    return exc


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


class UsageError(AadhelperError):
    code = "usage"
    exit_code = 2


class ConfigError(AadhelperError):
    """The configuration is wrong; the message names the file, the profile and the key."""

    code = "config"
    exit_code = 3
    recovery = "sticky"


class UnknownProfile(ConfigError):
    code = "unknown_profile"


class NoProfileForUrl(ConfigError):
    """No profile's git URL prefix matches a remote URL (the git helper then stays silent)."""

    code = "no_profile_for_url"


class SecretStoreError(AadhelperError):
    code = "secret_store"
    exit_code = 4


class SecretMissing(SecretStoreError):
    code = "secret_missing"


class KeyringUnavailable(SecretStoreError):
    code = "keyring_unavailable"


class KeyringLocked(SecretStoreError):
    code = "keyring_locked"


class AuthorityError(AadhelperError):
    """The authority answered, with an error; ``retryable`` says whether trying again later can help."""

    code = "authority"
    exit_code = 5
    recovery = "sticky"

    def __init__(self, message: str, *, retry_after: float | None = None, claims: str | None = None,
                 reason: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after
        # A Conditional Access challenge: not a secret, passed back on the next interactive login.
        self.claims = claims
        #: The authority's own words (first sentence of error_description, made printable), for callers that
        #: phrase their own message around it; already part of ``message``.
        self.reason = reason

    def wire_extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.retry_after is not None:
            extra["retry_after"] = self.retry_after
        if self.claims is not None:
            extra["claims"] = self.claims
        return extra

    def load_wire_extra(self, wire: Mapping[str, Any]) -> None:
        retry_after = wire.get("retry_after")
        if isinstance(retry_after, (int, float)) and not isinstance(retry_after, bool):
            self.retry_after = float(retry_after)
        self.claims = _opt_str(wire.get("claims"))


class AuthenticationFailed(AuthorityError):
    """The authority refused the client's credentials or configuration; retrying will not help."""

    code = "auth_failed"


class FederationRefused(AuthenticationFailed):
    """The authority refused a federated credential's token (no matching federated identity credential, expired,
    a signature its issuer's keys do not verify): the fix is made elsewhere (the app registration, the token's
    issuer), which no profile change signals, so the cache retries with backoff instead of waiting for one."""

    code = "federation_refused"
    recovery = "backoff"


class LoginRequired(AuthorityError):
    """The user's sign-in is gone (expired or revoked refresh token, MFA or consent needed)."""

    code = "login_required"
    exit_code = 6


class LoginFailed(AuthorityError):
    """An interactive login (device code or browser) ended without tokens."""

    code = "login_failed"
    exit_code = 6


class AuthorityUnavailable(AuthorityError):
    """Transport failure, 5xx, throttling or a malformed reply: worth retrying with backoff."""

    code = "authority_unavailable"
    exit_code = 7
    recovery = "backoff"


class DaemonNotRunning(AadhelperError):
    code = "daemon_not_running"
    exit_code = 8


class DaemonTimedOut(DaemonNotRunning):
    """The daemon took the request but did not answer in time: asking it again, or starting another daemon (which
    the socket's lock would refuse), would only wait again. Client-side only."""


class DaemonAlreadyRunning(AadhelperError):
    """Another daemon holds the socket path (``aadhelper daemon`` while one runs)."""

    code = "daemon_already_running"
    exit_code = 11


class ProtocolError(AadhelperError):
    """A malformed message on one of aadhelper's channels: client and daemon (their versions differ, or something
    else speaks on the socket), daemon and token fetcher, git and the credential helper (see EXIT_CODES)."""

    code = "protocol"
    exit_code = 9


class UnsafeSocket(AadhelperError):
    """The socket's directory belongs to (or is open to) someone else, or another user answers on it: whoever
    does could read our requests and hand us their tokens, so the client does not talk to it."""

    code = "unsafe_socket"
    exit_code = 10


class Cancelled(AadhelperError):
    code = "cancelled"
    exit_code = 130


#: Exit codes by class, for `aadhelper --help` and the README.
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (0, "success"),
    (1, "unexpected error"),
    (2, "bad command-line arguments"),
    (3, "configuration error (file, profile or key)"),
    (4, "OS keyring error (missing secret, no keyring, locked keyring)"),
    (5, "authentication failed (the authority refused the credentials)"),
    (6, "login required or login failed (run `aadhelper login NAME`)"),
    (7, "authority unavailable (network, 5xx, throttling, malformed reply)"),
    (8, "daemon not running"),
    (9, "malformed message: between client and daemon (e.g. a client and a daemon of different aadhelper versions: "
        "restart the daemon), between the daemon and its token fetcher, or from git to the credential helper"),
    (10, "the daemon's socket is not safe (its directory or the process on it belongs to another user)"),
    (11, "another daemon already runs on this socket"),
    (130, "cancelled"),
)
