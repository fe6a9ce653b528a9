"""FakeDaemon: a stand-in for ``aadhelper daemon`` that answers the client protocol with replies the test chooses.

For testing a script that runs ``curl -H "$(aadhelper header)" URL`` (or git with the credential helper) with no
authority, keyring or real daemon at all::

    with FakeDaemon(tmp_path / "run" / "daemon.sock", access_token="test-token") as fake:
        subprocess.run(["my-script.sh"], env=fake.environ(os.environ), check=True)
    assert fake.requests[0]["op"] == "token"

It is a real Unix socket served by a thread of the test process, so the real ``aadhelper`` client checks it as it
checks a daemon: the socket's directory is created private (0700) when missing, and the peer is the test's own
user. Each request line is decoded with :mod:`aadhelper.protocol`, recorded in :attr:`FakeDaemon.requests` and
answered by ``answer(request)``; a line that is not a request gets the ``protocol`` error reply a daemon sends, and
an answer that raises gets an error reply naming the exception.
"""

from __future__ import annotations

import contextlib
import os
import socketserver
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from .. import protocol
from ..errors import AadhelperError

#: A reply function: one decoded request in, one reply message (``protocol.ok_reply``/``error_reply``) out.
Answer = Callable[[dict[str, Any]], dict[str, Any]]

#: The token :func:`token_answer` hands out unless told otherwise.
FAKE_ACCESS_TOKEN = "fake-access-token"


def token_answer(access_token: str = FAKE_ACCESS_TOKEN, *, token_type: str = "Bearer", expires_in: int = 3600,
                 profile: str = "default", username: str | None = None) -> Answer:
    """Replies as a daemon holding ``access_token`` for every profile and scope would.

    ``token`` gets the token (``expires_in`` seconds from the request's arrival; the request's own profile and
    scopes are echoed back; ``username`` for git when given), ``invalidate`` drops one token, ``ping`` names this
    process, ``reload`` and ``status`` list no profiles.
    """
    def answer(request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "token":
            reply = protocol.ok_reply(access_token=access_token, token_type=token_type,
                                      expires_on=int(time.time()) + expires_in,
                                      profile=request.get("profile") or profile, scopes=request.get("scopes") or [])
            if username is not None and request.get("url"):
                reply["username"] = username
            return reply
        if op == "invalidate":
            return protocol.ok_reply(dropped=1)
        if op == "ping":
            return protocol.ok_reply(pid=os.getpid(), version="fake", protocol=protocol.VERSION)
        if op == "status":
            return protocol.ok_reply(daemon={"pid": os.getpid(), "version": "fake"}, profiles=[])
        return protocol.ok_reply(profiles=[])
    return answer


def error_answer(code: str, message: str, **fields: Any) -> Answer:
    """Replies to every request with the error ``code`` (``unknown_profile``, ``login_required``, ...;
    see :mod:`aadhelper.errors`), which the client raises and the CLI reports with that error's exit code."""
    error = {"code": code, "message": message, **fields}
    return lambda request: protocol.error_reply(error)


class FakeDaemon:
    """A Unix socket at ``socket_path`` answering the client protocol with ``answer`` (default: :func:`token_answer`
    with ``access_token``). A context manager; :meth:`start` and :meth:`close` do the same by hand."""

    def __init__(self, socket_path: str | os.PathLike[str], answer: Answer | None = None, *,
                 access_token: str = FAKE_ACCESS_TOKEN) -> None:
        self.socket_path = os.fspath(socket_path)
        self.answer = answer or token_answer(access_token)
        #: Every request received, decoded, in arrival order.
        self.requests: list[dict[str, Any]] = []
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._thread: threading.Thread | None = None

    def environ(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default ``os.environ``) with ``AADHELPER_SOCKET`` pointing here and autostart off, so the
        ``aadhelper`` commands a script runs talk to this fake and never start a real daemon."""
        env = dict(os.environ if base is None else base)
        env.update(AADHELPER_SOCKET=self.socket_path, AADHELPER_NO_AUTOSTART="1")
        return env

    def start(self) -> Self:
        """Listen (creating the socket's directory, private, when missing) and serve in a background thread."""
        Path(self.socket_path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fake = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                for line in self.rfile:
                    self.wfile.write(protocol.encode(fake._reply(line)))

        self._server = socketserver.ThreadingUnixStreamServer(self.socket_path, Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True,
                                        name="aadhelper-fake-daemon")
        self._thread.start()
        return self

    def _reply(self, line: bytes) -> dict[str, Any]:
        try:
            request = protocol.decode(line)
        except AadhelperError as exc:
            return protocol.error_reply(exc.to_wire())
        self.requests.append(request)
        try:
            return self.answer(request)
        except Exception as exc:  # a bug in the test's answer: say so to the client instead of hanging up
            return protocol.error_reply(AadhelperError(f"the fake daemon's answer raised {exc!r}").to_wire())

    def close(self) -> None:
        """Stop serving and remove the socket file; safe to call twice."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
