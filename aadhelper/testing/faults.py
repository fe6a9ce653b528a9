"""Scripted faults: a FIFO of misbehaviours the authority applies to the next matching requests.

``authority.inject(Fault.throttle(60), times=2)`` makes the next two token requests get HTTP 429. A fault matches
an endpoint (``"token"`` by default) and optionally one grant type; the first matching fault in the queue is used.

Three families:

- before the answer: ``delay`` and ``hold`` wait, then the request is answered normally; ``hang`` never answers
  (the connection is dropped when the authority stops). Nothing is committed while they wait.
- instead of the answer: ``status``, ``throttle``, ``malformed``, ``drop`` and ``error`` replace it; nothing is
  committed (a presented refresh token is not used up).
- after the answer: ``hold_reply``, ``reply_fields``, ``drip``, ``huge_body``, ``endless_body`` and
  ``reset_mid_body`` let the authority answer first, so its effects (a refresh-token rotation) are committed, and
  then spoil the reply on its way out. The big and slow bodies are streamed, never built in memory, and every
  stream ends when the client goes away, when the authority stops, or after :data:`MAX_STREAM_SECONDS`.

Connection refused is no fault: stop the authority (``authority.stop()``); ``start()`` brings it back on the same
URL. A wrong TLS certificate is no fault either: serve a second authority with a certificate the client does not
trust (another CA, or a certificate for another host name).
"""

from __future__ import annotations

import email.utils
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar, Final, Literal

from .entra import EntraError, entra_error
from .server import DROP, BodyWriter, Response, Stream

FaultKind = Literal["delay", "hold", "hold_reply", "status", "throttle", "malformed", "drop", "error", "hang",
                    "drip", "huge_body", "endless_body", "reset_mid_body", "reply_fields"]

_MALFORMED_BODY = ("<!DOCTYPE html><html><head><title>Sign in to your account</title></head>"
                   "<body>Please wait while we redirect you...</body></html>")
_HTML = "text/html; charset=utf-8"

#: Longest a fault keeps one connection busy (a hang, a drip, an endless body), so a forgotten authority
#: cannot keep threads and sockets forever.
MAX_STREAM_SECONDS: Final = 300.0
#: The whitespace that pads huge and endless bodies (JSON allows any amount after the value), sent in pieces of
#: this size; allocated once.
_PADDING: Final = b" " * 65536
#: Default size of :meth:`Fault.huge_body`: the 100 MB reply of issue 9.
HUNDRED_MB: Final = 100 * 1024 * 1024


class _Remove:
    def __repr__(self) -> str:
        return "Fault.REMOVE"


@dataclass(frozen=True)
class RawJson:
    """JSON text put into a reply verbatim, for what ``json.dumps`` cannot write (``1e999``, ``-0``, ``1.0e2``)."""

    text: str


def http_date(epoch: float) -> str:
    """An HTTP-date (RFC 9110, IMF-fixdate) for a Retry-After header: ``http_date(time.time() + 120)``."""
    return email.utils.formatdate(epoch, usegmt=True)


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    endpoint: str = "token"
    grant_type: str | None = None
    seconds: float = 0.0
    event: threading.Event | None = field(default=None, compare=False)
    #: Set when a hold begins, so a test knows the request got that far.
    reached: threading.Event | None = field(default=None, compare=False)
    http_code: int = 0
    body: str | Mapping[str, object] | None = None
    #: A Retry-After header: delay-seconds (int) or an HTTP-date (str, see :func:`http_date`).
    retry_after: int | str | None = None
    reply: EntraError | None = None
    #: reply_fields: top-level fields to set (or, with :attr:`REMOVE`, to delete) in the real reply.
    fields: Mapping[str, object] | None = field(default=None, compare=False)
    #: huge_body: total body bytes; reset_mid_body: body bytes sent before the reset.
    size: int = 0
    content_type: str = _HTML

    #: reply_fields(name=Fault.REMOVE) deletes the field from the reply.
    REMOVE: ClassVar[object] = _Remove()

    # before the answer ------------------------------------------------------------------------------------------

    @classmethod
    def delay(cls, seconds: float, *, endpoint: str = "token", grant_type: str | None = None) -> Fault:
        """Wait ``seconds`` (real time) before answering normally."""
        return cls("delay", endpoint, grant_type, seconds=seconds)

    @classmethod
    def hold(cls, event: threading.Event, *, endpoint: str = "token", grant_type: str | None = None,
             reached: threading.Event | None = None) -> Fault:
        """Block until ``event`` is set (or the authority stops), then answer normally."""
        return cls("hold", endpoint, grant_type, event=event, reached=reached)

    @classmethod
    def hang(cls, *, endpoint: str = "token", grant_type: str | None = None) -> Fault:
        """Accept the request and never answer: the connection stays open, silent, until the authority stops (or
        :data:`MAX_STREAM_SECONDS` pass), then it is closed without a reply. Nothing is committed."""
        return cls("hang", endpoint, grant_type)

    # instead of the answer --------------------------------------------------------------------------------------

    @classmethod
    def status(cls, code: int, body: str | Mapping[str, object] | None = None, *,
               retry_after: int | str | None = None, endpoint: str = "token",
               grant_type: str | None = None) -> Fault:
        """Answer with HTTP ``code``; without a body, with Entra's ``temporarily_unavailable`` JSON error; with
        ``retry_after`` (seconds, or an HTTP-date string), a Retry-After header too."""
        return cls("status", endpoint, grant_type, http_code=code, body=body, retry_after=retry_after)

    @classmethod
    def throttle(cls, retry_after: int | str = 60, *, endpoint: str = "token", grant_type: str | None = None) -> Fault:
        """HTTP 429 with ``Retry-After: retry_after`` (seconds, or an HTTP-date string from :func:`http_date`)."""
        return cls("throttle", endpoint, grant_type, retry_after=retry_after)

    @classmethod
    def malformed(cls, body: str = _MALFORMED_BODY, *, content_type: str = _HTML, endpoint: str = "token",
                  grant_type: str | None = None) -> Fault:
        """HTTP 200 whose body is not a token reply: by default the HTML a captive portal or proxy sends; any text
        otherwise, e.g. ``Fault.malformed('{"access_token": ', content_type="application/json")``."""
        return cls("malformed", endpoint, grant_type, body=body, content_type=content_type)

    @classmethod
    def drop(cls, *, endpoint: str = "token", grant_type: str | None = None) -> Fault:
        """Close the connection without any reply."""
        return cls("drop", endpoint, grant_type)

    @classmethod
    def error(cls, error: str, aadsts: int, description: str, *, status: int | None = None,
              claims: str | None = None, endpoint: str = "token", grant_type: str | None = None) -> Fault:
        """Any Entra error reply, e.g. ``Fault.error("interaction_required", 50076, "...", claims=...)``."""
        return cls("error", endpoint, grant_type,
                   reply=EntraError(error, aadsts, description, status=status, claims=claims))

    # after the answer (its effects are committed) ---------------------------------------------------------------

    @classmethod
    def hold_reply(cls, event: threading.Event, *, endpoint: str = "token", grant_type: str | None = None,
                   reached: threading.Event | None = None) -> Fault:
        """Answer the request, then hold the reply until ``event`` is set; dropped if the authority stops first.

        ``reached`` is set once the answer is computed: a refresh token presented is then already rotated.
        """
        return cls("hold_reply", endpoint, grant_type, event=event, reached=reached)

    @classmethod
    def reply_fields(cls, *, endpoint: str = "token", grant_type: str | None = None, **fields: object) -> Fault:
        """Answer the request, then change top-level fields of a 200 JSON reply: a value replaces (or adds) the
        field, :attr:`Fault.REMOVE` deletes it, :class:`RawJson` goes in verbatim. An error reply passes unchanged
        (and uses the fault up, like any matching request).

        ``float("nan")`` and ``float("inf")`` are written as bare ``NaN`` and ``Infinity``. With a refresh-token
        grant, the refresh token is rotated and the new one sent, whatever the access token looks like:
        ``Fault.reply_fields(access_token=Fault.REMOVE, grant_type="refresh_token")``.
        """
        return cls("reply_fields", endpoint, grant_type, fields=dict(fields))

    @classmethod
    def drip(cls, interval: float = 1.0, *, endpoint: str = "token", grant_type: str | None = None) -> Fault:
        """Answer the request, send the status and headers at once, then the body one byte every ``interval``
        seconds (real time), until it is all sent or the client goes away."""
        return cls("drip", endpoint, grant_type, seconds=interval)

    @classmethod
    def huge_body(cls, size: int = HUNDRED_MB, *, endpoint: str = "token", grant_type: str | None = None) -> Fault:
        """Answer the request with its real JSON reply padded with whitespace to ``size`` bytes (still valid JSON,
        with a Content-Length), streamed as fast as the client reads."""
        return cls("huge_body", endpoint, grant_type, size=size)

    @classmethod
    def endless_body(cls, *, endpoint: str = "token", grant_type: str | None = None) -> Fault:
        """Answer the request with a chunked reply that never ends: the real JSON, then whitespace for ever (until
        the client goes away, the authority stops or :data:`MAX_STREAM_SECONDS` pass)."""
        return cls("endless_body", endpoint, grant_type)

    @classmethod
    def reset_mid_body(cls, sent: int = 64, *, endpoint: str = "token", grant_type: str | None = None) -> Fault:
        """Answer the request, send the headers (with the full Content-Length) and the first ``sent`` bytes of the
        body, then reset the connection (TCP RST)."""
        if sent < 0:
            raise ValueError("sent must not be negative")
        return cls("reset_mid_body", endpoint, grant_type, size=sent)

    @classmethod
    def raw(cls, text: str) -> RawJson:
        """A field value for :meth:`reply_fields` written verbatim: ``Fault.raw("1e999")``."""
        return RawJson(text)

    # applying -------------------------------------------------------------------------------------------------

    def wait(self, stopping: threading.Event) -> bool:
        """A hold: block until released (True) or the authority stops (False)."""
        assert self.event is not None
        if self.reached is not None:
            self.reached.set()
        # Poll so that stopping the authority releases a hold the test never released.
        while not self.event.wait(0.05):
            if stopping.is_set():
                return False
        return True

    def matches(self, endpoint: str, grant_type: str | None) -> bool:
        return self.endpoint == endpoint and self.grant_type in (None, grant_type)

    def apply(self, stopping: threading.Event) -> Response | None:
        """The answer this fault forces (:data:`DROP` closes the connection), or None to answer normally.

        Raises :class:`EntraError` for the faults that are Entra error replies.
        """
        if self.kind == "delay":
            return DROP if stopping.wait(self.seconds) else None
        if self.kind == "hold":
            return None if self.wait(stopping) else DROP
        if self.kind == "hang":
            stopping.wait(MAX_STREAM_SECONDS)
            return DROP
        if self.kind == "drop":
            return DROP
        if self.kind == "malformed" or (self.kind == "status" and self.body is not None):
            return _raw(200 if self.kind == "malformed" else self.http_code, self.body, self.content_type,
                        self._retry_after_header())
        if self.kind == "throttle":
            raise entra_error(90055, status=429, headers=self._retry_after_header(), retry_after=self.retry_after)
        if self.kind == "status":
            raise entra_error(90033, status=self.http_code, headers=self._retry_after_header())
        if self.kind == "error":
            assert self.reply is not None
            raise self.reply
        return None  # the faults that come after the answer: see after_answer

    def after_answer(self, response: Response, stopping: threading.Event) -> Response:
        """The reply to send once the request is answered (``response``), as this fault spoils it."""
        if self.kind == "hold_reply":
            return response if self.wait(stopping) else DROP
        if self.kind == "reply_fields":
            return _with_fields(response, self.fields or {})
        if self.kind == "drip":
            return _streamed(response, len(response.body), _drip(response.body, self.seconds, stopping))
        if self.kind == "huge_body":
            size = max(self.size, len(response.body))
            return _streamed(response, size, _padded(response.body, size - len(response.body), stopping))
        if self.kind == "endless_body":
            return _streamed(response, None, _endless(response.body, stopping))
        if self.kind == "reset_mid_body":
            return _streamed(response, len(response.body), _reset_after(response.body[:self.size]))
        return response

    def _retry_after_header(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}


class FaultQueue:
    """Thread-safe FIFO of (fault, remaining uses)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[_Queued] = []

    def push(self, fault: Fault, times: int) -> None:
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._items.append(_Queued(fault, times))

    def take(self, endpoint: str, grant_type: str | None) -> Fault | None:
        with self._lock:
            for item in self._items:
                if item.fault.matches(endpoint, grant_type):
                    item.left -= 1
                    if not item.left:
                        self._items.remove(item)
                    return item.fault
        return None

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return sum(item.left for item in self._items)


@dataclass
class _Queued:
    fault: Fault
    left: int


def _raw(status: int, body: str | Mapping[str, object] | None, content_type: str,
         headers: Mapping[str, str]) -> Response:
    if isinstance(body, Mapping):
        return Response.json(status, body, headers)
    return Response(status, (body or "").encode(), (("Content-Type", content_type), *headers.items()))


def _with_fields(response: Response, fields: Mapping[str, object]) -> Response:
    """``response`` with ``fields`` merged into its JSON object body; anything but a 200 JSON object passes."""
    try:
        body = json.loads(response.body) if response.status == 200 else None
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return response
    raws: dict[str, str] = {}
    for name, value in fields.items():
        if value is Fault.REMOVE:
            body.pop(name, None)
        elif isinstance(value, RawJson):
            # A unique string stands in for the raw text until the rest is encoded.
            placeholder = f"\x00raw{len(raws)}\x00"
            raws[json.dumps(placeholder)] = value.text
            body[name] = placeholder
        else:
            body[name] = value
    text = json.dumps(body)  # allow_nan: NaN and Infinity go out bare, as a broken server would send them
    for placeholder, raw in raws.items():
        text = text.replace(placeholder, raw)
    return replace(response, body=text.encode())


def _streamed(response: Response, length: int | None, stream: Stream) -> Response:
    """``response`` with its body written by ``stream``: ``length`` bytes, or chunked when None."""
    framing = ("Content-Length", str(length)) if length is not None else ("Transfer-Encoding", "chunked")
    return Response(response.status, b"", (*response.headers, framing), stream=stream)


def _drip(body: bytes, interval: float, stopping: threading.Event) -> Stream:
    def stream(out: BodyWriter) -> None:
        ends = time.monotonic() + MAX_STREAM_SECONDS
        for i in range(len(body)):
            if (i and stopping.wait(interval)) or time.monotonic() > ends or not out.write(body[i:i + 1]):
                return
    return stream


def _padded(body: bytes, padding: int, stopping: threading.Event) -> Stream:
    def stream(out: BodyWriter) -> None:
        left = padding
        if not out.write(body):
            return
        while left > 0 and not stopping.is_set():
            piece = _PADDING[:min(left, len(_PADDING))]
            if not out.write(piece):
                return
            left -= len(piece)
    return stream


def _endless(body: bytes, stopping: threading.Event) -> Stream:
    def stream(out: BodyWriter) -> None:
        ends = time.monotonic() + MAX_STREAM_SECONDS
        if not out.write(_chunk(body)):
            return
        chunk = _chunk(_PADDING)
        while not stopping.is_set() and time.monotonic() < ends and out.write(chunk):
            pass
    return stream


def _reset_after(head: bytes) -> Stream:
    def stream(out: BodyWriter) -> None:
        out.write(head)
        out.reset()
    return stream


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)
