"""Talking to the authority's token endpoint: TLS set-up, the form POST, and the one place where transport
failures and authority error bodies become aadhelper errors.

Every grant posts through :func:`post_form` and reads the reply with :func:`parse_token_reply` or
:func:`raise_for_error`, so the mapping from httpx exceptions and Entra ``error``/AADSTS codes to our
exception classes lives here only (httpx's own ``map_httpcore_exceptions`` is the model). Messages carry
the authority's ``error``, AADSTS code and the first sentence of ``error_description`` (never a secret:
Entra does not echo secrets), plus the fix.
"""

from __future__ import annotations

import base64
import email.utils
import json
import logging
import re
import ssl
import time
from collections.abc import Mapping
from typing import Any

import httpx

from ..errors import AadhelperError, AuthenticationFailed, AuthorityError, AuthorityUnavailable, LoginRequired
from ..tokens import Secret, Token, TokenResponse

log = logging.getLogger("aadhelper.grants")

#: Seconds for one token request, connect included. Entra answers in well under a second normally.
REQUEST_TIMEOUT = 30.0
#: Cap on a Retry-After we honour (MSAL's cap).
MAX_RETRY_AFTER = 3600.0

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
        from ..errors import ConfigError

        raise ConfigError(f"cannot load the CA bundle {ca_bundle}: {exc.strerror or exc}",
                          hint="fix the profile's ca_bundle path") from None


class HttpClients:
    """One :class:`httpx.AsyncClient` per CA bundle, shared by all profiles that use it; closed with :meth:`aclose`."""

    def __init__(self) -> None:
        self._clients: dict[str | None, httpx.AsyncClient] = {}

    def get(self, ca_bundle: str | None) -> httpx.AsyncClient:
        client = self._clients.get(ca_bundle)
        if client is None:
            client = httpx.AsyncClient(verify=make_ssl_context(ca_bundle), timeout=REQUEST_TIMEOUT,
                                       follow_redirects=False,
                                       headers={"User-Agent": f"aadhelper/{_version()}"})
            self._clients[ca_bundle] = client
        return client

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


def _version() -> str:
    from .. import __version__

    return __version__


async def post_form(client: httpx.AsyncClient, url: str, form: Mapping[str, str], *,
                    profile: str) -> tuple[int, Mapping[str, str], dict[str, Any] | None]:
    """POST a form; return (status, headers, JSON object or None). Transport failures raise AuthorityUnavailable."""
    try:
        response = await client.post(url, data=dict(form), headers={"Accept": "application/json"})
    except httpx.TimeoutException:
        raise AuthorityUnavailable(f"the authority at {_host(url)} did not answer in time", profile=profile,
                                   hint="check the network; aadhelper retries with backoff") from None
    except httpx.HTTPError as exc:
        raise AuthorityUnavailable(f"cannot reach the authority at {_host(url)}: {_describe_transport_error(exc)}",
                                   profile=profile, hint=_transport_hint(exc)) from None
    body: dict[str, Any] | None
    try:
        parsed = response.json()
        body = parsed if isinstance(parsed, dict) else None
    except ValueError:
        body = None
    return response.status_code, response.headers, body


def _host(url: str) -> str:
    return httpx.URL(url).host or url


def _describe_transport_error(exc: BaseException) -> str:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS certificate verification failed ({cause.verify_message})"
        cause = cause.__cause__ or cause.__context__
    return type(exc).__name__


def _transport_hint(exc: BaseException) -> str:
    if "certificate verification failed" in _describe_transport_error(exc):
        return "set the profile's ca_bundle (or SSL_CERT_FILE) to the CA that signs the authority's certificate"
    return "check the network and the profile's authority; aadhelper retries with backoff"


def raise_for_error(status: int, headers: Mapping[str, str], body: Mapping[str, Any] | None, *,
                    profile: str, action: str = "token request") -> None:
    """Raise the aadhelper error for a non-200 reply (or a 200 that carries an ``error``)."""
    error = _printable(body.get("error"), 80) if body else None
    if status == 200 and not error:
        return
    retry_after = parse_retry_after(headers.get("retry-after"))
    if not isinstance(error, str) or not error:
        if status == 429 or status >= 500:
            later = f", retry after {retry_after:.0f} s" if retry_after is not None else ""
            what = f"throttled the request (HTTP 429{later})" if status == 429 else f"failed with HTTP {status}{later}"
            raise AuthorityUnavailable(f"the authority {what}", profile=profile, retry_after=retry_after,
                                       hint="aadhelper retries with backoff")
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
    return _printable(text, 200) or ""


def _printable(value: object, limit: int) -> str | None:
    """Text from the authority made safe for a one-line message: printable and bounded (None if not text)."""
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
                      profile: str) -> TokenResponse:
    """A successful token reply as a :class:`TokenResponse`; anything malformed is AuthorityUnavailable."""
    def malformed(what: str) -> AuthorityUnavailable:
        return AuthorityUnavailable(f"the authority sent a malformed token reply ({what})", profile=profile,
                                    hint="aadhelper retries with backoff")

    if body is None:
        raise malformed("not a JSON object")
    access_token = body.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise malformed("no access_token")
    token_type = body.get("token_type", "Bearer")
    if not isinstance(token_type, str) or not token_type.isalpha():
        raise malformed("bad token_type")
    expires_in = _seconds(body.get("expires_in"))
    if expires_in is None or expires_in <= 0:
        raise malformed("bad expires_in")
    refresh_in = _seconds(body.get("refresh_in"))
    refresh_token = body.get("refresh_token")
    granted = body.get("scope")
    id_token = body.get("id_token")
    token = Token(
        access_token=Secret(access_token),
        # "bearer" from some authorities; headers conventionally say "Bearer".
        token_type="Bearer" if token_type.lower() == "bearer" else token_type,
        expires_on=now + expires_in,
        refresh_on=now + refresh_in if refresh_in and 0 < refresh_in < expires_in else None,
        scopes=scopes,
        obtained_at=now,
        account=account_of(id_token) if isinstance(id_token, str) else None,
    )
    return TokenResponse(
        token=token,
        refresh_token=Secret(refresh_token) if isinstance(refresh_token, str) and refresh_token else None,
        granted_scope=granted if isinstance(granted, str) else None,
    )


def account_of(id_token: str) -> str | None:
    """The signed-in account an id token names (``preferred_username``), for display and git usernames only: the
    token is not verified, and nothing is decided by it."""
    try:
        payload = id_token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    if not isinstance(claims, dict):
        return None
    for key in ("preferred_username", "upn", "email", "name"):
        value = claims.get(key)
        if isinstance(value, str) and value.isprintable() and 0 < len(value) <= 256:
            return value
    return None


def _seconds(value: object) -> float | None:
    """expires_in and refresh_in arrive as numbers or, from some endpoints, numeric strings."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


async def request_token(client: httpx.AsyncClient, url: str, form: Mapping[str, str], *, scopes: tuple[str, ...],
                        profile: str, now: float, action: str = "token request") -> TokenResponse:
    """POST a token grant and return the parsed reply, or raise the mapped error."""
    status, headers, body = await post_form(client, url, form, profile=profile)
    raise_for_error(status, headers, body, profile=profile, action=action)
    return parse_token_reply(body, scopes=scopes, now=now, profile=profile)


def is_retryable(exc: AadhelperError) -> bool:
    return isinstance(exc, AuthorityError) and exc.retryable

