"""RecordingApi: a loopback API that accepts anything and records the Authorization header each request carried.

The other half of a test with :class:`aadhelper.testing.FakeDaemon`: the fake hands the script a token the test
chose, the script calls this API, and the test asserts on what arrived (no authority validates anything here;
:class:`aadhelper.testing.ProtectedResource` does, against the simulated authority).
"""

from __future__ import annotations

import ssl
import threading

from .server import HttpRequest, LoopbackApp, Response


class RecordingApi(LoopbackApp):
    """Answers every GET or POST with 200 and ``{}``; :attr:`authorizations` lists what each request sent."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.Lock()
        self._authorizations: list[str | None] = []
        super().__init__(ssl_context=ssl_context, host=host, port=port)

    @property
    def authorizations(self) -> list[str | None]:
        """Each request's ``Authorization`` header (None when it had none), in arrival order."""
        with self._lock:
            return list(self._authorizations)

    def handle(self, request: HttpRequest) -> Response:
        with self._lock:
            self._authorizations.append(request.headers.get("Authorization"))
        return Response.json(200, {})
