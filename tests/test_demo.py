"""The demo's pieces that can be checked without its 20 s of watching a token refresh: its curl call."""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest

from aadhelper.demo import curl_command

PROXY_VARIABLES = ("ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY",
                   "no_proxy")


class _Api(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"seen": "' + self.headers.get("Authorization", "").encode() + b'"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def api() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1.0/me"
    finally:
        server.shutdown()
        server.server_close()


def test_curl_reaches_the_loopback_api_under_a_proxy(api: str) -> None:
    """If ALL_PROXY and HTTP_PROXY name a proxy (here one that refuses connections) and NO_PROXY is unset, then the
    demo's curl call still reaches its loopback API directly, with the header."""
    assert shutil.which("curl"), "curl is needed (the demo uses it when installed)"
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{closed.getsockname()[1]}"
    env = {key: value for key, value in os.environ.items() if key not in PROXY_VARIABLES}
    env.update(ALL_PROXY=proxy, all_proxy=proxy, HTTP_PROXY=proxy, http_proxy=proxy)
    result = subprocess.run(curl_command("Authorization: Bearer demo-token", api), env=env, capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == '{"seen": "Bearer demo-token"}'
