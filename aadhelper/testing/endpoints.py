"""The simulated authority's HTTP surface: which path is which endpoint, how a request is parsed, and the
endpoint functions that turn it into a :class:`~aadhelper.testing.server.Response` (OAuth logic: ``grants``).

Endpoints run under the authority's lock and raise :class:`~aadhelper.testing.entra.EntraError` for every
error reply; the authority renders those.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from html import escape
from urllib.parse import unquote_plus

from . import grants
from .entra import Trace, entra_error
from .grants import Realm
from .server import HttpRequest, Response, basic_credentials, parse_params

_OAUTH2_ENDPOINTS = frozenset({"token", "devicecode", "authorize"})


@dataclass(frozen=True)
class Call:
    """A parsed request, as the endpoint functions see it."""

    tenant_name: str | None
    params: dict[str, str]
    #: Client id and secret from an ``Authorization: Basic`` header.
    basic: tuple[str, str] | None
    now: float
    trace: Trace


def route(path: str) -> tuple[str, str | None]:
    """(endpoint name, tenant path segment) of a request path; ``unknown`` when it is no endpoint."""
    parts = path.strip("/").split("/")
    if parts == ["devicelogin"]:
        return "devicelogin", None
    if len(parts) == 4 and parts[0] and parts[1:3] == ["oauth2", "v2.0"] and parts[3] in _OAUTH2_ENDPOINTS:
        return parts[3], parts[0]
    if len(parts) == 4 and parts[0] and parts[1:] == ["v2.0", ".well-known", "openid-configuration"]:
        return "openid-configuration", parts[0]
    return "unknown", None


def parse(request: HttpRequest) -> tuple[dict[str, str], tuple[str, str] | None]:
    """The query (GET) or form (POST) parameters, and the client credentials of an Authorization: Basic header."""
    try:
        params = parse_params(request.query if request.method == "GET" else request.body.decode("utf-8"))
        basic = basic_credentials(request.headers.get("Authorization", ""))
    except ValueError as exc:  # UnicodeDecodeError included
        raise entra_error(9002313, detail=str(exc)) from None
    # RFC 6749 2.3.1: both parts are form-urlencoded before the Basic encoding.
    return params, None if basic is None else (unquote_plus(basic[0]), unquote_plus(basic[1]))


def dispatch(realm: Realm, endpoint: str, method: str, call: Call) -> Response:
    allowed, function = ENDPOINTS.get(endpoint, ("", _unknown))
    if allowed and method != allowed:
        raise entra_error(900561, allowed="POST, OPTIONS" if allowed == "POST" else allowed, method=method)
    return function(realm, call)


def _token(realm: Realm, call: Call) -> Response:
    assert call.tenant_name is not None
    reply = grants.token(realm, grants.TokenRequest(call.tenant_name, call.params, call.basic, call.now))
    return Response.json(200, reply, call.trace.headers())


def _devicecode(realm: Realm, call: Call) -> Response:
    assert call.tenant_name is not None
    reply = grants.device_authorization(realm, call.tenant_name, call.params, call.now)
    return Response.json(200, reply, call.trace.headers())


def _authorize(realm: Realm, call: Call) -> Response:
    assert call.tenant_name is not None
    location = grants.authorize(realm, call.tenant_name, call.params, call.now, call.trace)
    return Response(302, b"", (("Location", location), *call.trace.headers().items()))


def _openid_configuration(realm: Realm, call: Call) -> Response:
    assert call.tenant_name is not None
    tenant = realm.directory.tenant(call.tenant_name)
    base = f"{realm.url}/{call.tenant_name}"
    return Response.json(200, {
        "issuer": f"https://login.microsoftonline.com/{tenant.tenant_id if tenant else '{tenantid}'}/v2.0",
        "token_endpoint": f"{base}/oauth2/v2.0/token",
        "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
        "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
        "response_types_supported": ["code"],
        "grant_types_supported": list(grants.GRANTS),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        "code_challenge_methods_supported": ["S256", "plain"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
    }, call.trace.headers())


def _devicelogin(realm: Realm, call: Call) -> Response:
    """The verification page a user would open: it approves the code (or declines it, when scripted to)."""
    user_code = call.params.get("user_code", "")
    if not user_code:
        return Response.html(200, '<form method="get"><label>Enter code <input name="user_code"></label>'
                                  '<button>Next</button></form>')
    try:
        code = realm.sessions.device_code(user_code)
    except ValueError:
        return Response.html(400, "<p>That code was not recognised.</p>")
    if code.state != "pending" or call.now >= code.expires_at:
        return Response.html(400, "<p>That code was already used or has expired.</p>")
    if realm.consent_denied:
        code.state = "denied"
        return Response.html(200, "<p>You declined to sign in.</p>")
    user = code.approve(grants.signed_in_user(realm, code.client))
    return Response.html(200, f"<p>{escape(user.username)} signed in to {escape(code.client.client_id)}. "
                              "You can close this window.</p>")


def _unknown(realm: Realm, call: Call) -> Response:
    raise entra_error(9002313, status=404, detail="There is no endpoint at this path.")


#: endpoint name -> (HTTP method, function)
ENDPOINTS: Mapping[str, tuple[str, Callable[[Realm, Call], Response]]] = {
    "token": ("POST", _token),
    "devicecode": ("POST", _devicecode),
    "authorize": ("GET", _authorize),
    "openid-configuration": ("GET", _openid_configuration),
    "devicelogin": ("GET", _devicelogin),
}
