"""Talking to the authority's token endpoint: TLS set-up, the form POST, and the one place where transport
failures and authority error bodies become aadhelper errors.

Every grant posts through :func:`post_form` and reads the reply with :func:`parse_token_reply` or
:func:`raise_for_error`, so the mapping from httpx exceptions and Entra ``error``/AADSTS codes to our
exception classes lives here only (httpx's own ``map_httpcore_exceptions`` is the model). Messages carry
the authority's ``error``, AADSTS code and the first sentence of ``error_description`` (never a secret:
Entra does not echo secrets), plus the fix.

Whatever the authority sends, one exchange is bounded: :data:`REQUEST_TIMEOUT` for all of it (connect, TLS,
the form, the whole reply) and :data:`MAX_REPLY_BYTES` for the reply, read as a stream. A failure of the
network or of the authority is :class:`AuthorityUnavailable` (retried with backoff); a certificate that does
not verify is a :class:`ConfigError` (retrying cannot fix it); a reply that is no usable token (no access token,
a lifetime that is not a finite number of seconds, a token type other than Bearer) is "malformed", and no NaN
or infinity ever reaches a :class:`Token`.
"""

from __future__ import annotations

import base64
import email.utils
import errno
import json
import logging
import math
import os
import re
import socket
import ssl
import time
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import trio

from ..errors import AadhelperError, AuthenticationFailed, AuthorityUnavailable, ConfigError, LoginRequired
from ..proxy import DIRECT, ProxySetting
from ..tokens import Secret, Token, TokenResponse, wipe

log = logging.getLogger("aadhelper.grants")

#: Total seconds for one exchange with the authority: connect, TLS handshake, sending the form and reading the
#: whole reply. httpx's timeouts bound each step (each read); this bounds their sum, so an authority that drips
#: its reply a byte at a time cannot hold a fetch for ever. Entra answers in well under a second normally.
#: Read when each exchange starts.
REQUEST_TIMEOUT = 30.0
#: The largest reply read. A token reply is a few KiB, id token included; anything bigger is cut off (and never
#: buffered whole), so a broken or hostile endpoint cannot fill the fetcher's memory.
MAX_REPLY_BYTES = 1024 * 1024
#: The longest lifetime a token is kept, whatever ``expires_in`` says. Entra's access tokens live 60-90 minutes
#: (configurable lifetimes and managed identity: at most 24 h). A longer claim is clamped rather than refused:
#: keeping the token for a day and refreshing then is always safe, refusing would make an odd but working
#: authority unusable; and a clamped lifetime keeps every expiry time a representable date (10^18 s is not).
MAX_TOKEN_LIFETIME = 24 * 3600.0
#: The shortest ``expires_in`` (and ``refresh_in``) taken: below a second a token is spent before anyone can use
#: it, and an expiry "now + 1e-200" rounds to "now". Entra's shortest is 10 minutes.
MIN_TOKEN_LIFETIME = 1.0
#: Cap on a Retry-After we honour (MSAL's cap).
MAX_RETRY_AFTER = 3600.0

# Asking for an uncompressed reply keeps the size limit honest: a compressed body could expand far beyond it
# between two checks.
_REQUEST_HEADERS = {"Accept": "application/json", "Accept-Encoding": "identity"}
_FORM_HEADERS = {**_REQUEST_HEADERS, "Content-Type": "application/x-www-form-urlencoded"}
_TLS_HINT = ("if the authority URL is right, set the profile's ca_bundle (or SSL_CERT_FILE) to the CA that signs "
             "its certificate")
_RETRY_HINT = "aadhelper retries with backoff"

# Authority `error` values after which the user must sign in again interactively.
_LOGIN_ERRORS = frozenset({"invalid_grant", "interaction_required", "consent_required", "login_required"})
# ... and after which trying again later is worthwhile.
_RETRYABLE_ERRORS = frozenset({"temporarily_unavailable", "server_error"})

# AADSTS code -> what the user should do. `{profile}` is filled in.
_HINTS: Mapping[int, str] = {
    7000215: "the client secret is wrong: store the right one with `aadhelper secret set {profile}`",
    7000222: "the client secret has expired: create a new one in the app registration, then "
             "`aadhelper secret set {profile}`",
    700016: "the application (client id) is not known in this tenant: check tenant and client id "
            "(`aadhelper profile show {profile}`)",
    90002: "the tenant was not found: check the tenant and the cloud (`authority`) of the profile",
    9001023: "client credentials need a real tenant id or domain, not common/consumers/organizations",
    70011: "check the profile's scopes: one resource ending in /.default",
    1002012: "client credentials need a scope of the form <resource>/.default",
    500011: "the resource is not known in this tenant, or the app has no permission for it: check the scope",
    65001: "the app needs consent for this resource: run `aadhelper login {profile}`",
    700022: "check the profile's scopes: client credentials take exactly one resource",
    70008: "the sign-in has expired: run `aadhelper login {profile}`",
    700082: "the sign-in has expired: run `aadhelper login {profile}`",
    50173: "the sign-in was revoked: run `aadhelper login {profile}`",
    70043: "the sign-in is too old for the tenant's policy: run `aadhelper login {profile}`",
    50076: "multi-factor authentication is required: run `aadhelper login {profile}`",
    50079: "multi-factor authentication registration is required: run `aadhelper login {profile}`",
}


def make_ssl_context(ca_bundle: str | None) -> ssl.SSLContext:
    """Verifying TLS context: the profile's CA bundle, else the system store (which honours SSL_CERT_FILE/DIR)."""
    try:
        return ssl.create_default_context(cafile=ca_bundle) if ca_bundle else ssl.create_default_context()
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the CA bundle {ca_bundle}: {exc.strerror or exc}",
                          hint="fix the profile's ca_bundle path") from None


class HttpClients:
    """One :class:`httpx.AsyncClient` per CA bundle and proxy setting, shared by all profiles that use them; closed
    with :meth:`aclose`.

    A CA bundle file replaced or edited in place (how a user fixes a certificate that does not verify) gets a
    new client, with the new CAs, at the next :meth:`get`: clients are kept per file version, not per path.
    The proxy is only ever the one given (:mod:`aadhelper.proxy`): httpx's own reading of ``HTTPS_PROXY``,
    ``NO_PROXY``, ``SSL_CERT_FILE`` and ``.netrc`` is off (``trust_env=False``), so no variable of whatever
    environment the process has can send a fetch elsewhere. ``SSL_CERT_FILE``/``SSL_CERT_DIR`` still count, through
    :func:`make_ssl_context` (OpenSSL's default paths).
    """

    def __init__(self) -> None:
        self._clients: dict[tuple[str | None, tuple[int, ...] | None, str | None, tuple[str, ...]],
                            httpx.AsyncClient] = {}

    def get(self, ca_bundle: str | None, proxy: ProxySetting = DIRECT) -> httpx.AsyncClient:
        key = (ca_bundle, _file_version(ca_bundle), proxy.url, proxy.no_proxy)
        client = self._clients.get(key)
        if client is None:
            # The timeout bounds each step of an exchange; post_form bounds the whole exchange.
            client = httpx.AsyncClient(verify=make_ssl_context(ca_bundle), timeout=REQUEST_TIMEOUT,
                                       follow_redirects=False, trust_env=False,
                                       headers={"User-Agent": f"aadhelper/{_version()}"}, **_proxy_options(proxy))
            if proxy.url is not None:
                _PROXIES[client] = proxy
                log.debug("fetches through the proxy %s (%s)", proxy.shown_url(), proxy.source)
            # Clients of older versions of the file stay until aclose: a source may still hold one, and there is
            # one per edit of the file, which is rare.
            self._clients[key] = client
        return client

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


# The proxy each client was built with, for messages (a failure may be the proxy's, not the authority's).
_PROXIES: weakref.WeakKeyDictionary[httpx.AsyncClient, ProxySetting] = weakref.WeakKeyDictionary()


def _proxy_options(proxy: ProxySetting) -> dict[str, Any]:
    """httpx's ``proxy`` and, for the no_proxy hosts, ``mounts`` without a proxy (httpx's own patterns: "*host"
    matches the host and its subdomains, as curl's NO_PROXY does)."""
    if proxy.url is None or proxy.bypasses_all:
        return {}
    mounts: dict[str, httpx.AsyncBaseTransport | None] = {
        f"all://{_mount_host(host)}": None for host in proxy.no_proxy}
    return {"proxy": proxy.url, "mounts": mounts}


def _mount_host(host: str) -> str:
    bare = host.strip("[]")
    if ":" in bare:
        return f"[{bare}]"  # an IPv6 address
    return host if bare.replace(".", "").isdigit() else f"*{host}"


def _file_version(path: str | None) -> tuple[int, ...] | None:
    """What changes when a file is replaced or rewritten; None without a file (make_ssl_context then says why)."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _version() -> str:
    from .. import __version__

    return __version__


async def post_form(client: httpx.AsyncClient, url: str, form: Mapping[str, str], *,
                    profile: str) -> tuple[int, Mapping[str, str], dict[str, Any] | None]:
    """POST a form; return (status, headers, JSON object or None).

    The whole exchange ends within :data:`REQUEST_TIMEOUT` and reads at most :data:`MAX_REPLY_BYTES`. Transport
    failures, a timeout and an oversized reply raise AuthorityUnavailable; a certificate that does not verify
    raises ConfigError.

    The form carries a secret (a client secret, a refresh token) and the reply a token: the body is encoded here
    (:func:`encode_form`) rather than by httpx, and both it and the reply's bytes are wiped once the exchange is
    over (:func:`~aadhelper.tokens.wipe`), so a refresh leaves no copy of them in freed memory.
    """
    body = encode_form(form)
    try:
        return await _exchange(client, "POST", url, profile=profile, content=body, headers=_FORM_HEADERS)
    finally:
        # httpx sends this very object (h11 joins a single bytes into itself) and never sends it again.
        wipe(body)


async def get_json(client: httpx.AsyncClient, url: str, *, profile: str, params: Mapping[str, str] | None = None,
                   headers: Mapping[str, str] | None = None, peer: str = "the authority",
                   timeout: float | None = None, connect_timeout: float | None = None,
                   unreachable: str | None = None) -> tuple[int, Mapping[str, str], dict[str, Any] | None]:
    """GET ``url`` (a managed identity's endpoint with its query; the OpenID discovery document, which
    ``aadhelper doctor`` asks for to test TLS, the proxy and the clock); return (status, headers, JSON object or
    None).

    Bounded and mapped as :func:`post_form` (within ``timeout`` seconds, default :data:`REQUEST_TIMEOUT`), with
    messages naming ``peer``. ``connect_timeout`` shortens the wait for the connection alone (IMDS: nothing
    answering means no managed identity here); ``unreachable`` is then the message when no connection could be made
    at all.
    """
    return await _exchange(client, "GET", url, profile=profile, params=params,
                           headers={**_REQUEST_HEADERS, **(headers or {})}, peer=peer, timeout=timeout,
                           connect_timeout=connect_timeout, unreachable=unreachable)


async def _exchange(client: httpx.AsyncClient, method: str, url: str, *, profile: str, headers: Mapping[str, str],
                    content: bytes | None = None, params: Mapping[str, str] | None = None,
                    peer: str = "the authority", timeout: float | None = None, connect_timeout: float | None = None,
                    unreachable: str | None = None) -> tuple[int, Mapping[str, str], dict[str, Any] | None]:
    """One bounded request/reply (see :func:`post_form`); the reply's bytes are wiped once parsed."""
    deadline = REQUEST_TIMEOUT if timeout is None else timeout
    replied = False
    content_read: bytearray | None = None
    http_timeout = httpx.Timeout(deadline, connect=connect_timeout) if connect_timeout is not None else None
    options: dict[str, Any] = {"timeout": http_timeout} if http_timeout is not None else {}
    started = time.monotonic()
    try:
        with trio.fail_after(deadline):
            async with client.stream(method, url, content=content, params=params, headers=headers,
                                     **options) as response:
                replied = True
                content_read = await _read_limited(response, profile)
        # What `-v` shows: what was asked, of whom, how long it took (the URL holds no secret; a form or a
        # managed identity's header does, and is not logged).
        log.debug("%s %s (profile %s): HTTP %d in %.0f ms", method, url, profile, response.status_code,
                  1000 * (time.monotonic() - started))
        return response.status_code, response.headers, _json_object(content_read)
    except httpx.ConnectTimeout:
        if unreachable is not None:
            raise AuthorityUnavailable(f"{unreachable} (no connection within {connect_timeout:g} s)",
                                       profile=profile, hint=_RETRY_HINT) from None
        raise AuthorityUnavailable(f"{peer} at {_host(url)} did not answer within {deadline:g} s", profile=profile,
                                   hint=f"check the network; {_RETRY_HINT}") from None
    except (trio.TooSlowError, httpx.TimeoutException):
        raise AuthorityUnavailable(f"{peer} at {_host(url)} did not answer within {deadline:g} s",
                                   profile=profile, hint=f"check the network; {_RETRY_HINT}") from None
    except httpx.ConnectError as exc:
        if unreachable is not None and not _tls_failure(exc):
            raise AuthorityUnavailable(f"{unreachable} ({_reason(exc)})", profile=profile, hint=_RETRY_HINT) from None
        raise _transport_error(exc, url, profile, replied=replied, proxy=_PROXIES.get(client), peer=peer) from None
    except httpx.LocalProtocolError:
        # httpx refuses, before sending anything, a header value or URL that HTTP does not allow, and its message
        # quotes the value: that may be a secret (a managed identity's header), so it is never shown.
        raise AuthorityUnavailable(f"the request to {peer} at {_host(url)} was not sent: a header or the URL holds "
                                   "characters HTTP does not allow", profile=profile,
                                   hint=f"check the endpoint's settings; {_RETRY_HINT}") from None
    except httpx.HTTPError as exc:
        raise _transport_error(exc, url, profile, replied=replied, proxy=_PROXIES.get(client), peer=peer) from None
    finally:
        wipe(content_read)


def _tls_failure(exc: BaseException) -> bool:
    return any(isinstance(cause, ssl.SSLError) for cause in _causes(exc))


#: quote_plus's characters that stand for themselves in a form (RFC 3986 unreserved).
_FORM_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")
#: Each byte as it appears in a form: itself, "+" for a space, else "%XX".
_FORM_BYTES = tuple(bytes([byte]) if byte in _FORM_SAFE else b"+" if byte == 0x20 else b"%%%02X" % byte
                    for byte in range(256))


def encode_form(form: Mapping[str, str]) -> bytes:
    """``application/x-www-form-urlencoded`` as :func:`urllib.parse.urlencode` writes it, built without the
    intermediate copies of each value that urlencode makes (the value encoded, quoted, joined with its key, the
    whole body as text, then as bytes): the one result is a buffer the caller wipes after use."""
    # Keys are not secret: quoted the simple way.
    parts = [(b"".join(_FORM_BYTES[byte] for byte in key.encode()) + b"=", value) for key, value in form.items()]
    size = sum(len(key) + sum(len(_FORM_BYTES[byte]) for byte in _utf8(value)) for key, value in parts)
    size += max(len(parts) - 1, 0)
    buffer = bytearray(size)  # its final size at once: growing it would leave copies behind in freed memory
    at = 0
    for key, value in parts:
        if at:
            buffer[at] = 0x26  # "&"
            at += 1
        buffer[at:at + len(key)] = key
        at += len(key)
        for byte in _utf8(value):
            for out in _FORM_BYTES[byte]:
                buffer[at] = out
                at += 1
    body = bytes(buffer)
    wipe(buffer)
    return body


def _utf8(text: str) -> Iterator[int]:
    """The UTF-8 bytes of ``text`` one at a time, without a copy of the whole (characters are shared singletons
    in CPython up to U+00FF; a longer one becomes a few bytes at a time)."""
    for char in text:
        code = ord(char)
        if code < 0x80:
            yield code
        else:
            yield from char.encode("utf-8", "surrogatepass")


async def _read_limited(response: httpx.Response, profile: str) -> bytearray:
    """The reply's body, read as a stream and refused as soon as it exceeds :data:`MAX_REPLY_BYTES`; the caller
    wipes it. It is put together once at its final size (a buffer grown chunk by chunk would leave its earlier
    blocks in freed memory), and each chunk is wiped once copied."""
    declared = response.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > MAX_REPLY_BYTES:
        raise _too_big(profile)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_REPLY_BYTES:
                raise _too_big(profile)  # leaving the stream closes the connection: the rest is never read
        body = bytearray(size)
        at = 0
        for chunk in chunks:
            body[at:at + len(chunk)] = chunk
            at += len(chunk)
        return body
    finally:
        wipe(*chunks)


def _too_big(profile: str) -> AuthorityUnavailable:
    limit = f"{MAX_REPLY_BYTES / 2**20:g} MiB" if MAX_REPLY_BYTES >= 2**20 else f"{MAX_REPLY_BYTES} bytes"
    return AuthorityUnavailable(f"the authority's reply exceeds {limit}", profile=profile,
                                hint=f"a token reply is a few KiB: check the profile's authority; {_RETRY_HINT}")


def _json_object(content: bytes | bytearray | None) -> dict[str, Any] | None:
    if content is None:
        return None
    try:
        parsed = json.loads(content)
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than the parser goes
        return None
    return parsed if isinstance(parsed, dict) else None


def _host(url: str) -> str:
    return httpx.URL(url).host or url


def _transport_error(exc: httpx.HTTPError, url: str, profile: str, *, replied: bool,
                     proxy: ProxySetting | None = None, peer: str = "the authority") -> AadhelperError:
    """The error for a failed exchange: ConfigError for a certificate that does not verify, else
    AuthorityUnavailable saying where it broke (``replied``: the status line and headers had arrived) and through
    which proxy, if any."""
    host = _host(url)
    if proxy is not None and proxy.used_for(host):
        # Every message below names the host; through a proxy, the failure may be the proxy's.
        where = "config [daemon] proxy" if proxy.source == "config" else f"{proxy.variable} of the daemon's start " \
                                                                         "environment"
        host = f"{host} through the proxy {proxy.shown_url()} ({where})"
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            reason = printable(cause.verify_message or str(cause), 200)
            return ConfigError(f"the TLS certificate of {peer} at {host} does not verify ({reason})",
                               profile=profile, hint=_TLS_HINT)
    reason = _reason(exc)
    if replied:
        message = f"the connection to {peer} at {host} broke in the middle of the reply ({reason})"
    elif isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        message = f"cannot reach {peer} at {host}: {_connect_failure(exc, reason)}"
    elif isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
        message = f"{peer} at {host} closed the connection without a reply ({reason})"
    else:
        message = f"the exchange with {peer} at {host} failed: {reason}"
    setting = "authority" if peer == "the authority" else "endpoint"
    return AuthorityUnavailable(message, profile=profile,
                                hint=f"check the network and the profile's {setting}; {_RETRY_HINT}")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what caused it, depth first, through exception groups too (trio reports a failed connect as a
    group of per-address errors)."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending and len(seen) < 50:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            pending.extend(reversed(current.exceptions))
        for linked in (current.__context__, current.__cause__):
            if linked is not None:
                pending.append(linked)


def _reason(exc: BaseException) -> str:
    """Why a transport failed, in a few words: the OS error (``connection refused``), else httpx's message."""
    for cause in _causes(exc):
        # Both are OSErrors whose errno is no errno: an OpenSSL error code, a resolver (EAI_*) code.
        if isinstance(cause, ssl.SSLError):
            return "TLS error: " + (printable(cause.reason or str(cause), 80) or "").lower().replace("_", " ")
        if isinstance(cause, socket.gaierror):
            return printable(cause.strerror or str(cause), 80) or "the name does not resolve"
        if isinstance(cause, OSError) and cause.errno and cause.errno > 0:
            return os.strerror(cause.errno).lower()
    return printable(str(exc), 120) or type(exc).__name__


#: What a failed connect means, by errno, in words that tell refused from unreachable from timed out.
_CONNECT_FAILURES = {
    errno.ECONNREFUSED: "connection refused (nothing listens on that port, or a firewall rejects the connection)",
    errno.ETIMEDOUT: "connecting timed out (no answer: a firewall dropping packets, or the host is down)",
    errno.ENETUNREACH: "the network is unreachable (no route to it: offline, or a VPN is needed)",
    errno.EHOSTUNREACH: "no route to the host (offline, or a VPN is needed)",
    errno.ECONNRESET: "the connection was reset while connecting (a proxy or firewall in between?)",
}


def _connect_failure(exc: httpx.HTTPError, reason: str) -> str:
    """Why a connection could not be made: the name does not resolve (DNS), refused, unreachable or timed out."""
    if isinstance(exc, httpx.ConnectTimeout):
        return "connecting timed out (no answer: a firewall dropping packets, or the host is down)"
    for cause in _causes(exc):
        if isinstance(cause, socket.gaierror):
            return f"its name does not resolve (DNS: {reason})"
        if isinstance(cause, OSError) and cause.errno in _CONNECT_FAILURES:
            return _CONNECT_FAILURES[cause.errno]
    return reason


def raise_for_error(status: int, headers: Mapping[str, str], body: Mapping[str, Any] | None, *,
                    profile: str, action: str = "token request") -> None:
    """Raise the aadhelper error for a non-200 reply (or a 200 that carries an ``error``)."""
    error = printable(body.get("error"), 80) if body else None
    if status == 200 and not error:
        return
    retry_after = parse_retry_after(headers.get("retry-after"))
    if not isinstance(error, str) or not error:
        if status == 429 or status >= 500:
            later = f", retry after {retry_after:.0f} s" if retry_after is not None else ""
            what = f"throttled the request (HTTP 429{later})" if status == 429 else f"failed with HTTP {status}{later}"
            raise AuthorityUnavailable(f"the authority {what}", profile=profile, retry_after=retry_after,
                                       hint=_RETRY_HINT)
        raise AuthorityUnavailable(f"the authority answered the {action} with HTTP {status} and no error body",
                                   profile=profile, retry_after=retry_after)
    aadsts = _aadsts(body)
    summary = _summary(body)
    hint = _HINTS.get(aadsts or 0, "").format(profile=profile) or None
    claims = body.get("claims") if body else None
    common: dict[str, Any] = {"profile": profile, "error": error, "aadsts": aadsts, "hint": hint,
                              "retry_after": retry_after, "claims": claims if isinstance(claims, str) else None,
                              "reason": summary or None}
    text = f"the authority refused the {action}" + (f": {summary}" if summary else "")
    if status == 429 or status >= 500 or error in _RETRYABLE_ERRORS:
        later = f", retry after {retry_after:.0f} s" if retry_after is not None else ""
        common["hint"] = hint or _RETRY_HINT
        raise AuthorityUnavailable(f"{text} (HTTP {status}{later})", **common)
    if error in _LOGIN_ERRORS:
        common["hint"] = hint or f"run `aadhelper login {profile}`"
        raise LoginRequired(text, **common)
    raise AuthenticationFailed(text, **common)


def _aadsts(body: Mapping[str, Any] | None) -> int | None:
    if not body:
        return None
    codes = body.get("error_codes")
    if isinstance(codes, list) and codes and isinstance(codes[0], int) and not isinstance(codes[0], bool):
        return codes[0]
    description = body.get("error_description")
    if isinstance(description, str):
        match = re.match(r"AADSTS(\d+)", description)
        if match:
            return int(match.group(1))
    return None


def _summary(body: Mapping[str, Any] | None) -> str:
    """The first sentence of ``error_description`` without the AADSTS prefix, trace ids and timestamps."""
    description = body.get("error_description") if body else None
    if not isinstance(description, str):
        return ""
    text = re.sub(r"^AADSTS\d+:\s*", "", description.strip())
    text = re.split(r"\r?\n|\s+Trace ID:", text, maxsplit=1)[0]
    sentence = re.match(r"(.+?\.)(\s|$)", text)
    text = sentence.group(1) if sentence else text
    return printable(text, 200) or ""


def printable(value: object, limit: int) -> str | None:
    """Text from a peer (the authority, a managed-identity endpoint, a TLS or resolver error) made safe for a
    one-line message: every character that is not printable (newlines, escapes, controls) becomes a space, and at
    most ``limit`` characters are kept. None when ``value`` is not text (a JSON number, null, an object)."""
    if not isinstance(value, str):
        return None
    return "".join(ch if ch.isprintable() else " " for ch in value)[:limit]


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds (delta-seconds or HTTP date), capped; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    seconds: float | None = None
    if value.isascii() and value.isdigit():  # isdigit() alone takes "¹" (a latin-1 header byte), float() does not
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def parse_token_reply(body: Mapping[str, Any] | None, *, scopes: tuple[str, ...], now: float,
                      profile: str, peer: str = "the authority") -> TokenResponse:
    """A successful token reply as a :class:`TokenResponse`; anything malformed is AuthorityUnavailable.

    ``expires_in`` must be a finite number of seconds, at least :data:`MIN_TOKEN_LIFETIME` (a number or a numeric
    string), and is clamped to :data:`MAX_TOKEN_LIFETIME`; ``refresh_in`` is advice, dropped unless it would pass
    the same test and comes before expiry.
    """
    def malformed(what: str) -> AuthorityUnavailable:
        return AuthorityUnavailable(f"{peer} sent a malformed token reply ({what})", profile=profile,
                                    hint=_RETRY_HINT)

    if body is None:
        raise malformed("not a JSON object")
    access_token = body.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise malformed("no access_token")
    token_type = body.get("token_type", "Bearer")
    if not isinstance(token_type, str):
        raise malformed("bad token_type")
    # We send the token as "Bearer <token>". Entra issues Bearer, or "pop" only when a proof-of-possession token
    # is asked for (never here); a token of another type does not work as a Bearer header at Graph or ARM.
    if token_type.lower() != "bearer":
        raise malformed(f"token_type {printable(token_type, 20)!r} is not Bearer")
    expires_in = _lifetime(body.get("expires_in"))
    if expires_in is None:
        raise malformed("bad expires_in")
    expires_in = min(expires_in, MAX_TOKEN_LIFETIME)
    refresh_in = _lifetime(body.get("refresh_in"))
    refresh_token = body.get("refresh_token")
    id_token = body.get("id_token")
    token = Token(
        access_token=Secret(access_token),
        # "bearer" from some authorities; headers conventionally say "Bearer".
        token_type="Bearer",
        expires_on=now + expires_in,
        refresh_on=now + refresh_in if refresh_in is not None and refresh_in < expires_in else None,
        scopes=scopes,
        obtained_at=now,
        account=account_of(id_token) if isinstance(id_token, str) else None,
    )
    return TokenResponse(
        token=token,
        refresh_token=Secret(refresh_token) if isinstance(refresh_token, str) and refresh_token else None,
    )


def account_of(id_token: str) -> str | None:
    """The signed-in account an id token names (``preferred_username``), for display and git usernames only: the
    token is not verified, and nothing is decided by it."""
    claims = unverified_claims(id_token)
    for key in ("preferred_username", "upn", "email", "name"):
        value = claims.get(key)
        if isinstance(value, str) and value.isprintable() and 0 < len(value) <= 256:
            return value
    return None


def tenant_of(id_token: str) -> str | None:
    """The tenant (``tid``) an id token's account signed in to, for display only (not verified, as above)."""
    value = unverified_claims(id_token).get("tid")
    return value if isinstance(value, str) and value.isprintable() and 0 < len(value) <= 256 else None


def unverified_claims(jwt: str) -> dict[str, Any]:
    """The claims of a JWT, read without verifying its signature (for display and checks of our own, never for a
    decision the token's issuer should make); empty when it is not a JWT with a JSON object as its payload."""
    try:
        payload = jwt.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, RecursionError):
        return {}
    return claims if isinstance(claims, dict) else {}


def _lifetime(value: object) -> float | None:
    """expires_in and refresh_in as seconds: a number or, from some endpoints, a numeric string; None unless it
    is finite and at least MIN_TOKEN_LIFETIME (JSON allows 1e999, Python's json reads NaN and Infinity, and a
    string may say "inf")."""
    seconds: float | None = None
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)  # OverflowError for an integer beyond any float
        elif isinstance(value, str):
            seconds = float(value.strip())
    except (ValueError, OverflowError):
        return None
    if seconds is None or not math.isfinite(seconds) or seconds < MIN_TOKEN_LIFETIME:
        return None
    return seconds


async def request_token(client: httpx.AsyncClient, url: str, form: Mapping[str, str], *, scopes: tuple[str, ...],
                        profile: str, now: float, action: str = "token request") -> TokenResponse:
    """POST a token grant and return the parsed reply, or raise the mapped error."""
    status, headers, body = await post_form(client, url, form, profile=profile)
    raise_for_error(status, headers, body, profile=profile, action=action)
    return parse_token_reply(body, scopes=scopes, now=now, profile=profile)
