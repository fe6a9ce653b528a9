"""Wire format between the thin client and the daemon: one JSON object per line, each way.

A connection carries one request line and one reply line (the client may send several requests in turn on
one connection; the daemon answers each in order). Every message carries the protocol version ``v``.

Request::

    {"v": 1, "op": "token", "profile": "graph", "scopes": ["https://graph.microsoft.com/.default"], "min_valid": 300}

Reply, success / failure::

    {"v": 1, "ok": true, "access_token": "...", "token_type": "Bearer", "expires_on": 1764400000, ...}
    {"v": 1, "ok": false, "error": {"code": "auth_failed", "message": "...", "hint": "...", "aadsts": 7000215}}

Operations:

=============  ===============================================  ===========================================
op             request fields                                   reply fields
=============  ===============================================  ===========================================
``ping``       --                                               ``pid``, ``version``, ``log``,
                                                                ``socket_activated``
``token``      ``profile``?, ``scopes``?, ``min_valid``?,         ``access_token``, ``token_type``,
               ``url``?                                         ``expires_on``, ``profile``, ``scopes``,
                                                                ``username`` (with ``url``), ``tenant``,
                                                                ``min_valid`` (the validity it was served
                                                                against: stop using it that long before
                                                                ``expires_on``)
``invalidate`` ``profile``?, ``scopes``?, ``url``?              ``dropped`` (number of cached tokens dropped)
``status``     --                                               ``daemon`` {pid, uptime, socket, ...},
                                                                ``profiles`` [...]
``reload``     ``profile``?                                     ``profiles`` (names now configured)
``stop``       --                                               ``pid`` (the daemon exits after replying)
=============  ===============================================  ===========================================

A missing ``profile`` means the configuration's default profile. ``url`` (the git credential helper's
remote URL) asks the daemon to pick the profile by the configured git URL prefixes instead; when no prefix
matches, the error code is ``no_profile_for_url``. Stdlib-only and cheap to import: the thin
client loads it on every call.
"""

from __future__ import annotations

from .errors import ProtocolError

try:
    import _json
except ImportError:  # CPython always has the accelerator; other interpreters may not
    _json = None  # type: ignore[assignment]

TYPE_CHECKING = False  # not `from typing import ...`: the client path must not load typing (tests/test_import_rules.py)
if TYPE_CHECKING:
    from typing import Any

VERSION = 1
#: Largest request line the daemon accepts, newline included. Real requests are ~100 bytes.
MAX_REQUEST_BYTES = 64 * 1024
#: Largest reply line the client accepts: access tokens run to a few KB, a status of many profiles more.
MAX_REPLY_BYTES = 4 * 1024 * 1024
#: Seconds the daemon waits for a complete request line before closing the connection, and for a client to take
#: a reply (a client that never reads would otherwise hold its connection slot for good).
READ_TIMEOUT = 5.0
WRITE_TIMEOUT = 5.0
#: Seconds a client waits for a reply. A cold token may need a round trip to the authority with retries.
REPLY_TIMEOUT = 60.0
#: Seconds the daemon lets a request wait for a token before answering with the cause of the wait: well inside
#: REPLY_TIMEOUT, so the client hears why (an authority or keyring that is slow) rather than "no answer".
ANSWER_DEADLINE = 45.0

#: The largest minimum validity anyone may ask for (a day: longer than any access token Entra issues).
MAX_MIN_VALID = 86400

OPS = frozenset({"ping", "token", "invalidate", "status", "reload", "stop"})


def encode(message: dict[str, Any]) -> bytes:
    """One message as one line of compact UTF-8 JSON, newline-terminated."""
    return _dumps(message).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """Parse one line into a JSON object; anything else is a :class:`ProtocolError`."""
    try:
        message = _loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed message: not JSON ({type(exc).__name__})") from None
    except RecursionError:  # a 2 KB line of "[[[[..." is valid JSON nested deeper than the parser recurses
        raise ProtocolError("malformed message: nested too deeply") from None
    if not isinstance(message, dict):
        raise ProtocolError("malformed message: not a JSON object")
    version = message.get("v")
    if type(version) is not int or version != VERSION:  # True and 1.0 compare equal to 1, and are not versions
        raise ProtocolError(
            f"protocol version {version!r} is not supported (this side speaks {VERSION})",
            hint="restart the daemon after upgrading aadhelper",
        )
    return message


# -- JSON, without the json package on the thin client's path ---------------------------------------------
# `import json` brings in `re` and `enum`: about 7 ms, most of what a thin client costs beyond a bare
# interpreter (scripts/bench, row 1). The C accelerator behind json, `_json`, loads in microseconds, and
# json.loads/json.dumps do their work with it, so using it directly gives the same results. Whatever it
# does not settle (no accelerator, malformed input, an encoding other than UTF-8) goes to the json package,
# whose results and error messages therefore stay the ones callers get.


class _DecoderSettings:
    """What json.loads() hands the C scanner: its defaults (strict strings, no hooks, NaN and Infinity)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__


def _c_codecs() -> tuple[Any, Any]:
    """The accelerator's scanner and a factory of its compact encoder, built once and tried on a sample; (None,
    None) when there is no accelerator or its private signatures changed (a new CPython): json then does the work,
    slower but the same."""
    if _json is None:
        return None, None
    try:
        # (typeshed describes the settings argument as a scanner; it is any object with the attributes above)
        scan = _json.make_scanner(_DecoderSettings())  # type: ignore[arg-type]

        def make_encoder() -> Any:
            # The arguments json.JSONEncoder passes for these options; a fresh dict for its circular-reference check.
            return _json.make_encoder({}, _not_serializable, _json.encode_basestring, None, ":", ",", False, False,
                                      True)

        sample = {"a": [1, 2.5, None, True, "\u00e9\n"]}
        text = "".join(make_encoder()(sample, 0))
        if text != '{"a":[1,2.5,null,true,"\u00e9\\n"]}' or scan(text, 0) != (sample, len(text)):
            return None, None
    except Exception:  # any failure of the private API means: use json
        return None, None
    return scan, make_encoder
#: What json skips around a value (str.isspace() would also accept e.g. form feeds, which json refuses).
_JSON_WHITESPACE = " \t\n\r"


def _loads(data: bytes) -> Any:
    """``json.loads(data)``; the usual UTF-8 line with one value is parsed without importing json."""
    if _scan_once is not None:
        try:
            text = data.decode()
            value, end = _scan_once(text, 0)
        except (UnicodeDecodeError, ValueError, StopIteration):
            pass  # json.loads decides: another encoding, leading whitespace, or its own error message
        else:
            if not text[end:].strip(_JSON_WHITESPACE):
                return value
    import json

    return json.loads(data)


def _dumps(message: dict[str, Any]) -> str:
    """``json.dumps(message, separators=(",", ":"), ensure_ascii=False)``."""
    if _make_encoder is None:
        import json

        return json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    return "".join(_make_encoder()(message, 0))


def _not_serializable(value: object) -> Any:
    import json

    return json.JSONEncoder().default(value)  # raises json's own TypeError


_scan_once, _make_encoder = _c_codecs()


def loads(data: bytes) -> Any:
    """Any JSON value, as ``json.loads`` reads it, without importing json on the usual path (for thin-client verbs
    that read JSON from elsewhere, e.g. the kubectl plugin's ``KUBERNETES_EXEC_INFO``)."""
    return _loads(data)


def dumps(value: dict[str, Any]) -> str:
    """One JSON object as compact text, as ``json.dumps(value, separators=(",", ":"), ensure_ascii=False)``."""
    return _dumps(value)


def request(op: str, **fields: Any) -> dict[str, Any]:
    """A request message; fields that are ``None`` are left out."""
    message: dict[str, Any] = {"v": VERSION, "op": op}
    message.update((key, value) for key, value in fields.items() if value is not None)
    return message


def ok_reply(**fields: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"v": VERSION, "ok": True}
    message.update(fields)
    return message


def error_reply(error: dict[str, Any]) -> dict[str, Any]:
    return {"v": VERSION, "ok": False, "error": error}


# -- framing: one sans-IO line buffer for every channel (client, daemon, daemon <-> fetcher) -------------------


class LineTooLong(ProtocolError):
    """A line longer than the channel allows (the wire code stays ``protocol``)."""


class LineBuffer:
    """Bytes in, whole lines out, at most ``limit`` bytes a line (its newline included); no I/O of its own.

    Received bytes go straight into one buffer (``recv_into(buffer.space())`` then ``buffer.commit(n)``, or
    ``feed``): no chunk objects, and the space a consumed line took is zeroed, so a channel carrying tokens leaves
    no copy behind in this buffer (the line handed out is the caller's to wipe). Over the limit, :meth:`pop_line`
    raises :class:`LineTooLong`; at end of stream :meth:`pop_rest` hands out an unterminated last line.
    """

    __slots__ = ("_buffer", "_used", "_wipe", "limit")

    def __init__(self, limit: int, size: int = 4096, *, wipe: bool = True) -> None:
        """``wipe=False`` for a channel that carries nothing secret (the daemon reading requests: profile names and
        scopes), where zeroing costs the hot path a few microseconds per line for nothing."""
        self.limit = limit
        self._buffer = bytearray(min(size, limit + 1))
        self._used = 0  # the bytes not handed out yet are self._buffer[:self._used]
        self._wipe = wipe

    def space(self) -> memoryview:
        """Where to receive the next bytes (never empty): the buffer grows, up to one byte past the limit."""
        if self._used == len(self._buffer):
            if self._used > self.limit:
                raise LineTooLong(f"a line longer than {self.limit} bytes")
            larger = bytearray(min(2 * len(self._buffer), self.limit + 1))
            larger[:self._used] = self._buffer
            self._buffer[:] = bytes(len(self._buffer))  # the old buffer's copy of those bytes
            self._buffer = larger
        return memoryview(self._buffer)[self._used:]

    def commit(self, count: int) -> None:
        """``count`` bytes were received into :meth:`space`."""
        self._used += count

    def feed(self, data: bytes) -> None:
        """Received bytes from a channel that hands out objects (for tests and simple callers)."""
        view = memoryview(data)
        while view:
            with self.space() as free:
                count = min(len(free), len(view))
                free[:count] = view[:count]
            self.commit(count)
            view = view[count:]

    def pop_line(self) -> bytes | None:
        """The next whole line without its newline; None until one has arrived."""
        newline = self._buffer.find(b"\n", 0, min(self._used, self.limit))
        if newline < 0:
            if self._used >= self.limit:
                raise LineTooLong(f"a line longer than {self.limit} bytes")
            return None
        return self._take(newline, newline + 1)

    def pop_rest(self) -> bytes:
        """At end of stream: what arrived after the last newline (b"" if nothing)."""
        return self._take(self._used, self._used)

    def _take(self, end: int, consumed: int) -> bytes:
        with memoryview(self._buffer) as view:
            line = bytes(view[:end])  # one copy, no temporary
        if consumed == self._used and not self._wipe:  # the usual request: nothing after the line
            self._used = 0
            return line
        rest = self._buffer[consumed:self._used]  # a bytearray: zeroed below, unlike a bytes copy
        self._buffer[:len(rest)] = rest
        self._buffer[len(rest):self._used] = bytes(self._used - len(rest))
        self._used = len(rest)
        rest[:] = bytes(len(rest))
        return line
