"""ProtectedResource: a loopback API that accepts only the simulated authority's tokens, as Graph or DevOps would.

Any GET or POST with ``Authorization: Bearer <token>`` (or ``Basic`` with the token as password, the way git sends
it to Azure DevOps) that validates against the authority for the expected audience gets 200 and the token's
claims as JSON; anything else gets 401 with ``WWW-Authenticate`` challenges for Bearer and Basic. Shows what
``curl -H "$(aadhelper header NAME)" URL`` does end to end.
"""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass

from .authority import SimulatedAuthority
from .directory import GRAPH
from .jwt import InvalidToken
from .server import HttpRequest, LoopbackApp, Response, basic_credentials


@dataclass(frozen=True)
class ResourceRequest:
    method: str
    path: str
    status: int
    #: ``bearer``, ``basic`` or None (no credentials).
    scheme: str | None
    #: The user name of Basic credentials.
    username: str | None = None


class ProtectedResource(LoopbackApp):
    def __init__(self, authority: SimulatedAuthority, *, ssl_context: ssl.SSLContext | None = None,
                 audience: str = GRAPH, host: str = "127.0.0.1", port: int = 0) -> None:
        self.authority = authority
        #: The ``aud`` a token must carry; may be changed while running.
        self.audience = audience
        self._lock = threading.Lock()
        self._records: list[ResourceRequest] = []
        super().__init__(ssl_context=ssl_context, host=host, port=port)

    @property
    def requests(self) -> list[ResourceRequest]:
        with self._lock:
            return list(self._records)

    def count(self, status: int | None = None) -> int:
        """How many requests arrived (with that answer when ``status`` is given)."""
        with self._lock:
            return sum(1 for r in self._records if status in (None, r.status))

    def handle(self, request: HttpRequest) -> Response:
        scheme, username, token = _credentials(request.headers.get("Authorization", ""))
        try:
            if token is None:
                raise InvalidToken("no Bearer token or Basic credentials were sent")
            response = Response.json(200, self.authority.validate(token, audience=self.audience))
        except InvalidToken as exc:
            response = self._challenge(str(exc), invalid=token is not None)
        with self._lock:
            self._records.append(ResourceRequest(request.method, request.path, response.status, scheme, username))
        return response

    def _challenge(self, reason: str, *, invalid: bool) -> Response:
        bearer = f'Bearer realm="", authorization_uri="{self.authority.url}/common/oauth2/v2.0/authorize"'
        if invalid:
            # RFC 6750 3.1: no error code when the request carried no credentials at all.
            bearer += f', error="invalid_token", error_description="{reason}"'
        return Response.json(401, {"error": {"code": "InvalidAuthenticationToken", "message": reason}},
                             [("WWW-Authenticate", bearer), ("WWW-Authenticate", 'Basic realm="aadhelper-testing"')])


def _credentials(header: str) -> tuple[str | None, str | None, str | None]:
    """(scheme, Basic user name, token) of an Authorization header."""
    scheme, _, value = header.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer" and value.strip():
        return "bearer", None, value.strip()
    try:
        basic = basic_credentials(header)
    except ValueError:
        basic = None
    if basic is not None:
        return "basic", basic[0], basic[1] or None
    return (scheme or None), None, None
