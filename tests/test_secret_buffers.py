"""The buffers that carry secrets are wiped once used: :func:`aadhelper.tokens.wipe`, the form body and reply of
:func:`aadhelper.grants.http.post_form` (against the simulated authority over real HTTPS), and the line buffers of
:class:`aadhelper.fetcher.wire.LineLink` (over a real socket pair)."""

from __future__ import annotations

import secrets
import ssl
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from aadhelper import protocol
from aadhelper.errors import ProtocolError
from aadhelper.fetcher.wire import LineLink
from aadhelper.grants.http import encode_form, post_form
from aadhelper.testing.authority import SimulatedAuthority
from aadhelper.tokens import Secret, wipe

TENANT = "contoso.onmicrosoft.com"
APP = "11111111-0000-0000-0000-000000000001"


def test_wipe_clears_bytearrays_and_bytes_in_place() -> None:
    """If wipe() is given a bytearray, a writable memoryview and bytes made at run time, then each keeps its length
    and holds only zeros; None, empty and one-byte values (shared singletons) are left alone."""
    secret = "s3cr3t-" + secrets.token_urlsafe(16)
    array, made, view_of = bytearray(secret.encode()), secret.encode(), bytearray(secret.encode())
    wipe(array, made, memoryview(view_of), None, b"", b"x")
    for buffer in (array, made, view_of):
        assert len(buffer) == len(secret) and set(buffer) == {0}
    assert bytes([0x78]) == b"x"  # the shared one-byte object was not touched


@given(st.dictionaries(st.text(max_size=8), st.text(max_size=40), max_size=5))
def test_encode_form_writes_what_urlencode_writes(form: dict[str, str]) -> None:
    """If a form of any text is encoded, then the body equals urllib's (what httpx sent before)."""
    assert encode_form(form) == urlencode(form).encode()


@pytest.fixture
def authority(server_ssl_context: ssl.SSLContext) -> Iterator[tuple[SimulatedAuthority, str]]:
    secret = "app-secret-" + secrets.token_urlsafe(24)
    with SimulatedAuthority(ssl_context=server_ssl_context) as authority:
        authority.add_tenant(TENANT)
        authority.add_client(APP, tenant=TENANT, secret=secret)
        yield authority, secret


def test_post_form_wipes_the_body_it_sent_and_the_reply_it_read(authority: tuple[SimulatedAuthority, str],
                                                                   client_ssl_context: ssl.SSLContext) -> None:
    """If a token request is posted to the authority, then afterwards the request body httpx sent (which held the
    client secret) is all zeros, and the token came through intact (the authority accepted the form)."""
    simulated, secret = authority
    sent: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        sent.append(request)

    async def main() -> tuple[int, Any]:
        async with httpx.AsyncClient(verify=client_ssl_context, event_hooks={"request": [record]}) as client:
            form = {"grant_type": "client_credentials", "client_id": APP, "client_secret": secret,
                    "scope": "https://graph.microsoft.com/.default"}
            status, _, body = await post_form(client, simulated.token_endpoint(TENANT), form, profile="p")
            return status, body

    status, body = trio.run(main)
    assert status == 200 and isinstance(body, dict) and simulated.validate(body["access_token"])
    assert len(sent) == 1 and len(sent[0].content) > len(secret)
    assert set(sent[0].content) == {0}, "the form body with the client secret was not wiped"


# -- the daemon-fetcher link --------------------------------------------------------------------------------

def linked() -> tuple[LineLink, trio.socket.SocketType]:
    ours, theirs = trio.socket.socketpair()
    return LineLink(ours), theirs


def test_received_lines_are_returned_whole_and_their_bytes_zeroed() -> None:
    """If lines arrive split across writes, several in one write, or longer than the first buffer, then each is
    returned whole and in order, and the buffer holds none of their bytes afterwards."""
    token = "tok-" + secrets.token_urlsafe(48)
    long = "x" * (3 * LineLink._FIRST_BUFFER)

    async def main() -> list[dict[str, Any]]:
        link, peer = linked()
        data = b"".join(protocol.encode({"v": 1, "n": n, "t": token}) for n in range(3))
        data += protocol.encode({"v": 1, "n": 3, "t": long}) + protocol.encode({"v": 1, "n": 4, "t": token})
        received = []
        async with trio.open_nursery() as nursery:
            async def feed() -> None:
                for start in range(0, len(data), 7001):
                    await peer.send(data[start:start + 7001])
                    await trio.sleep(0)
                peer.close()

            nursery.start_soon(feed)
            while (message := await link.receive()) is not None:
                received.append(message)
        assert token.encode() not in link._lines._buffer and b"xxxxxxxx" not in link._lines._buffer
        link.close()
        return received

    received = trio.run(main)
    assert [m["n"] for m in received] == [0, 1, 2, 3, 4]
    assert received[3]["t"] == long and received[4]["t"] == token


def test_a_line_longer_than_the_limit_is_a_protocol_error() -> None:
    """If the other end sends more than MAX_LINE bytes without a newline, then receive() raises ProtocolError
    (the buffer stops growing) instead of reading for ever."""
    async def main() -> None:
        link, peer = linked()
        async with trio.open_nursery() as nursery:
            async def flood() -> None:
                chunk = b"y" * 65536
                try:
                    while True:
                        await peer.send(chunk)
                except OSError:
                    pass

            nursery.start_soon(flood)
            with pytest.raises(ProtocolError, match="longer than"):
                await link.receive()
            assert len(link._lines._buffer) <= LineLink.MAX_LINE + 1
            link.close()
            peer.close()

    trio.run(main)


def test_a_sent_line_is_wiped_once_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """If a message with a token is sent, then the peer reads it, and the encoded line's bytes are zeros after."""
    token = "tok-" + secrets.token_urlsafe(48)
    encoded: list[bytes] = []
    real_encode = protocol.encode

    def encode(message: dict[str, Any]) -> bytes:
        encoded.append(real_encode(message))
        return encoded[-1]

    monkeypatch.setattr(protocol, "encode", encode)

    async def main() -> bytes:
        link, peer = linked()
        await link.send({"v": 1, "token": token})
        received = await peer.recv(65536)
        link.close()
        peer.close()
        return received

    received = trio.run(main)
    assert token.encode() in received
    assert len(encoded) == 1 and set(encoded[0]) == {0}


def _holds(value: object, secret: str, depth: int = 0) -> bool:
    """True when ``value`` is the secret (as text, bytes or a Secret) or a container (dict, list, tuple, set) that
    holds it."""
    if isinstance(value, Secret):
        return secret in value.reveal()
    if isinstance(value, str):
        return secret in value
    if isinstance(value, (bytes, bytearray)):
        return secret.encode() in value
    if depth < 4 and isinstance(value, dict):
        return any(_holds(v, secret, depth + 1) or _holds(k, secret, depth + 1) for k, v in value.items())
    if depth < 4 and isinstance(value, (list, tuple, set, frozenset)):
        return any(_holds(v, secret, depth + 1) for v in value)
    return False


def test_a_failed_request_keeps_no_secret_in_its_traceback(server_ssl_context: ssl.SSLContext,
                                                          ca_pem_file: Any) -> None:
    """If the authority refuses a client-secret request, then the error's traceback (kept by a cache's last error
    or a log record) holds the secret in none of its frames' variables."""
    from aadhelper.config import Profile
    from aadhelper.errors import AuthenticationFailed
    from aadhelper.fetcher import LocalFetcher
    from aadhelper.secret_store import MemorySecretStore

    secret = "wrong-secret-" + secrets.token_urlsafe(24)
    with SimulatedAuthority(ssl_context=server_ssl_context) as simulated:
        simulated.add_tenant(TENANT)
        simulated.add_client(APP, tenant=TENANT, secret="the-right-one")
        profile = Profile(name="p", tenant=TENANT, client_id=APP, scopes=("https://graph.microsoft.com/.default",),
                          authority=simulated.url, credential="client_secret", ca_bundle=str(ca_pem_file))
        store = MemorySecretStore()
        store.set("p", "client_secret", Secret(secret))

        async def main() -> BaseException:
            async with LocalFetcher(store) as fetcher:
                with pytest.raises(AuthenticationFailed) as caught:
                    await fetcher.source(profile).acquire(profile.scopes)
                return caught.value

        error = trio.run(main)
    frames, tb = [], error.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    assert frames
    holding = [frame.f_code.co_name for frame in frames if _holds(dict(frame.f_locals), secret)]
    assert not holding, f"frames holding the client secret: {holding}"
