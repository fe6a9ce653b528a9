"""The git credential helper dialogue: parse what git writes to a helper, format what the helper answers.

Git writes ``key=value`` lines to a helper's stdin, ended by a blank line or EOF (gitcredentials(7),
git-credential(1)): no quoting, values never hold a newline or NUL, lines are at most 65535 bytes, a
``key[]`` key repeats into a list and an empty ``key[]=`` clears that list, unknown keys are kept and
otherwise ignored. Anything else is a :class:`MalformedCredentialRequest` whose one-line message names the
line number but never the line (it may be ``password=...``).

A ``get`` reply carries only the keys the asking git understands:

* git < 2.46 (no ``capability[]=authtype`` in the request): ``username``, ``password`` = the access token,
  ``password_expiry_utc``; git sends them as HTTP Basic, which Azure DevOps accepts with an Entra token;
* git >= 2.46 that advertised ``capability[]=authtype``: ``capability[]=authtype`` (git drops ``authtype`` and
  ``credential`` from a helper that does not echo the capability), ``authtype=Bearer``, ``credential``,
  ``ephemeral=true`` (so git does not hand the token to storing helpers) and ``password_expiry_utc`` (git
  discards an expired ``credential`` as well as an expired ``password``). When the server's
  ``WWW-Authenticate`` headers (``wwwauth[]``) offer no Bearer, the Basic form is sent instead.

Never ``quit``: it would stop git from asking the next helper. Pure functions over bytes and this module's
request type; stdlib only (the helper is started for every git HTTP request).
"""

from __future__ import annotations

from .errors import ProtocolError

TYPE_CHECKING = False  # not `from typing import ...`: the client path must not load typing (tests/test_import_rules.py)
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import BinaryIO

#: Longest line git writes or reads (its strbuf limit for the dialogue), without the line ending.
MAX_LINE_BYTES = 65535
#: Bound on a whole request: a handful of short keys plus a few WWW-Authenticate headers in practice.
MAX_REQUEST_BYTES = 1024 * 1024
#: The only protocols whose credentials aadhelper can serve (git also asks about e.g. ``cert`` passwords).
HTTP_PROTOCOLS = frozenset({"http", "https"})

# Path bytes that stay literal when the URL is rebuilt: RFC 3986 unreserved, sub-delims, ':', '@', '/'.
_PATH_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/")


class MalformedCredentialRequest(ProtocolError):
    """What arrived on the helper's stdin is not a git credential dialogue (same code as ProtocolError)."""


class CredentialRequest:
    """One parsed request from git (frozen). Missing scalar attributes are ``None``."""

    __slots__ = ("attributes", "lists")

    #: Every ``key=value`` line, last value winning (git's own rule), unknown keys included.
    attributes: Mapping[str, str]
    #: Every ``key[]=value`` list under its bare key (``capability``, ``wwwauth``, ``state``, ...).
    lists: Mapping[str, tuple[str, ...]]

    def __init__(self, attributes: Mapping[str, str], lists: Mapping[str, tuple[str, ...]]) -> None:
        object.__setattr__(self, "attributes", dict(attributes))
        object.__setattr__(self, "lists", {key: tuple(values) for key, values in lists.items()})

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("CredentialRequest is frozen")

    @property
    def protocol(self) -> str | None:
        return self.attributes.get("protocol")

    @property
    def host(self) -> str | None:
        """The host as git sent it, with ``:port`` when the remote URL had one."""
        return self.attributes.get("host")

    @property
    def path(self) -> str | None:
        """The repository path (no leading slash); git sends it only with ``credential.useHttpPath``."""
        return self.attributes.get("path")

    @property
    def username(self) -> str | None:
        return self.attributes.get("username")

    @property
    def password(self) -> str | None:
        return self.attributes.get("password")

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset(self.lists.get("capability", ()))

    @property
    def wwwauth(self) -> tuple[str, ...]:
        """The server's ``WWW-Authenticate`` header values, one per header (git >= 2.41)."""
        return self.lists.get("wwwauth", ())

    @property
    def is_http_remote(self) -> bool:
        """True when git asks about an HTTP(S) remote with a host: the only requests aadhelper can answer."""
        return self.protocol in HTTP_PROTOCOLS and bool(self.host)

    def url(self) -> str:
        """The remote URL ``protocol://host/path`` the daemon maps to a profile by its git URL prefixes.

        Without a path (git's default, ``credential.useHttpPath`` off) it is ``protocol://host/`` and only a
        host-wide prefix can match. Scheme and host are lower-cased (they are case-insensitive); git sends the
        path percent-decoded, so it is encoded again the way remote URLs are written.
        """
        protocol = (self.protocol or "").lower()
        host = (self.host or "").lower()
        return f"{protocol}://{host}/{_quote_path(self.path or '')}"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, CredentialRequest)
                and self.attributes == other.attributes and self.lists == other.lists)

    def __hash__(self) -> int:
        return hash((self.protocol, self.host, self.path))

    def __repr__(self) -> str:
        secret_keys = ("password", "credential", "oauth_refresh_token")
        shown = {key: value for key, value in self.attributes.items() if key not in secret_keys}
        masked = {key: f"<{len(self.attributes[key])} chars>" for key in secret_keys if key in self.attributes}
        return f"CredentialRequest({shown!r}, lists={self.lists!r}, secrets={masked!r})"


def _quote_path(path: str) -> str:
    return "".join(chr(byte) if byte in _PATH_SAFE else f"%{byte:02X}" for byte in path.encode())


def read_request(stream: BinaryIO | None) -> bytes:
    """Read one request from ``stream`` (the helper's stdin) up to its blank line or EOF, bounded.

    Stops at the blank line rather than EOF, like git's own helpers, so a person can type a request by hand.
    Over-long lines are returned cut short and then rejected by :func:`parse`. ``None`` (no stdin) reads as
    an empty request.
    """
    if stream is None:
        return b""
    chunks: list[bytes] = []
    size = 0
    while True:
        # Room for a full-length line, CR LF, and one byte more so that an over-long line shows as one.
        line = stream.readline(MAX_LINE_BYTES + 3)
        chunks.append(line)
        size += len(line)
        if size > MAX_REQUEST_BYTES:
            raise MalformedCredentialRequest(f"malformed git credential request: more than {MAX_REQUEST_BYTES} bytes")
        if line in (b"", b"\n", b"\r\n") or not line.endswith(b"\n"):
            return b"".join(chunks)


def parse(data: bytes) -> CredentialRequest:
    """Parse the request git wrote; anything but a credential dialogue raises :class:`MalformedCredentialRequest`."""
    if len(data) > MAX_REQUEST_BYTES:
        raise MalformedCredentialRequest(f"malformed git credential request: more than {MAX_REQUEST_BYTES} bytes")
    attributes: dict[str, str] = {}
    lists: dict[str, list[str]] = {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if not raw:
            break
        line = _decode_line(raw, number)
        key, sep, value = line.partition("=")
        if not sep:
            raise MalformedCredentialRequest(f"malformed git credential request: line {number} has no '='")
        if key.endswith("[]"):
            if value:
                lists.setdefault(key[:-2], []).append(value)
            else:
                lists[key[:-2]] = []
        else:
            attributes[key] = value
    return CredentialRequest(attributes, {key: tuple(values) for key, values in lists.items()})


def _decode_line(raw: bytes, number: int) -> str:
    problem = None
    if len(raw) > MAX_LINE_BYTES:
        problem = f"is longer than {MAX_LINE_BYTES} bytes"
    elif b"\0" in raw:
        problem = "contains a NUL byte"
    elif b"\r" in raw:
        problem = "contains a carriage return"
    if problem is None:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            problem = "is not valid UTF-8"
    raise MalformedCredentialRequest(f"malformed git credential request: line {number} {problem}")


def format_get_reply(request: CredentialRequest, *, token: str, token_type: str = "Bearer",
                     expires_on: float | None = None, username: str | None = None) -> bytes:
    """The helper's answer to ``get``: the access token in the form the asking git understands.

    ``username`` (the daemon's configured one) is sent only when git has none yet; a username written in
    the remote URL wins. A ``token_type`` other than Bearer always goes out as a Basic password (the only
    form git can carry for an unknown scheme). ``expires_on`` is Unix seconds. A value that cannot travel
    in the dialogue (empty token, newline, NUL) is a :class:`ProtocolError` that never shows the value.
    """
    if not token:
        raise ProtocolError("the daemon sent an empty access token")
    pairs: list[tuple[str, str]]
    if uses_bearer(request, token_type):
        pairs = [("capability[]", "authtype"), ("authtype", "Bearer"), ("credential", token),
                 ("ephemeral", "true")]
    else:
        pairs = [("username", username)] if username and not request.username else []
        pairs.append(("password", token))
    if expires_on is not None:
        try:
            pairs.append(("password_expiry_utc", str(int(expires_on))))
        except (OverflowError, ValueError):
            # Python's JSON reads Infinity and NaN: a reply git must not be told.
            raise ProtocolError("the daemon sent an expiry time that is not a number") from None
    return format_lines(pairs)


def uses_bearer(request: CredentialRequest, token_type: str) -> bool:
    """True when git takes the token as ``Authorization: Bearer <token>`` rather than as a Basic password.

    That needs a Bearer token, git's ``authtype`` capability, and a server that either said nothing about its
    schemes or offered Bearer among its ``WWW-Authenticate`` headers.
    """
    if token_type.lower() != "bearer" or "authtype" not in request.capabilities:
        return False
    if not request.wwwauth:
        return True
    return any(header.split(None, 1)[0].lower() == "bearer" for header in request.wwwauth if header.strip())


def format_lines(pairs: Iterable[tuple[str, str]]) -> bytes:
    """``key=value`` lines for git; a key or value git could not read back is a :class:`ProtocolError`."""
    out = []
    for key, value in pairs:
        if not key or "=" in key or any(c in key or c in value for c in "\n\r\0"):
            raise ProtocolError(f"cannot send {key!r} to git: it holds a newline, carriage return or NUL")
        try:
            line = f"{key}={value}\n".encode()
        except UnicodeEncodeError:
            # JSON lets a lone surrogate through ("\ud800"); UTF-8 cannot carry it.
            raise ProtocolError(f"cannot send {key!r} to git: not encodable as UTF-8") from None
        if len(line) > MAX_LINE_BYTES + 1:
            raise ProtocolError(f"cannot send {key!r} to git: longer than {MAX_LINE_BYTES} bytes")
        out.append(line)
    return b"".join(out)


# -- git's own configuration for this helper -------------------------------------------------------------------
# What `aadhelper profile add --git-url` tells the user to set and `aadhelper doctor` checks: one home for both.

#: The ``credential.helper`` value that makes git run ``git credential-aadhelper``.
HELPER = "aadhelper"


def helper_config(prefix: str) -> tuple[str, bool]:
    """For a git URL mapping (a normalised prefix, ``scheme://host[:port]/path/``): the origin under which its
    ``credential.<origin>.helper`` list is set (reset with an empty value, then :data:`HELPER`, so that no storing
    helper sees a token), and whether git must send the path (``credential.<origin>.useHttpPath``) for the prefix to
    match: git sends helpers no path by default."""
    scheme, _, rest = prefix.partition("://")
    host, _, path = rest.partition("/")
    return f"{scheme}://{host}", bool(path)
