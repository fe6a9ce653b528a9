"""A loopback HTTPS smart-HTTP git server for tests: the real ``git http-backend`` CGI behind a LoopbackServer.

Every request must carry ``Authorization: Basic`` (the password is the token, as git sends it to Azure DevOps)
or ``Authorization: Bearer`` with a token that ``validate`` accepts and that is not revoked; otherwise the
answer is 401 with ``WWW-Authenticate: Basic realm=...``, which is what makes git ask its credential helper.
Each request is recorded (method, path, scheme, username, token, status), so a test asserts on what git
actually sent. :meth:`GitServer.revoke_next_valid_token` makes the server refuse the next valid token it
sees, for good, as if the token had been revoked: the erase-and-retry test uses it.

The HTTP side (TLS, threads, shutdown) is :class:`aadhelper.testing.server.LoopbackServer`, which reads bodies
with a Content-Length up to 256 KiB: enough for the small repositories of tests (git sends chunked bodies only
past its 1 MiB ``http.postBuffer``).
"""

from __future__ import annotations

import os
import ssl
import subprocess
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aadhelper.testing.server import HttpRequest, LoopbackApp, Response, basic_credentials

REALM = "aadhelper-test"
CGI_TIMEOUT = 60


@dataclass(frozen=True)
class SeenRequest:
    """One request as the server saw it; ``token`` is what git sent (tests compare it, never print it)."""

    method: str
    path: str
    #: ``basic``, ``bearer``, another scheme, or None without credentials.
    scheme: str | None
    username: str | None
    token: str | None
    status: int

    def __repr__(self) -> str:
        token = None if self.token is None else f"<{len(self.token)} chars>"
        return (f"SeenRequest({self.method} {self.path} -> {self.status}, scheme={self.scheme}, "
                f"username={self.username!r}, token={token})")


class GitServer(LoopbackApp):
    """Serves the bare repositories under ``root`` over HTTP(S); a context manager that starts and stops it."""

    def __init__(self, root: Path, validate: Callable[[str], bool], *,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.root = root
        self.validate = validate
        self.revoked: set[str] = set()
        self._revoke_next = False
        self._records: list[SeenRequest] = []
        self._lock = threading.Lock()
        super().__init__(ssl_context=ssl_context)

    @property
    def requests(self) -> list[SeenRequest]:
        with self._lock:
            return list(self._records)

    def create_repo(self, name: str) -> str:
        """A new empty bare repository under ``root``; its remote URL."""
        subprocess.run(["git", "init", "--quiet", "--bare", str(self.root / name)], check=True, timeout=CGI_TIMEOUT)
        return f"{self.url}/{name}"

    def revoke_next_valid_token(self) -> None:
        """Refuse the next valid token presented, and that token from then on."""
        with self._lock:
            self._revoke_next = True

    def handle(self, request: HttpRequest) -> Response:
        scheme, username, token = _credentials(request.headers.get("Authorization"))
        if token is None or not self._accept(token):
            self._record(SeenRequest(request.method, request.path, scheme, username, token, 401))
            return Response(401, b"authentication required\n",
                            (("WWW-Authenticate", f'Basic realm="{REALM}"'), ("Content-Type", "text/plain")))
        response = self._run_backend(request, username or "git")
        self._record(SeenRequest(request.method, request.path, scheme, username, token, response.status))
        return response

    def _accept(self, token: str) -> bool:
        if not self.validate(token):
            return False
        with self._lock:
            if token in self.revoked:
                return False
            if self._revoke_next:
                self._revoke_next = False
                self.revoked.add(token)
                return False
        return True

    def _record(self, seen: SeenRequest) -> None:
        with self._lock:
            self._records.append(seen)

    def _run_backend(self, request: HttpRequest, user: str) -> Response:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.root), "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_PROJECT_ROOT": str(self.root), "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1", "SERVER_PROTOCOL": "HTTP/1.1", "REQUEST_METHOD": request.method,
            "PATH_INFO": urllib.parse.unquote(request.path), "QUERY_STRING": request.query,
            # http-backend enables receive-pack (push) only for an authenticated REMOTE_USER.
            "REMOTE_USER": user, "REMOTE_ADDR": "127.0.0.1", "CONTENT_LENGTH": str(len(request.body)),
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
        }
        for header, variable in (("Content-Encoding", "HTTP_CONTENT_ENCODING"), ("Git-Protocol", "HTTP_GIT_PROTOCOL")):
            value = request.headers.get(header)
            if value:
                env[variable] = value
        result = subprocess.run(["git", "http-backend"], input=request.body, env=env, capture_output=True,
                                timeout=CGI_TIMEOUT, check=False)
        head, sep, body = result.stdout.partition(b"\r\n\r\n")
        if not sep:
            head, sep, body = result.stdout.partition(b"\n\n")
        status = 200 if result.returncode == 0 else 500
        headers: list[tuple[str, str]] = []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name and name.lower() != "content-length":
                headers.append((name.strip(), value.strip()))
        return Response(status, body, tuple(headers))


def _credentials(header: str | None) -> tuple[str | None, str | None, str | None]:
    """(scheme, username, token) from an Authorization header; Nones for what is absent or unreadable."""
    if not header:
        return None, None, None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() == "bearer":
        return "bearer", None, value.strip() or None
    try:
        basic = basic_credentials(header)
    except ValueError:
        return "basic", None, None
    if basic is None:
        return scheme.lower(), None, None
    return "basic", basic[0], basic[1] or None
