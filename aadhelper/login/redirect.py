"""The browser sign-in's redirect listener: a tiny HTTP/1.1 server on ``127.0.0.1`` with an ephemeral port that waits
for the authority's redirect (``/?code=...&state=...`` or ``/?error=...``) and then shows the browser a page.

Only loopback is bound (RFC 8252 section 7.3; Entra matches ``http://127.0.0.1`` with any port). Connections are
served concurrently, because browsers open speculative connections that never send a request; each gets
:data:`READ_TIMEOUT` seconds to send its request head of at most :data:`MAX_HEAD` bytes. Requests for other paths
(``/favicon.ico``) get a 404 and waiting goes on. The first request carrying ``code`` or ``error`` is handed over
as a :class:`Redirect`, whose connection stays open until :meth:`Redirect.respond` says how the sign-in ended.
"""

from __future__ import annotations

import html
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from urllib.parse import parse_qsl

import trio

from .common import unwrapped

#: Seconds a connection has to send its request head.
READ_TIMEOUT = 10.0
#: Largest request head read (the redirect's query carries a code of a few KB).
MAX_HEAD = 64 * 1024
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 431: "Too Large"}


class Redirect:
    """The authority's redirect as the browser delivered it; answer it once with :meth:`respond`."""

    def __init__(self, params: dict[str, str], stream: trio.SocketStream) -> None:
        #: The query parameters (the first of repeated ones).
        self.params = params
        self._stream = stream

    async def respond(self, *, ok: bool, text: str) -> None:
        """Show the browser how the sign-in ended, then close the connection (a vanished browser is fine)."""
        title = "Signed in" if ok else "Sign-in failed"
        try:
            await _send_page(self._stream, 200 if ok else 400, title, text)
        finally:
            await self._stream.aclose()

    def __repr__(self) -> str:
        return f"Redirect(params={sorted(self.params)})"


class RedirectListener:
    """Listens on 127.0.0.1; :meth:`wait` returns the first redirect. Open with :func:`open_redirect_listener`."""

    def __init__(self, listener: trio.SocketListener) -> None:
        self._listener = listener
        self.port: int = listener.socket.getsockname()[1]

    @property
    def redirect_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def wait(self) -> Redirect:
        """Serve connections until one brings the redirect."""
        # Unbuffered: only the first redirect finds a receiver; later ones are told it was already handled.
        send, receive = trio.open_memory_channel[Redirect](0)
        with unwrapped():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._accept, nursery, send)
                redirect = await receive.receive()
                nursery.cancel_scope.cancel()
        return redirect

    async def _accept(self, nursery: trio.Nursery, send: trio.MemorySendChannel[Redirect]) -> None:
        while True:
            stream = await self._listener.accept()
            nursery.start_soon(self._serve, stream, send)

    async def _serve(self, stream: trio.SocketStream, send: trio.MemorySendChannel[Redirect]) -> None:
        handed_over = False
        try:
            head: bytes | None = None
            with trio.move_on_after(READ_TIMEOUT):
                head = await _read_head(stream)
            if head is None:
                return
            method, path, query = _request_line(head)
            if method != "GET":
                await _send_page(stream, 405, "Not allowed", "aadhelper only expects the sign-in redirect here.")
                return
            if path != "/":
                await _send_page(stream, 404, "Not found", "Nothing here.")
                return
            params: dict[str, str] = {}
            for name, value in parse_qsl(query, keep_blank_values=True):
                params.setdefault(name, value)
            if "code" not in params and "error" not in params:
                await _send_page(stream, 200, "Waiting", "aadhelper is waiting for the sign-in to finish in the "
                                                         "browser tab that the sign-in page opened.")
                return
            try:
                send.send_nowait(Redirect(params, stream))
                handed_over = True
            except trio.WouldBlock:
                await _send_page(stream, 400, "Already handled", "This sign-in was already answered; see the "
                                                                 "terminal.")
        except _HeadTooLarge:
            await _send_page(stream, 431, "Too large", "The request was too large.")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the browser went away
        finally:
            if not handed_over:
                await stream.aclose()


class _HeadTooLarge(Exception):
    pass


async def _read_head(stream: trio.SocketStream) -> bytes | None:
    """The request head up to the blank line; None when the peer closes first."""
    data = bytearray()
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD:
            raise _HeadTooLarge
        chunk = await stream.receive_some(8192)
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _request_line(head: bytes) -> tuple[str, str, str]:
    """(method, path, query) of the first line; anything unreadable becomes an unknown method."""
    parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
    if len(parts) != 3:
        return "", "", ""
    path, _, query = parts[1].partition("?")
    return parts[0], path, query


async def _send_page(stream: trio.SocketStream, status: int, title: str, text: str) -> None:
    body = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>aadhelper: {html.escape(title)}</title>"
            f"</head><body style=\"font-family: sans-serif; margin: 3em\"><h1>{html.escape(title)}</h1>"
            f"<p>{html.escape(text)}</p></body></html>").encode()
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: text/html; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nReferrer-Policy: no-referrer\r\n"
            "Connection: close\r\n\r\n").encode()
    with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(head + body)


@asynccontextmanager
async def open_redirect_listener() -> AsyncIterator[RedirectListener]:
    """A listener on 127.0.0.1 and a free port, closed on exit."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    try:
        yield RedirectListener(listeners[0])
    finally:
        for listener in listeners:
            await listener.aclose()
