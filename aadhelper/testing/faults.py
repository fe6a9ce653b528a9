"""Scripted faults: a FIFO of misbehaviours the authority applies to the next matching requests.

``authority.inject(Fault.throttle(60), times=2)`` makes the next two token requests get HTTP 429. A fault matches
an endpoint (``"token"`` by default) and optionally one grant type; the first matching fault in the queue is used.
``delay`` and ``hold`` only wait, then the request is answered normally; ``hold_reply`` answers the request (so its
effects, such as a refresh-token rotation, are committed) and then holds the reply back; the others replace the
answer.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from .entra import EntraError, entra_error
from .server import DROP, Response

FaultKind = Literal["delay", "hold", "hold_reply", "status", "throttle", "malformed", "drop", "error"]

_MALFORMED_BODY = ("<!DOCTYPE html><html><head><title>Sign in to your account</title></head>"
                   "<body>Please wait while we redirect you...</body></html>")


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
    retry_after: int = 0
    reply: EntraError | None = None

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
    def hold_reply(cls, event: threading.Event, *, endpoint: str = "token", grant_type: str | None = None,
                   reached: threading.Event | None = None) -> Fault:
        """Answer the request, then hold the reply until ``event`` is set; dropped if the authority stops first.

        ``reached`` is set once the answer is computed: a refresh token presented is then already rotated.
        """
        return cls("hold_reply", endpoint, grant_type, event=event, reached=reached)

    @classmethod
    def status(cls, code: int, body: str | Mapping[str, object] | None = None, *, endpoint: str = "token",
               grant_type: str | None = None) -> Fault:
        """Answer with HTTP ``code``; without a body, with Entra's ``temporarily_unavailable`` JSON error."""
        return cls("status", endpoint, grant_type, http_code=code, body=body)

    @classmethod
    def throttle(cls, retry_after: int = 60, *, endpoint: str = "token", grant_type: str | None = None) -> Fault:
        """HTTP 429 with ``Retry-After: retry_after``."""
        return cls("throttle", endpoint, grant_type, retry_after=retry_after)

    @classmethod
    def malformed(cls, body: str = _MALFORMED_BODY, *, endpoint: str = "token",
                  grant_type: str | None = None) -> Fault:
        """HTTP 200 whose body is not JSON (by default the HTML a captive portal or proxy sends)."""
        return cls("malformed", endpoint, grant_type, body=body)

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

    def after_answer(self, response: Response, stopping: threading.Event) -> Response:
        """The reply to send once the request is answered: ``hold_reply`` holds it back first."""
        if self.kind != "hold_reply":
            return response
        return response if self.wait(stopping) else DROP

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
        if self.kind == "hold_reply":
            return None  # the hold comes after the answer: see after_answer
        if self.kind == "drop":
            return DROP
        if self.kind == "malformed" or (self.kind == "status" and self.body is not None):
            return _raw(200 if self.kind == "malformed" else self.http_code, self.body)
        if self.kind == "throttle":
            raise entra_error(90055, status=429, headers={"Retry-After": str(self.retry_after)},
                              retry_after=self.retry_after)
        if self.kind == "status":
            raise entra_error(90033, status=self.http_code)
        assert self.reply is not None
        raise self.reply


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


def _raw(status: int, body: str | Mapping[str, object] | None) -> Response:
    if isinstance(body, Mapping):
        return Response.json(status, body)
    return Response(status, (body or "").encode(), (("Content-Type", "text/html; charset=utf-8"),))
