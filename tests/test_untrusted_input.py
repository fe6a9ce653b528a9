"""Property tests of every surface issues 12 and 13 added that takes untrusted input: whatever arrives, the answer is
a well-formed result or one clear line, never a traceback, a hang, a leaked secret, or a loop against an endpoint.

- the exec endpoint's HTTP parser and handler (:mod:`aadhelper.loopback_http`, :mod:`aadhelper.mi_endpoint`),
  driven in-process over real loopback sockets (a shared endpoint; each example is one connection);
- ``KUBERNETES_EXEC_INFO`` and the ``az`` shim's argv, through the real ``aadhelper`` entry point in-process
  against a :class:`~aadhelper.testing.fake_daemon.FakeDaemon`;
- federated token files (:class:`~aadhelper.grants.federated.FederatedSource` reading a real file);
- managed-identity endpoint replies (the real source and cache over trio's autojump clock);
- the config keys of the new credential kinds (:func:`aadhelper.config.parse_config`).
"""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import json
import os
import random
import socket
import string
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis.strategies as st
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, example, given, settings

from aadhelper import cache as cache_module
from aadhelper.cache import TokenCache
from aadhelper.cli import main
from aadhelper.cli.kube_exec import API_V1, API_V1BETA1, EXEC_INFO_ENV
from aadhelper.config import Profile, parse_config
from aadhelper.errors import AadhelperError, AuthorityUnavailable, ConfigError
from aadhelper.grants.federated import FederatedSource
from aadhelper.grants.managed_identity import ManagedIdentitySource
from aadhelper.loopback_http import MAX_HEAD, Refusal, parse_head
from aadhelper.mi_endpoint import API_VERSION, PATH, Endpoint
from aadhelper.testing.fake_daemon import FakeDaemon

from .harness import wall

#: Status codes the SDKs retry (so a refusal must never use them).
RETRIED = (408, 429)
SECRET = "s3cret-header-value-that-is-long-enough-0123456789"
FAKE_TOKEN = "fake-access-token-for-the-properties"

# -- helpers ------------------------------------------------------------------------------------------------------


def one_line(text: str) -> bool:
    return bool(text.strip()) and "\n" not in text.strip() and "Traceback" not in text


@contextlib.contextmanager
def environ(**changes: str | None) -> Iterator[None]:
    """``os.environ`` with ``changes`` (None removes a variable) for the duration."""
    saved = {key: os.environ.get(key) for key in changes}
    try:
        for key, value in changes.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_main(argv: list[str]) -> tuple[int, str, str]:
    """``aadhelper ARGV`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(name="fake_daemon", scope="module")
def fake_daemon_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeDaemon]:
    """A fake daemon answering every token request, shared by the examples of a module's tests."""
    folder = tmp_path_factory.mktemp("fake")
    with FakeDaemon(folder / "run" / "daemon.sock", access_token=FAKE_TOKEN) as fake:
        config = folder / "config"
        config.mkdir()
        with environ(AADHELPER_SOCKET=fake.socket_path, AADHELPER_NO_AUTOSTART="1",
                     AADHELPER_CONFIG=str(config / "config.toml"), XDG_CONFIG_HOME=str(config)):
            yield fake


# -- 1. the exec endpoint's HTTP server ------------------------------------------------------------------------

#: Pieces of request heads: good ones, and the ways they go wrong.
METHODS = ["GET", "POST", "get", "HEAD", "G3T", "", "GET GET", "\x00", "GÉT"]
PATHS = [PATH, PATH + "/", "/", "/msi", "//[x" + PATH, "//host" + PATH, "*", "http://127.0.0.1" + PATH, "",
         "/%ff", PATH + "%00", "/" + "a" * 9000]
VERSIONS = ["HTTP/1.1", "HTTP/1.0", "HTTP/2", "http/1.1", "", "HTTP/1.1 x"]
QUERY_KEYS = ["api-version", "resource", "client_id", "mi_res_id", "x", "", "resource[]", "%ff", "api-version"]
QUERY_VALUES = [API_VERSION, "https://management.azure.com", "https://graph.microsoft.com/", "", "%", "%ff", "a b",
                "2018-02-01", "\u2028", "x" * 3000, "https%3A%2F%2Fvault.azure.net"]


@st.composite
def request_heads(draw: st.DrawFn) -> bytes:
    """A request head (ending in a blank line) that is usually almost right."""
    query_pairs = draw(st.lists(st.tuples(st.sampled_from(QUERY_KEYS) | st.text(max_size=8),
                                          st.sampled_from(QUERY_VALUES) | st.text(max_size=20)), max_size=5))
    separator = draw(st.sampled_from(["&", ";", "&&", "="]))
    query = separator.join(f"{key}={value}" for key, value in query_pairs)
    target = draw(st.sampled_from(PATHS)) + (f"?{query}" if query or draw(st.booleans()) else "")
    line = f"{draw(st.sampled_from(METHODS))} {target} {draw(st.sampled_from(VERSIONS))}"
    headers = []
    secret = draw(st.sampled_from([SECRET, SECRET[:-1], "", SECRET + "x", "wrong", None, SECRET.upper()]))
    if secret is not None:
        headers.append(f"{draw(st.sampled_from(['X-IDENTITY-HEADER', 'x-identity-header', 'X-Identity-Header ']))}:"
                       f" {secret}")
    headers += draw(st.lists(st.sampled_from([
        "Metadata: true", "Host: 127.0.0.1", "Connection: close", "Connection: keep-alive", "Content-Length: 0",
        "Content-Length: 5", "Transfer-Encoding: chunked", "X-IDENTITY-HEADER: " + SECRET, "Host: x",
        "no colon", ": empty name", "Bad Name: x", "X: " + "v" * 5000, "\t folded", "User-Agent: azsdk-python",
    ]) | st.text(max_size=30).map(lambda t: t.replace("\r\n", "")), max_size=6))
    head = "\r\n".join([line, *headers]) + "\r\n\r\n"
    return head.encode("utf-8", "surrogatepass")


def http_inputs() -> st.SearchStrategy[bytes]:
    """What a client may send on one connection: heads (one, or several pipelined), with or without trailing bytes,
    or arbitrary bytes."""
    return st.one_of(
        request_heads(),
        st.lists(request_heads(), min_size=2, max_size=4).map(b"".join),
        st.tuples(request_heads(), st.binary(max_size=200)).map(b"".join),
        st.binary(max_size=600),
        st.binary(max_size=300).map(lambda data: data + b"\r\n\r\n"),
    )


@settings(max_examples=2000, deadline=None)
@given(head=st.one_of(request_heads().map(lambda h: h[:-4]), st.binary(max_size=400)))
@example(head=b"GET //[x/msi/token HTTP/1.1")
def test_parse_head_reads_or_refuses_any_bytes(head: bytes) -> None:
    """If any bytes arrive as a request head, then the parser returns (method, target, headers, keep-alive) or
    raises a Refusal with a 4xx other than 408/429 and a one-line message, and nothing else."""
    try:
        method, target, headers, keep_alive = parse_head(head)
    except Refusal as refusal:
        assert 400 <= refusal.status < 500 and refusal.status not in RETRIED
        assert one_line(refusal.message)
        return
    assert method.isalpha() and target and isinstance(keep_alive, bool)
    assert all(key == key.lower() for key in headers)


@pytest.fixture(name="endpoint", scope="module")
def endpoint_fixture() -> Iterator[Endpoint]:
    """An exec endpoint whose token source always answers (any refusal is the request's own fault), with the
    server threads' uncaught exceptions recorded in ``endpoint.escaped``."""
    escaped: list[str] = []
    before = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        escaped.append(f"{args.exc_type.__name__}: {args.exc_value}")

    def fetch(scope: str) -> dict[str, Any]:
        return {"access_token": FAKE_TOKEN, "token_type": "Bearer", "expires_on": 4_000_000_000}

    threading.excepthook = hook
    try:
        with Endpoint("graph", fetch=fetch, secret=SECRET, head_deadline=5.0) as endpoint:
            endpoint.escaped = escaped  # type: ignore[attr-defined]
            yield endpoint
    finally:
        threading.excepthook = before


def exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection, end our side, and read everything until the server closes.

    The server drains what a refused client still sends, so it sees our end of input and closes: a read that
    times out here is a hang of the server's."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        with contextlib.suppress(OSError):  # a refusal may close before all of a large input was taken
            conn.sendall(data)
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_WR)
        received = bytearray()
        while True:
            try:
                chunk = conn.recv(65536)
            except ConnectionResetError:
                break
            except TimeoutError:  # pragma: no cover - the failure being tested for
                raise AssertionError(f"the endpoint hung on {data[:200]!r}") from None
            if not chunk:
                break
            received += chunk
    return bytes(received)


def replies(data: bytes) -> list[tuple[int, dict[str, Any]]]:
    """The HTTP replies in ``data``, each (status, JSON body); asserts each one is well-formed."""
    found = []
    while data:
        head, blank, data = data.partition(b"\r\n\r\n")
        assert blank, f"a reply head without its end: {head[:200]!r}"
        status_line, *lines = head.decode("ascii").split("\r\n")
        version, status, _ = status_line.split(" ", 2)
        assert version == "HTTP/1.1"
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        assert headers["content-type"] == "application/json"
        length = int(headers["content-length"])
        body, data = data[:length], data[length:]
        found.append((int(status), json.loads(body)))
    return found


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=http_inputs())
@example(data=b"GET //[x/msi/token?api-version=2019-08-01&resource=r HTTP/1.1\r\nX-IDENTITY-HEADER: "
              + SECRET.encode() + b"\r\n\r\n")
@example(data=b"GET /msi/token HTTP/1.1\r\n" + b"X: y\r\n" * 2000)
def test_the_exec_endpoint_answers_any_bytes_with_json_or_nothing(endpoint: Endpoint, data: bytes) -> None:
    """If a connection to the exec endpoint sends any bytes and closes its side, then every reply is a well-formed
    HTTP/1.1 JSON reply: a token (only for a request with the right secret) or a 4xx other than 408/429 with
    {"statusCode", "message"} (one line starting "aadhelper: ", never the secret) and never a handler failure
    (424); the server closes the connection, no server thread raises, and an incomplete head gets no reply."""
    for status, body in replies(exchange(endpoint.port, data)):
        if status == 200:
            assert body["access_token"] == FAKE_TOKEN and body["expires_on"] == "4000000000"
            assert SECRET.encode() in data
            continue
        assert 400 <= status < 500 and status not in RETRIED and status != 424, (status, body)
        assert body["statusCode"] == status and body["message"].startswith("aadhelper: ")
        assert one_line(body["message"]) and SECRET not in body["message"]
    assert not endpoint.escaped, endpoint.escaped  # type: ignore[attr-defined]


def test_a_head_over_the_limit_is_refused_with_431(endpoint: Endpoint) -> None:
    """If a request head exceeds MAX_HEAD bytes, then the endpoint answers one 431 and closes."""
    data = b"GET /msi/token HTTP/1.1\r\nX: " + b"v" * (MAX_HEAD + 10) + b"\r\n\r\n"
    assert [status for status, _ in replies(exchange(endpoint.port, data))] == [431]


# -- 2. KUBERNETES_EXEC_INFO ----------------------------------------------------------------------------------

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
KINDS = st.sampled_from(["ExecCredential", "", "Pod", "execcredential"]) | JSON_VALUES
API_VERSIONS = st.sampled_from([API_V1, API_V1BETA1, "client.authentication.k8s.io/v1alpha1", "", "v1",
                                API_V1 + " "]) | JSON_VALUES


@st.composite
def exec_infos(draw: st.DrawFn) -> str:
    """What kubectl (or anyone) may put in KUBERNETES_EXEC_INFO."""
    shape = draw(st.sampled_from(["credential", "json", "text"]))
    if shape == "credential":
        info: dict[str, Any] = {"spec": draw(st.sampled_from([{"interactive": False}, {}, None, "x"]))}
        if draw(st.booleans()):
            info["kind"] = draw(KINDS)
        if draw(st.booleans()):
            info["apiVersion"] = draw(API_VERSIONS)
        return json.dumps(info, ensure_ascii=draw(st.booleans()))
    if shape == "json":
        return json.dumps(draw(JSON_VALUES))
    return draw(st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
                        max_size=60))


def expected_version(text: str) -> str | None:
    """The apiVersion the plugin must answer in, or None when it must refuse (an independent reading of the
    contract in kube_exec.answer_version's docstring)."""
    if not text:
        return API_V1BETA1
    try:
        info = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(info, dict) or info.get("kind") not in (None, "", "ExecCredential"):
        return None
    version = info.get("apiVersion")
    if version is None or version == "":
        return API_V1BETA1
    return version if version in (API_V1, API_V1BETA1) else None


@settings(max_examples=400, deadline=None)
@given(info=exec_infos())
@example(info="[" * 100_000)
@example(info='{"apiVersion": "' + API_V1 + '", "kind": "ExecCredential"}')
@example(info='{"apiVersion": ["' + API_V1 + '"]}')
@example(info="\udcff")
def test_kubectl_credential_echoes_the_version_or_fails_with_one_line(fake_daemon: FakeDaemon, info: str) -> None:
    """If KUBERNETES_EXEC_INFO holds any text, then `aadhelper kubectl-credential P` either prints an ExecCredential
    in the apiVersion kubectl asked for (v1 or v1beta1; v1beta1 when none) with the daemon's token and an RFC 3339
    expiry, exit 0; or prints nothing on stdout and one line on stderr, exit 2, without asking the daemon."""
    asked = len(fake_daemon.requests)
    with environ(**{EXEC_INFO_ENV: info}):
        code, out, err = run_main(["kubectl-credential", "graph"])
    version = expected_version(info) if "\udcff" not in info else None
    if version is None:
        assert (code, out) == (2, ""), (code, out, err)
        assert one_line(err) and err.startswith("aadhelper: ")
        assert len(fake_daemon.requests) == asked
        return
    assert code == 0, err
    credential = json.loads(out)
    assert credential["apiVersion"] == version and credential["kind"] == "ExecCredential"
    assert credential["status"]["token"] == FAKE_TOKEN
    assert credential["status"]["expirationTimestamp"].endswith("Z")


# -- 3. the az shim's argv --------------------------------------------------------------------------------------

AZ_PIECES = ["account", "get-access-token", "--output", "-o", "json", "-ojson", "tsv", "--output=json",
             "--resource", "https://management.azure.com", "--resource=", "--scope", "https://graph.microsoft.com/.default",
             "--tenant", "-t", "contoso", "--subscription", "sub", "--profile", "graph", "--profile=graph",
             "--only-show-errors", "--force", "--debug", "-h", "-", "--", "", " ", "install-shim", "login", "ärger",
             "--scope=x", "--tenant=", "--query", "accessToken", "-x", "--resource=https://vault.azure.net"]


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=st.lists(st.sampled_from(AZ_PIECES) | st.text(max_size=6), max_size=8))
@example(argv=["account", "get-access-token", "--output", "json", "--resource", "https://management.azure.com"])
@example(argv=["install-shim", "--profile", "graph", "shims"])
def test_az_shim_prints_a_token_or_one_line(fake_daemon: FakeDaemon, tmp_path: Path, argv: list[str]) -> None:
    """If `aadhelper az` gets any argv, then it prints az's token JSON (integer expires_on, microseconds in
    expiresOn), exit 0; or its usage for --help, exit 0; or nothing on stdout and one stderr line with the
    documented exit code (2 for a command line it does not answer, 3 for a tenant it does not serve or an unknown
    profile), never a traceback."""
    argv = [arg.replace("\x00", "") for arg in argv]
    before = os.getcwd()
    os.chdir(tmp_path)  # install-shim's relative directories land here
    try:
        code, out, err = run_main(["az", *argv])
    finally:
        os.chdir(before)
    if code == 0 and out.startswith("usage:"):
        assert "-h" in argv or "--help" in argv
        return
    if code == 0:
        reply = json.loads(out)
        assert reply["accessToken"] == FAKE_TOKEN and type(reply["expires_on"]) is int
        assert len(reply["expiresOn"].rpartition(".")[2]) == 6 and reply["tokenType"] == "Bearer"
        assert argv.count("account") >= 1 and "get-access-token" in argv
        return
    assert out == "" and code in (2, 3), (code, out, err)
    assert one_line(err) and err.startswith("aadhelper: "), err


# -- 4. federated token files ---------------------------------------------------------------------------------

def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@st.composite
def token_contents(draw: st.DrawFn) -> bytes:
    """What a token file may hold: JWTs (good and subtly not), whitespace around them, or anything."""
    shape = draw(st.sampled_from(["jwt", "parts", "bytes", "text"]))
    if shape == "jwt":
        header = draw(st.sampled_from([b'{"alg":"RS256","typ":"JWT"}', b"{}", b"[]", b"null", b"{", b"\xff{}",
                                       b"[" * 3000, b'{"a":' * 2000]) | st.binary(max_size=30))
        parts = [b64url(header), b64url(draw(st.binary(max_size=40))), b64url(draw(st.binary(max_size=40)))]
        text = ".".join(parts).encode()
    elif shape == "parts":
        alphabet = string.ascii_letters + string.digits + "-_.=+/ \t\n"
        text = draw(st.text(alphabet=alphabet, max_size=60)).encode()
    elif shape == "bytes":
        text = draw(st.binary(max_size=200))
    else:
        text = draw(st.text(max_size=60)).encode("utf-8", "surrogatepass")
    padding = draw(st.sampled_from([b"", b"\n", b"  \r\n", b"\x00", b"\xa0"]))
    return draw(st.sampled_from([text + padding, padding + text, text]))


def looks_like_jwt(stripped: bytes) -> bool:
    """Three non-empty base64url parts whose first decodes to a JSON object (the contract, read independently)."""
    parts = stripped.split(b".")
    alphabet = set((string.ascii_letters + string.digits + "-_").encode())
    if len(parts) != 3 or not all(part and set(part) <= alphabet for part in parts):
        return False
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + b"=" * (-len(parts[0]) % 4)))
    except (ValueError, RecursionError):
        return False
    return isinstance(header, dict)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=token_contents())
@example(content=(b64url(b"[" * 5000) + ".e30.c2ln").encode())
@example(content=(b64url(b'{"a":' * 3000) + ".e30.c2ln").encode())
def test_a_token_file_is_posted_only_when_it_looks_like_a_jwt(tmp_path: Path, content: bytes) -> None:
    """If the federated token file holds any bytes, then the assertion posted is exactly its stripped content when
    that looks like a JWT; otherwise the exchange fails with AuthorityUnavailable (retried with backoff): one line
    naming the file and never its content."""
    path = tmp_path / "token"
    path.write_bytes(content)
    profile = parse_config(f'[profiles.wi]\ncredential = "federated"\ntenant = "t"\nclient_id = "app"\n'
                           f'scopes = ["api://x/.default"]\ntoken_file = "{path}"\n', "config.toml", {}).profile("wi")

    async def proof() -> dict[str, str]:
        async with httpx.AsyncClient() as client:
            return await FederatedSource(profile, client=client, clock=wall).proof()

    stripped = content.strip()
    try:
        form = trio.run(proof)
    except AuthorityUnavailable as exc:
        line = exc.one_line()
        assert one_line(line) and str(path) in line
        shown = stripped.decode("utf-8", "replace")
        if len(shown) >= 8:
            assert shown not in line, line
        assert not looks_like_jwt(stripped) or b"\x00" in content, content
        return
    assert form["client_assertion"] == stripped.decode("ascii")
    assert looks_like_jwt(stripped)


# -- 5. managed-identity endpoint replies ----------------------------------------------------------------------

MI_KEYS = ["access_token", "expires_on", "expires_in", "token_type", "resource", "refresh_in", "error",
           "error_description", "message", "statusCode", "client_id"]
MI_VALUES = (st.sampled_from(["tok", "", "Bearer", "bearer", "pop", "3600", "1e400", "nan", "-5", "7200", " 99 ",
                              "4000000000", "99999999999999999999", "\uff11\uff12", "12.5", "\u2028", "x\ny"])
             | JSON_VALUES | st.integers(min_value=-2**70, max_value=2**70) | st.floats())
RETRY_AFTERS = st.none() | st.sampled_from(["0", "120", "-1", "1e9", "999999999999999999999", "Mon, 01 Jan 0001 "
                                            "00:00:00 -0000", "Fri, 31 Dec 9999 23:59:59 GMT", "soon", "¹"]) \
    | st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30)


@st.composite
def mi_replies(draw: st.DrawFn) -> tuple[int, str | None, bytes]:
    """(status, Retry-After, body) of an endpoint reply: mostly JSON objects with the keys that matter."""
    status = draw(st.sampled_from([200, 200, 200, 400, 401, 403, 404, 410, 429, 500, 503, 302, 418]) |
                  st.integers(min_value=200, max_value=599))
    shape = draw(st.sampled_from(["object", "object", "json", "bytes"]))
    if shape == "object":
        body = json.dumps(draw(st.dictionaries(st.sampled_from(MI_KEYS), MI_VALUES, max_size=6)),
                          allow_nan=True).encode()
    elif shape == "json":
        body = json.dumps(draw(JSON_VALUES)).encode()
    else:
        body = draw(st.binary(max_size=100))
    return status, draw(RETRY_AFTERS), body


#: Simulated time each example's client asks for, and how often.
MI_DURATION = 3600.0
MI_INTERVAL = 2.0
IDENTITY_HEADER = "app-service-identity-header-secret-0123456789"


def mi_profile(source: str) -> Profile:
    text = (f'[profiles.vm]\ncredential = "managed_identity"\nscopes = ["https://vault.azure.net/.default"]\n'
            f'source = "{source}"\nendpoint = "http://identity.test/token"\n')
    return parse_config(text, "config.toml", {}, identity_environ={"IDENTITY_HEADER": IDENTITY_HEADER}) \
        .profile("vm")


@settings(max_examples=60, deadline=None)
@given(reply=mi_replies(), source=st.sampled_from(["imds", "app_service"]))
@example(reply=(429, "120", b"{}"), source="imds")
@example(reply=(200, None, b'{"access_token": "t", "expires_on": "99999999999999999999"}'), source="app_service")
@example(reply=(200, None, b'{"access_token": "t", "expires_in": "1e400"}'), source="imds")
@example(reply=(200, "Mon, 01 Jan 0001 00:00:00 -0000", b'{"access_token": "t", "expires_in": 301}'), source="imds")
def test_any_endpoint_reply_gives_a_token_or_one_line_and_never_a_loop(reply: tuple[int, str | None, bytes],
                                                                       source: str) -> None:
    """If a managed-identity endpoint answers every request with the same arbitrary reply (status, Retry-After,
    body) for a simulated hour while a client asks every 2 s, then each answer is a token or one line (never the
    endpoint's secret header), and the endpoint sees at most one request per backoff step: no two failed
    requests less than BACKOFF_START apart, and few requests in all."""
    status, retry_after, body = reply
    times: list[float] = []
    headers = [(b"Retry-After", retry_after.encode("latin-1"))] if retry_after is not None else []

    def handle(request: httpx.Request) -> httpx.Response:
        times.append(trio.current_time())
        return httpx.Response(status, headers=[(b"Content-Type", b"application/json"), *headers], content=body)

    profile = mi_profile(source)
    errors: list[AadhelperError] = []
    served = 0

    async def scenario() -> None:
        nonlocal served
        async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as client:
            mi = ManagedIdentitySource(profile, client=client, clock=wall)
            async with TokenCache(lambda _: mi, clock=wall, rng=random.Random(7)) as cache:
                end = trio.current_time() + MI_DURATION
                while trio.current_time() < end:
                    try:
                        await cache.get(profile)
                        served += 1
                    except AadhelperError as exc:
                        errors.append(exc)
                    await trio.sleep(MI_INTERVAL)

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
    for error in errors:
        assert one_line(error.one_line()) and IDENTITY_HEADER not in error.one_line()
    if not served:  # an endpoint that never gives a token is asked along the backoff only
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(gap >= cache_module.BACKOFF_START / 2 for gap in gaps), gaps[:10]
        assert len(times) <= 20 + MI_DURATION / (cache_module.BACKOFF_MAX / 2)
    # A token (of at least the minimum lifetime) is refreshed at most once per 30 s, and failures back off.
    assert len(times) <= MI_DURATION / 30 + 20, len(times)


# -- 6. config values of the new keys ---------------------------------------------------------------------------

NEW_KEYS = {"certificate": ["certificate_path", "x5c", "assertion_alg"],
            "federated": ["token_file", "token_command"],
            "managed_identity": ["source", "endpoint", "client_id", "object_id", "msi_res_id", "arc_key_dir"]}


def toml_value(value: Any) -> str:
    """``value`` as a TOML literal (strings as basic strings: JSON's escapes are TOML's)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if value == value and abs(value) != float("inf") else \
            ("nan" if value != value else ("inf" if value > 0 else "-inf"))
    if isinstance(value, str):  # raw non-ASCII (TOML refuses JSON's surrogate-pair escapes); DEL escaped
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return "{" + ", ".join(f"{json.dumps(key)} = {toml_value(item)}" for key, item in value.items()) + "}"


TOML_STRINGS = st.sampled_from(["imds", "app_service", "arc", "IMDS", "", "PS256", "RS256", "ps256", "/tmp/x",
                                "~/x.pem", "relative.pem", "/dev/null", "http://127.0.0.1:1/x", "ftp://x", "http://",
                                "x\x00y", "/a\x00b", "00000000-0000-0000-0000-000000000000", "\u2028",
                                "https://[::1", "http://[x/"]) \
    | st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=20)
TOML_VALUES = st.recursive(st.booleans() | st.integers(min_value=-2**63, max_value=2**63 - 1) | st.floats()
                           | TOML_STRINGS,
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(string.ascii_letters, min_size=1, max_size=5), inner, max_size=2),
                           max_leaves=6)


@settings(max_examples=1500, deadline=None)
@given(kind=st.sampled_from(sorted(NEW_KEYS)), data=st.data())
@example(kind="federated", data=None)
def test_new_config_values_parse_or_fail_with_one_line_naming_file_profile_and_key(kind: str,
                                                                                   data: st.DataObject | None) -> None:
    """If a new kind's key holds any TOML value, then the config parses, or raises ConfigError: one line naming the
    file, the profile and the key (never another exception)."""
    value: Any
    if data is None:
        key, value = "token_command", ["/bin/x", "a\x00b"]
    else:
        key = data.draw(st.sampled_from(NEW_KEYS[kind]))
        value = data.draw(TOML_VALUES)
    text = (f'[profiles.prof]\ncredential = "{kind}"\ntenant = "t"\nclient_id = "app"\n'
            f'scopes = ["https://vault.azure.net/.default"]\n')
    if kind == "managed_identity":
        text = text.replace('tenant = "t"\nclient_id = "app"\n', "")
        if key != "source":
            text += 'source = "imds"\n'
    text += f"{key} = {toml_value(value)}\n"
    try:
        parse_config(text, "/etc/aadhelper/config.toml", {}, identity_environ={}).profile("prof")
    except ConfigError as exc:
        line = exc.one_line()
        assert one_line(line), line
        assert "/etc/aadhelper/config.toml" in line and "prof" in line, line
        assert key in line, line
