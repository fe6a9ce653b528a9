"""Secret-bearing values: :class:`Secret`, the access :class:`Token`, and a grant's :class:`TokenResponse`.

Their reprs and str() mask the secret part, so a token that reaches a log line, a traceback or an
assertion message shows only its shape (``Token(Bearer, expires_on=..., access_token=<1234 chars>)``).
Times are Unix epoch seconds as floats; the caller passes ``now`` so timed behaviour is testable with a
fake clock.

:func:`wipe` overwrites a buffer that held a secret (a request body, a reply, a line between daemon and fetcher)
once its owner is done with it, so that freed memory does not keep one more copy per refresh (see the README's
"Security model", "Secrets in memory", for what this does and does not guarantee).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

#: Where a bytes object's data starts, from its address: the object's fixed part minus the one byte of data it
#: counts (CPython's ``PyBytesObject.ob_sval``).
_BYTES_DATA_OFFSET = bytes.__basicsize__ - 1


def wipe(*buffers: bytearray | bytes | memoryview | None) -> None:
    """Overwrite with zeros buffers that held a secret, once nothing will read them again.

    A ``bytearray`` (or a writable memoryview) is cleared in place. A ``bytes`` object is immutable to Python, and
    is cleared in place through its address (CPython only; elsewhere it is left as it is): call it only on bytes
    this code made or was handed as its own (a request body it encoded, a chunk a library returned to it), after
    the last use, so no other code can read the zeros. ``str`` is not accepted: strings may be shared and their
    hash cached, so the interpreter's strings are never changed (those copies stay until their memory is reused).
    """
    for buffer in buffers:
        if buffer is None or not len(buffer):
            continue
        if isinstance(buffer, bytearray):
            buffer[:] = bytes(len(buffer))
        elif isinstance(buffer, memoryview):
            if not buffer.readonly:
                buffer.cast("B")[:] = bytes(buffer.nbytes)
        elif type(buffer) is bytes and len(buffer) > 1 and sys.implementation.name == "cpython":
            # Bytes of length 0 and 1 are shared singletons: never touched (and never a secret).
            import ctypes

            ctypes.memset(id(buffer) + _BYTES_DATA_OFFSET, 0, len(buffer))


class Secret:
    """A string that must not leak: masked in repr/str, compared in constant time, read with ``reveal()``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret wraps a str")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        import hmac

        return isinstance(other, Secret) and hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(("Secret", len(self._value)))

    def __repr__(self) -> str:
        return f"Secret(<{len(self._value)} chars>)"

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("a Secret is not picklable")


@dataclass(frozen=True, repr=False)
class Token:
    """An access token held in the daemon's memory."""

    access_token: Secret
    token_type: str
    expires_on: float
    #: When the authority advised refreshing (``refresh_in``), else None.
    refresh_on: float | None = None
    scopes: tuple[str, ...] = ()
    obtained_at: float = 0.0
    #: The signed-in account the authority's id token names (user sign-ins), else None; not a secret.
    account: str | None = None

    def valid_for(self, seconds: float, now: float) -> bool:
        """True when at least ``seconds`` of validity are left at ``now``."""
        return self.expires_on - now >= seconds

    def remaining(self, now: float) -> float:
        return self.expires_on - now

    @property
    def lifetime(self) -> float:
        return self.expires_on - self.obtained_at

    def header(self) -> str:
        """The value of the Authorization header (without the ``Authorization: `` prefix)."""
        return f"{self.token_type} {self.access_token.reveal()}"

    def __repr__(self) -> str:
        return (f"Token({self.token_type}, expires_on={self.expires_on:.0f}, scopes={list(self.scopes)}, "
                f"access_token=<{len(self.access_token)} chars>)")

    __str__ = __repr__


@dataclass(frozen=True, repr=False)
class TokenResponse:
    """What a grant returns: the access token and, for user sign-ins, the rotated refresh token."""

    token: Token
    refresh_token: Secret | None = None

    def __repr__(self) -> str:
        rt = f"<{len(self.refresh_token)} chars>" if self.refresh_token else None
        return f"TokenResponse({self.token!r}, refresh_token={rt})"

    __str__ = __repr__
