"""The logic behind the token, devicecode and authorize endpoints: one handler per grant type, in a table.

Handlers take the :class:`Realm` (the authority, whose lock is held while they run) and return the JSON reply,
or raise :class:`~aadhelper.testing.entra.EntraError`. Adding a grant means adding one function to :data:`GRANTS`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol
from urllib.parse import urlencode

from .client_assertions import CertificateCredentials
from .directory import Client, Directory, Tenant, User, authenticate
from .entra import EntraError, Trace, entra_error
from .federation import Federation, is_federated
from .issuer import TokenIssuer
from .jwt import b64url_encode
from .scopes import UserScope, app_scope, user_scope
from .sessions import Grant, Sessions

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


class Realm(Protocol):
    """The authority's state and its runtime-adjustable settings, as the handlers see them."""

    directory: Directory
    certificates: CertificateCredentials
    sessions: Sessions
    issuer: TokenIssuer
    federation: Federation
    token_lifetime: int
    refresh_in: int | None
    refresh_token_lifetime: float
    refresh_token_reuse: Literal["revoke", "allow"]
    refresh_token_reuse_grace: float
    refresh_token_length: int
    device_code_lifetime: int
    device_code_interval: int
    auth_code_lifetime: int
    numbers_as_strings: bool
    sign_in_as: str | None
    consent_denied: bool

    @property
    def url(self) -> str: ...


@dataclass(frozen=True)
class TokenRequest:
    tenant_name: str
    form: Mapping[str, str]
    #: Client id and secret from an ``Authorization: Basic`` header.
    basic: tuple[str, str] | None
    now: float


def token(realm: Realm, request: TokenRequest) -> dict[str, object]:
    """The token endpoint."""
    tenant = realm.directory.tenant(request.tenant_name)
    grant_type = _required(request.form, "grant_type")
    handler = GRANTS.get(grant_type)
    if handler is None:
        raise entra_error(70003, grant_type=grant_type)
    return handler(realm, request, tenant)


def _client_credentials(realm: Realm, request: TokenRequest, tenant: Tenant | None) -> dict[str, object]:
    if tenant is None:
        raise entra_error(9001023)
    client = _client(realm, request, tenant, app_only=True)
    return _reply(realm, client, app_scope(client, request.form.get("scope"), request.tenant_name), request.now)


def _refresh_token(realm: Realm, request: TokenRequest, tenant: Tenant | None) -> dict[str, object]:
    client = _client(realm, request, tenant)
    asked = request.form.get("scope")
    # Checked before redeeming, so that a bad scope does not use up the refresh token.
    scope = user_scope(client, asked, request.tenant_name, unconsented=65001) if asked else None
    grant = realm.sessions.redeem_refresh_token(
        _required(request.form, "refresh_token"), client, request.now, lifetime=realm.refresh_token_lifetime,
        revoke_on_reuse=realm.refresh_token_reuse == "revoke", grace=realm.refresh_token_reuse_grace)
    return _user_reply(realm, request, grant, scope or grant.scope, rotate=True)


def _device_code(realm: Realm, request: TokenRequest, tenant: Tenant | None) -> dict[str, object]:
    client = _client(realm, request, tenant)
    code = realm.sessions.poll_device_code(_required(request.form, "device_code"), client, request.now)
    assert code.user is not None
    return _user_reply(realm, request, Grant(code.user, client, code.scope, request.now), code.scope)


def _authorization_code(realm: Realm, request: TokenRequest, tenant: Tenant | None) -> dict[str, object]:
    client = _client(realm, request, tenant)
    user, scope, nonce = realm.sessions.redeem_auth_code(
        _required(request.form, "code"), client, request.now, redirect_uri=request.form.get("redirect_uri"),
        verifier=request.form.get("code_verifier"))
    return _user_reply(realm, request, Grant(user, client, scope, request.now), scope, nonce=nonce)


GrantHandler = Callable[[Realm, TokenRequest, "Tenant | None"], dict[str, object]]
GRANTS: Mapping[str, GrantHandler] = {
    "client_credentials": _client_credentials,
    "refresh_token": _refresh_token,
    DEVICE_CODE_GRANT: _device_code,
    "authorization_code": _authorization_code,
}


def device_authorization(realm: Realm, tenant_name: str, form: Mapping[str, str], now: float) -> dict[str, object]:
    """The devicecode endpoint: start a device-code sign-in."""
    tenant = realm.directory.tenant(tenant_name)
    client = realm.directory.client(_required(form, "client_id"), tenant, tenant_name)
    scope = user_scope(client, form.get("scope"), tenant_name)
    lifetime, interval = realm.device_code_lifetime, realm.device_code_interval
    code = realm.sessions.new_device_code(client, scope, now, lifetime=lifetime, interval=interval)
    uri = f"{realm.url}/devicelogin"
    return {
        "user_code": code.user_code, "device_code": code.device_code, "verification_uri": uri,
        "expires_in": lifetime, "interval": interval,
        "message": f"To sign in, use a web browser to open the page {uri} and enter the code {code.user_code} "
                   "to authenticate.",
    }


def authorize(realm: Realm, tenant_name: str, query: Mapping[str, str], now: float, trace: Trace) -> str:
    """The authorize endpoint, with the user's part scripted: the URL to redirect the browser to.

    An unknown app or redirect URI raises (Entra shows an error page); every later error goes back to the app.
    """
    tenant = realm.directory.tenant(tenant_name)
    client = realm.directory.client(_required(query, "client_id"), tenant, tenant_name)
    redirect_uri = _required(query, "redirect_uri")
    if not client.accepts_redirect(redirect_uri):
        raise entra_error(50011, redirect_uri=redirect_uri, client_id=client.client_id)
    try:
        params = {"code": _issue_code(realm, client, query, now, tenant_name, redirect_uri)}
    except EntraError as exc:
        params = {"error": exc.error, "error_description": trace.describe(exc)}
    if "state" in query:
        params["state"] = query["state"]
    return f"{redirect_uri}{'&' if '?' in redirect_uri else '?'}{urlencode(params)}"


def _issue_code(realm: Realm, client: Client, query: Mapping[str, str], now: float, tenant_name: str,
                redirect_uri: str) -> str:
    if query.get("response_type") != "code":
        raise entra_error(70005, response_type=query.get("response_type", ""))
    scope = user_scope(client, query.get("scope"), tenant_name)
    challenge = query.get("code_challenge")
    method = query.get("code_challenge_method", "plain")  # RFC 7636 4.3: plain when absent
    if challenge is not None and method not in ("S256", "plain"):
        raise entra_error(50149)
    if realm.consent_denied:
        raise entra_error(65004)
    user = signed_in_user(realm, client, query.get("login_hint"))
    return realm.sessions.new_auth_code(client, user, scope, redirect_uri=redirect_uri, challenge=challenge,
                                        challenge_method=method, nonce=query.get("nonce"),
                                        expires_at=now + realm.auth_code_lifetime)


def signed_in_user(realm: Realm, client: Client, login_hint: str | None = None) -> User:
    """Who the scripted browser signs in as: ``sign_in_as``, else a registered ``login_hint``, else the tenant's
    first user."""
    if realm.sign_in_as is not None:
        return realm.directory.user(realm.sign_in_as)
    users = realm.directory.users_of(client.tenant_id)
    for user in users:
        if login_hint and user.username.lower() == login_hint.lower():
            return user
    if not users:
        raise ValueError(f"no user can sign in to the tenant of {client.client_id!r}: call add_user first")
    return users[0]


def _required(params: Mapping[str, str], name: str) -> str:
    value = params.get(name)
    if not value:
        raise entra_error(900144, name=name)
    return value


def _client(realm: Realm, request: TokenRequest, tenant: Tenant | None, *, app_only: bool = False) -> Client:
    client_id = request.basic[0] if request.basic else _required(request.form, "client_id")
    if request.form.get("client_id", client_id) != client_id:
        raise entra_error(9002313, detail="The client_id in the body differs from the one in the Authorization "
                                          "header.")
    client = realm.directory.client(client_id, tenant, request.tenant_name)
    if "client_assertion" in request.form:
        _authenticate_assertion(realm, client, request)
    else:
        authenticate(client, request.form, request.basic, request.now, app_only=app_only)
    return client


def _authenticate_assertion(realm: Realm, client: Client, request: TokenRequest) -> None:
    """A client assertion: a federated one (another issuer's token, :mod:`.federation`), or one signed by one of the
    app's certificates (:mod:`.client_assertions`)."""
    if is_federated(request.form):
        realm.federation.verify(client.client_id, request.form, request.now)
        return
    endpoint = f"{realm.url}/{request.tenant_name}/oauth2"
    realm.certificates.verify(client, request.form, audiences=(f"{endpoint}/v2.0/token", f"{endpoint}/token"),
                              now=request.now)


def _reply(realm: Realm, client: Client, resource: str, now: float, user: User | None = None,
           scp: str | None = None) -> dict[str, object]:
    lifetime = realm.token_lifetime
    number: Callable[[int], object] = str if realm.numbers_as_strings else int
    body: dict[str, object] = {"token_type": "Bearer", "expires_in": number(lifetime),
                               "ext_expires_in": number(lifetime)}
    if realm.refresh_in is not None:
        body["refresh_in"] = number(realm.refresh_in)
    body["access_token"] = realm.issuer.access_token(client, resource, now=now, lifetime=lifetime, user=user,
                                                     scp=scp)
    return body


def _user_reply(realm: Realm, request: TokenRequest, grant: Grant, scope: UserScope, *, rotate: bool = False,
                nonce: str | None = None) -> dict[str, object]:
    """A user grant's reply: a refresh token when offline_access was asked (always on refresh), an id token for
    openid, and MSAL's client_info when asked for."""
    body = _reply(realm, grant.client, scope.resource, request.now, grant.user, scope.scp)
    body["scope"] = scope.granted
    if rotate or "offline_access" in scope.oidc:
        body["refresh_token"] = realm.sessions.issue_refresh_token(grant, request.now, realm.refresh_token_length)
    if "openid" in scope.oidc:
        body["id_token"] = realm.issuer.id_token(grant.client, grant.user, now=request.now,
                                                 lifetime=realm.token_lifetime, nonce=nonce)
    if request.form.get("client_info") == "1":
        info = {"uid": grant.user.object_id, "utid": grant.user.tenant_id}
        body["client_info"] = b64url_encode(json.dumps(info).encode())
    return body
