"""The simulated Entra ID authority and protected resource, driven over real HTTPS (trustme CA) with httpx."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import trustme

from aadhelper.testing import (
    DEVICE_CODE_GRANT,
    GRAPH,
    Fault,
    InvalidToken,
    ProtectedResource,
    SimulatedAuthority,
    device_sign_in,
    pkce_challenge,
)
from aadhelper.testing.faults import http_date
from aadhelper.testing.jwt import b64url_decode, b64url_encode

TENANT = "contoso.onmicrosoft.com"
SECRET = "s3cret-value"
ARM = "https://management.azure.com"
GRAPH_DEFAULT = f"{GRAPH}/.default"
USER_SCOPE = f"{GRAPH}/User.Read openid profile offline_access"
VERIFIER = "v" * 20 + "-._~" + "0123456789abcdefghijklmnop"  # 50 characters of the RFC 7636 alphabet
REDIRECT = "http://127.0.0.1:8400/callback"


class Clock:
    """The authority's clock, moved by the test: expiry without sleeping."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class Tls:
    server: ssl.SSLContext
    client: ssl.SSLContext
    cert: trustme.LeafCert


@pytest.fixture(scope="module")
def tls() -> Tls:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return Tls(server, client, cert)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def authority(tls: Tls, clock: Clock) -> Iterator[SimulatedAuthority]:
    with SimulatedAuthority(ssl_context=tls.server, clock=clock) as authority:
        authority.add_tenant(TENANT)
        authority.add_client("app", tenant=TENANT, secret=SECRET, resources=(GRAPH, "api://backend"))
        authority.add_client("cli", tenant=TENANT, public=True, resources=(GRAPH, ARM))
        authority.add_user("alice@contoso.onmicrosoft.com", tenant=TENANT)
        authority.add_user("bob@contoso.onmicrosoft.com", tenant=TENANT, display_name="Bob")
        yield authority


#: The ``sign_in`` fixture's type.
SignIn = Callable[..., dict[str, Any]]


@pytest.fixture
def sign_in(authority: SimulatedAuthority, tls: Tls) -> SignIn:
    """``sign_in(scope=USER_SCOPE, user=None)``: the kit's device-code sign-in to the public app ``cli``."""
    def sign_in(scope: str = USER_SCOPE, user: str | None = None) -> dict[str, Any]:
        return device_sign_in(authority, tenant=TENANT, client_id="cli", scope=scope, user=user,
                              ssl_context=tls.client)
    return sign_in


@pytest.fixture
def http(authority: SimulatedAuthority, tls: Tls) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=authority.url, verify=tls.client, timeout=10) as client:
        yield client


def post_token(http: httpx.Client, tenant: str = TENANT, **form: str | None) -> httpx.Response:
    return http.post(f"/{tenant}/oauth2/v2.0/token", data={k: v for k, v in form.items() if v is not None})


def client_credentials(http: httpx.Client, tenant: str = TENANT, **overrides: str | None) -> httpx.Response:
    form: dict[str, str | None] = {"grant_type": "client_credentials", "client_id": "app",
                                   "client_secret": SECRET, "scope": GRAPH_DEFAULT}
    return post_token(http, tenant, **(form | overrides))


def assert_error(response: httpx.Response, status: int, error: str, aadsts: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    body: dict[str, object] = response.json()
    assert body["error"] == error, body
    assert body["error_codes"] == [aadsts]
    assert str(body["error_description"]).startswith(f"AADSTS{aadsts}: ")
    return body


def start_device_code(http: httpx.Client, scope: str = USER_SCOPE) -> dict[str, object]:
    response = http.post(f"/{TENANT}/oauth2/v2.0/devicecode", data={"client_id": "cli", "scope": scope})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def poll(http: httpx.Client, device_code: object) -> httpx.Response:
    return post_token(http, grant_type=DEVICE_CODE_GRANT, client_id="cli", device_code=str(device_code))


def refresh(http: httpx.Client, refresh_token: object, scope: str | None = USER_SCOPE) -> httpx.Response:
    return post_token(http, grant_type="refresh_token", client_id="cli", refresh_token=str(refresh_token),
                      scope=scope)


def authorize(http: httpx.Client, **overrides: str | None) -> httpx.Response:
    query: dict[str, str | None] = {
        "client_id": "cli", "response_type": "code", "redirect_uri": REDIRECT, "scope": USER_SCOPE,
        "state": "st4te", "code_challenge": pkce_challenge(VERIFIER), "code_challenge_method": "S256"}
    params = {k: v for k, v in (query | overrides).items() if v is not None}
    return http.get(f"/{TENANT}/oauth2/v2.0/authorize", params=params, follow_redirects=False)


def redirect_params(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 302, response.text
    location = response.headers["Location"]
    assert location.startswith(REDIRECT + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def redeem(http: httpx.Client, code: str, verifier: str | None = VERIFIER,
           redirect_uri: str = REDIRECT) -> httpx.Response:
    return post_token(http, grant_type="authorization_code", client_id="cli", code=code,
                      redirect_uri=redirect_uri, code_verifier=verifier, scope=USER_SCOPE)


# client credentials -------------------------------------------------------------------------------------------


def test_client_credentials_with_secret_in_body(authority: SimulatedAuthority, http: httpx.Client) -> None:
    """If an app posts its secret and a .default scope, then it gets Entra's reply with an app-only token."""
    response = client_credentials(http)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"token_type", "expires_in", "ext_expires_in", "access_token"}
    assert (body["token_type"], body["expires_in"], body["ext_expires_in"]) == ("Bearer", 3600, 3600)
    claims = authority.validate(body["access_token"], audience=GRAPH)
    tenant_id = authority.add_tenant(TENANT)
    assert claims["aud"] == GRAPH and claims["appid"] == "app" and claims["tid"] == tenant_id
    assert claims["iss"] == f"https://sts.windows.net/{tenant_id}/" and claims["idtyp"] == "app"
    assert "roles" not in claims and "scp" not in claims
    assert response.headers["Cache-Control"] == "no-store, no-cache"


def test_client_credentials_with_basic_auth(authority: SimulatedAuthority, http: httpx.Client) -> None:
    """If an app authenticates with HTTP Basic, then it gets a token and the record says so."""
    response = http.post(f"/{TENANT}/oauth2/v2.0/token", auth=("app", SECRET),
                         data={"grant_type": "client_credentials", "scope": "api://backend/.default"})
    assert response.status_code == 200, response.text
    assert authority.validate(response.json()["access_token"])["aud"] == "api://backend"
    assert authority.requests[-1].client_auth == "basic"


def test_app_roles_are_in_app_only_tokens(authority: SimulatedAuthority, http: httpx.Client) -> None:
    """If an app has roles, then its client-credentials token lists them."""
    authority.add_client("daemon", tenant=TENANT, secret=SECRET, roles=("Files.Read.All",))
    token = client_credentials(http, client_id="daemon").json()["access_token"]
    assert authority.validate(token)["roles"] == ["Files.Read.All"]


@pytest.mark.parametrize(("overrides", "tenant", "status", "error", "aadsts"), [
    ({"client_secret": "wrong"}, TENANT, 401, "invalid_client", 7000215),
    ({"client_secret": None}, TENANT, 401, "invalid_client", 7000218),
    ({"client_id": "nobody"}, TENANT, 400, "unauthorized_client", 700016),
    ({}, "fabrikam.onmicrosoft.com", 400, "invalid_request", 90002),
    ({}, "common", 400, "invalid_request", 9001023),
    ({}, "consumers", 400, "invalid_request", 9001023),
    ({"scope": f"{GRAPH}/User.Read"}, TENANT, 400, "invalid_scope", 1002012),
    ({"scope": f"{GRAPH_DEFAULT} api://backend/.default"}, TENANT, 400, "invalid_scope", 700022),
    ({"scope": "api://unknown/.default"}, TENANT, 400, "invalid_resource", 500011),
    ({"scope": None}, TENANT, 400, "invalid_request", 900144),
    ({"grant_type": None}, TENANT, 400, "invalid_request", 900144),
    ({"grant_type": "password"}, TENANT, 400, "unsupported_grant_type", 70003),
    ({"client_id": "cli", "client_secret": None}, TENANT, 401, "invalid_client", 7000218),
    ({"client_id": "cli"}, TENANT, 401, "invalid_client", 700025),
    ({"client_assertion": "eyJ.x.y"}, TENANT, 400, "invalid_request", 900144),
])
def test_client_credentials_errors(http: httpx.Client, overrides: dict[str, str | None], tenant: str, status: int,
                                   error: str, aadsts: int) -> None:
    """If a client-credentials request is wrong, then the reply is Entra's error with the right AADSTS code."""
    assert_error(client_credentials(http, tenant, **overrides), status, error, aadsts)


def test_error_body_has_entra_shape(http: httpx.Client, clock: Clock) -> None:
    """If a request fails, then the body has every Entra field and echoes the caller's client-request-id."""
    correlation = "0b1e7c5a-8f57-4a9e-9d3c-6f2a1b2c3d4e"
    response = http.post(f"/{TENANT}/oauth2/v2.0/token", headers={"client-request-id": correlation},
                         data={"grant_type": "client_credentials", "client_id": "app", "client_secret": "x",
                               "scope": GRAPH_DEFAULT})
    body = assert_error(response, 401, "invalid_client", 7000215)
    assert set(body) == {"error", "error_description", "error_codes", "timestamp", "trace_id", "correlation_id",
                         "error_uri"}
    assert body["correlation_id"] == correlation and response.headers["client-request-id"] == correlation
    assert body["timestamp"] == "2027-01-15 08:00:00Z"
    assert str(body["error_description"]).endswith(
        f"\r\nTrace ID: {body['trace_id']}\r\nCorrelation ID: {correlation}\r\nTimestamp: 2027-01-15 08:00:00Z")
    assert "for a secret added to app 'app'" in str(body["error_description"])
    assert body["error_uri"] == "https://login.microsoftonline.com/error?code=7000215"
    assert response.headers["x-ms-request-id"] == body["trace_id"]


def test_secret_rotation_and_expiry(authority: SimulatedAuthority, http: httpx.Client, clock: Clock) -> None:
    """If the app's secret is rotated, then only the new one works; once it expires, the reply is 7000222."""
    authority.set_client_secret("app", "new-secret", expires_at=clock.now + 60)
    assert_error(client_credentials(http), 401, "invalid_client", 7000215)
    assert client_credentials(http, client_secret="new-secret").status_code == 200
    clock.advance(60)
    assert_error(client_credentials(http, client_secret="new-secret"), 401, "invalid_client", 7000222)


def test_every_token_differs_and_lifetime_is_adjustable(authority: SimulatedAuthority, http: httpx.Client) -> None:
    """If settings change while running, then the next reply follows them, and no two tokens are equal."""
    first = client_credentials(http).json()
    authority.token_lifetime, authority.refresh_in = 60, 30
    second = client_credentials(http).json()
    assert first["access_token"] != second["access_token"]
    assert (second["expires_in"], second["refresh_in"]) == (60, 30)
    claims = authority.validate(second["access_token"])
    assert int(str(claims["exp"])) - int(str(claims["iat"])) == 60
    authority.numbers_as_strings = True
    assert client_credentials(http).json()["expires_in"] == "60"


# refresh tokens -----------------------------------------------------------------------------------------------


def test_refresh_rotates_and_serves_any_resource(authority: SimulatedAuthority, http: httpx.Client,
                                                 sign_in: SignIn) -> None:
    """If a refresh token is redeemed, then a new one comes back, and it mints tokens for another resource."""
    signed_in = sign_in()
    first = refresh(http, signed_in["refresh_token"])
    assert first.status_code == 200, first.text
    assert first.json()["refresh_token"] not in (None, signed_in["refresh_token"])
    second = refresh(http, first.json()["refresh_token"], scope=f"{ARM}/.default offline_access")
    assert second.status_code == 200, second.text
    claims = authority.validate(second.json()["access_token"], audience=ARM)
    assert claims["upn"] == "alice@contoso.onmicrosoft.com" and claims["scp"] == "user_impersonation"
    assert second.json()["scope"] == f"{ARM}/.default offline_access"


def test_replayed_refresh_token_revokes_the_family(authority: SimulatedAuthority, http: httpx.Client,
                                                   sign_in: SignIn) -> None:
    """If a used refresh token is presented again, then it fails with 50173 and so does its successor."""
    old = sign_in()["refresh_token"]
    new = refresh(http, old).json()["refresh_token"]
    body = assert_error(refresh(http, old), 400, "invalid_grant", 50173)
    assert "replay" in str(body["error_description"])
    assert_error(refresh(http, new), 400, "invalid_grant", 50173)


def test_reuse_allowed_like_entra(authority: SimulatedAuthority, http: httpx.Client, sign_in: SignIn) -> None:
    """If reuse is set to "allow", then an old refresh token keeps working, as on Entra."""
    authority.refresh_token_reuse = "allow"
    old = sign_in()["refresh_token"]
    assert refresh(http, old).status_code == 200
    assert refresh(http, old).status_code == 200


def test_refresh_token_expiry_and_revocation(authority: SimulatedAuthority, http: httpx.Client, sign_in: SignIn,
                                             clock: Clock) -> None:
    """If a refresh token outlives its lifetime, then 700082; if the user's grants are revoked, then 50173."""
    idle = sign_in()["refresh_token"]
    clock.advance(90 * 86400)
    assert_error(refresh(http, idle), 400, "invalid_grant", 700082)
    fresh = sign_in()["refresh_token"]
    assert authority.revoke(user="alice@contoso.onmicrosoft.com") == 2  # both sign-ins
    assert_error(refresh(http, fresh), 400, "invalid_grant", 50173)


def test_refresh_errors_leave_the_token_usable(authority: SimulatedAuthority, http: httpx.Client,
                                               sign_in: SignIn) -> None:
    """If a refresh asks for an unconsented resource, then 65001 and the refresh token still works."""
    token = sign_in()["refresh_token"]
    assert_error(refresh(http, token, scope="api://backend/.default"), 400, "interaction_required", 65001)
    assert_error(refresh(http, "0.Anot-a-token"), 400, "invalid_grant", 70000)
    assert refresh(http, token, scope=None).status_code == 200


# device code --------------------------------------------------------------------------------------------------


def test_device_code_flow(authority: SimulatedAuthority, http: httpx.Client) -> None:
    """If the user approves a device code, then polling turns from pending into tokens, an id token included."""
    started = start_device_code(http)
    assert set(started) == {"user_code", "device_code", "verification_uri", "expires_in", "interval", "message"}
    assert started["verification_uri"] == f"{authority.url}/devicelogin"
    assert (started["expires_in"], started["interval"]) == (900, 5)
    assert f"enter the code {started['user_code']} to authenticate" in str(started["message"])
    assert authority.pending_device_codes() == [started["user_code"]]
    assert_error(poll(http, started["device_code"]), 400, "authorization_pending", 70016)
    authority.approve(str(started["user_code"]), user="bob@contoso.onmicrosoft.com")
    tokens = poll(http, started["device_code"]).json()
    assert {"refresh_token", "id_token", "access_token", "scope"} <= set(tokens)
    claims = authority.validate(str(tokens["access_token"]), audience=GRAPH)
    assert (claims["upn"], claims["scp"], claims["idtyp"]) == ("bob@contoso.onmicrosoft.com", "User.Read", "user")
    id_claims = authority.validate(str(tokens["id_token"]), audience="cli")
    assert (id_claims["preferred_username"], id_claims["name"]) == ("bob@contoso.onmicrosoft.com", "Bob")
    assert_error(poll(http, started["device_code"]), 400, "bad_verification_code", 70018)


def test_device_code_slow_down(authority: SimulatedAuthority, http: httpx.Client, clock: Clock) -> None:
    """If a client polls faster than the interval, then slow_down, and the interval grows by 5 s."""
    authority.device_code_interval = 1
    code = start_device_code(http)["device_code"]
    assert_error(poll(http, code), 400, "authorization_pending", 70016)
    assert_error(poll(http, code), 400, "slow_down", 50196)
    clock.advance(2)
    assert_error(poll(http, code), 400, "slow_down", 50196)
    clock.advance(11)
    assert_error(poll(http, code), 400, "authorization_pending", 70016)


def test_device_code_declined_expired_unknown(authority: SimulatedAuthority, http: httpx.Client,
                                              clock: Clock) -> None:
    """If the user declines, the code expires or is unknown, then the poll gets the matching Entra error."""
    declined = start_device_code(http)
    authority.deny(str(declined["user_code"]))
    assert_error(poll(http, declined["device_code"]), 400, "authorization_declined", 65004)
    expired = start_device_code(http)
    authority.expire(str(expired["user_code"]))
    assert_error(poll(http, expired["device_code"]), 400, "expired_token", 70019)
    timed_out = start_device_code(http)
    clock.advance(900)
    assert_error(poll(http, timed_out["device_code"]), 400, "expired_token", 70019)
    assert_error(poll(http, "no-such-code"), 400, "bad_verification_code", 70018)


def test_devicelogin_page_approves_and_declines(authority: SimulatedAuthority, http: httpx.Client) -> None:
    """If someone opens the verification page with the code, then the code is approved (or declined if scripted)."""
    started = start_device_code(http, scope=f"{GRAPH}/User.Read")
    page = http.get("/devicelogin", params={"user_code": str(started["user_code"]).lower()})
    assert page.status_code == 200 and "alice@contoso.onmicrosoft.com signed in" in page.text
    tokens = poll(http, started["device_code"]).json()
    assert "refresh_token" not in tokens and "id_token" not in tokens
    authority.consent_denied = True
    declined = start_device_code(http)
    assert http.get("/devicelogin", params={"user_code": str(declined["user_code"])}).status_code == 200
    assert_error(poll(http, declined["device_code"]), 400, "authorization_declined", 65004)
    assert http.get("/devicelogin", params={"user_code": "NOPE"}).status_code == 400


def test_wait_for_device_code_from_another_thread(authority: SimulatedAuthority, http: httpx.Client) -> None:
    """If a helper thread waits for a device code and approves it, then the client's poll gets tokens."""
    helper = threading.Thread(target=lambda: authority.approve(authority.wait_for_device_code(timeout=10)))
    helper.start()
    try:
        started = start_device_code(http)
    finally:
        helper.join(timeout=10)
    assert poll(http, started["device_code"]).status_code == 200


# authorization code + PKCE ------------------------------------------------------------------------------------


def test_authorization_code_with_pkce(authority: SimulatedAuthority, http: httpx.Client) -> None:
    """If the browser step redirects back with a code, then redeeming it with the verifier gives tokens once."""
    params = redirect_params(authorize(http, login_hint="bob@contoso.onmicrosoft.com", nonce="n0nce"))
    assert params["state"] == "st4te"
    response = redeem(http, params["code"])
    assert response.status_code == 200, response.text
    tokens = response.json()
    assert authority.validate(tokens["access_token"], audience=GRAPH)["upn"] == "bob@contoso.onmicrosoft.com"
    assert authority.validate(tokens["id_token"], audience="cli")["nonce"] == "n0nce"
    assert_error(redeem(http, params["code"]), 400, "invalid_grant", 54005)


def test_pkce_and_redirect_mismatch(authority: SimulatedAuthority, http: httpx.Client) -> None:
    """If the verifier or redirect URI differs, then invalid_grant, and the code stays redeemable."""
    code = redirect_params(authorize(http))["code"]
    assert_error(redeem(http, code, verifier="w" * 43), 400, "invalid_grant", 501481)
    assert_error(redeem(http, code, verifier=None), 400, "invalid_grant", 501481)
    assert_error(redeem(http, code, redirect_uri="http://127.0.0.1:9/other"), 400, "invalid_grant", 500112)
    assert redeem(http, code).status_code == 200


def test_authorization_code_expires(authority: SimulatedAuthority, http: httpx.Client, clock: Clock) -> None:
    """If a code is redeemed after its ten minutes, then 70008."""
    code = redirect_params(authorize(http))["code"]
    clock.advance(600)
    assert_error(redeem(http, code), 400, "invalid_grant", 70008)


def test_authorize_errors(authority: SimulatedAuthority, http: httpx.Client) -> None:
    """If consent is denied, then the app gets access_denied; an unregistered redirect URI gets an error page."""
    authority.consent_denied = True
    denied = redirect_params(authorize(http))
    assert (denied["error"], denied["state"]) == ("access_denied", "st4te")
    assert denied["error_description"].startswith("AADSTS65004: ")
    authority.consent_denied = False
    bad_method = redirect_params(authorize(http, code_challenge_method="S512"))
    assert bad_method["error_description"].startswith("AADSTS50149: ")
    authority.add_client("web", tenant=TENANT, public=True, redirect_uris=("http://127.0.0.1/callback",))
    assert redirect_params(authorize(http, client_id="web"))["code"]  # the loopback port is ignored
    assert_error(authorize(http, client_id="web", redirect_uri="http://127.0.0.1:8400/evil"), 400,
                 "invalid_request", 50011)
    assert_error(authorize(http, client_id="nobody"), 400, "unauthorized_client", 700016)


# faults -------------------------------------------------------------------------------------------------------


def test_fault_status_throttle_malformed_error(authority: SimulatedAuthority, http: httpx.Client) -> None:
    """If faults are queued, then the next token requests get them in order, then normal replies resume."""
    authority.inject(Fault.status(503))
    authority.inject(Fault.status(500, body="oops"))
    authority.inject(Fault.throttle(7), times=2)
    authority.inject(Fault.malformed())
    authority.inject(Fault.error("interaction_required", 50076, "MFA needed.", claims='{"access_token":{}}'))
    assert authority.pending_faults == 6
    assert_error(client_credentials(http), 503, "temporarily_unavailable", 90033)
    raw = client_credentials(http)
    assert (raw.status_code, raw.text) == (500, "oops")
    for _ in range(2):
        throttled = client_credentials(http)
        assert_error(throttled, 429, "temporarily_unavailable", 90055)
        assert throttled.headers["Retry-After"] == "7"
    malformed = client_credentials(http)
    assert malformed.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        malformed.json()
    mfa = assert_error(client_credentials(http), 400, "interaction_required", 50076)
    assert mfa["claims"] == '{"access_token":{}}'
    assert client_credentials(http).status_code == 200
    assert [r.fault for r in authority.requests] == ["status", "status", "throttle", "throttle", "malformed",
                                                     "error", None]


def test_fault_matches_grant_type(authority: SimulatedAuthority, http: httpx.Client, sign_in: SignIn) -> None:
    """If a fault names a grant type, then other grants pass it by and it waits for its own."""
    authority.inject(Fault.throttle(1, grant_type="refresh_token"))
    assert client_credentials(http).status_code == 200
    token = sign_in()["refresh_token"]
    assert refresh(http, token).status_code == 429
    assert refresh(http, token).status_code == 200  # the throttled request did not use the token up


def test_fault_drop(authority: SimulatedAuthority, http: httpx.Client) -> None:
    """If the drop fault is queued, then the connection closes without a reply, and the record has no status."""
    authority.inject(Fault.drop())
    with pytest.raises(httpx.RemoteProtocolError):
        client_credentials(http)
    assert (authority.requests[-1].fault, authority.requests[-1].status) == ("drop", None)
    assert client_credentials(http).status_code == 200


def test_fault_delay(authority: SimulatedAuthority, tls: Tls) -> None:
    """If a delay exceeds the client's read timeout, then the client times out; later requests are answered."""
    authority.inject(Fault.delay(30))
    with httpx.Client(base_url=authority.url, verify=tls.client, timeout=0.2) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            client_credentials(impatient)
        assert client_credentials(impatient).status_code == 200


def test_fault_hold(authority: SimulatedAuthority, tls: Tls) -> None:
    """If a request is held, then it is recorded without an answer until the event is set, then answered."""
    release = threading.Event()
    authority.inject(Fault.hold(release))
    results: list[int] = []

    def request() -> None:
        with httpx.Client(base_url=authority.url, verify=tls.client, timeout=10) as client:
            results.append(client_credentials(client).status_code)

    worker = threading.Thread(target=request)
    worker.start()
    try:
        held = authority.wait_for_requests(1, endpoint="token", grant_type="client_credentials")
        assert held[0].status is None and not results
    finally:
        release.set()
        worker.join(timeout=10)
    assert results == [200]


def test_stop_releases_a_held_request(tls: Tls) -> None:
    """If the authority stops while a request is held, then stop returns and the client sees the connection close."""
    authority = SimulatedAuthority(ssl_context=tls.server)
    authority.add_tenant(TENANT)
    authority.add_client("app", tenant=TENANT, secret=SECRET)
    authority.inject(Fault.hold(threading.Event()))
    errors: list[BaseException] = []

    def request() -> None:
        with httpx.Client(base_url=authority.url, verify=tls.client, timeout=10) as client:
            try:
                client_credentials(client)
            except httpx.TransportError as exc:
                errors.append(exc)

    authority.start()
    worker = threading.Thread(target=request)
    try:
        worker.start()
        authority.wait_for_requests(1)
    finally:
        stopper = threading.Thread(target=authority.stop)
        stopper.start()
        stopper.join(timeout=10)
        worker.join(timeout=10)
    assert not stopper.is_alive() and not worker.is_alive()
    assert len(errors) == 1


def test_fault_status_and_throttle_retry_after_forms(authority: SimulatedAuthority, http: httpx.Client) -> None:
    """If a 5xx or 429 fault carries Retry-After as seconds or as an HTTP-date, then the header says exactly that;
    without one, no Retry-After is sent."""
    date = http_date(1_900_000_000)
    authority.inject(Fault.status(502))
    authority.inject(Fault.status(503, retry_after=30))
    authority.inject(Fault.status(500, body="busy", retry_after=date))
    authority.inject(Fault.throttle(date))
    plain, seconds, raw, throttled = (client_credentials(http) for _ in range(4))
    assert_error(plain, 502, "temporarily_unavailable", 90033)
    assert "Retry-After" not in plain.headers
    assert_error(seconds, 503, "temporarily_unavailable", 90033)
    assert seconds.headers["Retry-After"] == "30"
    assert (raw.status_code, raw.text, raw.headers["Retry-After"]) == (500, "busy", date)
    assert_error(throttled, 429, "temporarily_unavailable", 90055)
    assert throttled.headers["Retry-After"] == date == "Sun, 17 Mar 2030 17:46:40 GMT"


def test_fault_reply_fields(authority: SimulatedAuthority, http: httpx.Client) -> None:
    """If reply_fields is queued, then the real reply goes out with fields set, removed or written raw (NaN,
    1e999 as JSON text), and an error reply passes unchanged (using the fault up)."""
    authority.inject(Fault.reply_fields(access_token=Fault.REMOVE, expires_in=Fault.raw("1e999"),
                                        refresh_in=float("nan"), token_type="pop", extra=[1]))
    spoiled = client_credentials(http)
    assert spoiled.status_code == 200
    assert '"expires_in": 1e999' in spoiled.text and '"refresh_in": NaN' in spoiled.text
    body = json.loads(spoiled.text)
    assert "access_token" not in body and body["token_type"] == "pop" and body["extra"] == [1]
    assert body["expires_in"] == float("inf") and body["ext_expires_in"] == 3600
    authority.inject(Fault.reply_fields(expires_in="inf"))
    assert_error(client_credentials(http, client_secret="wrong"), 401, "invalid_client", 7000215)
    assert client_credentials(http).json()["expires_in"] == 3600
    assert [r.fault for r in authority.requests] == ["reply_fields", "reply_fields", None]


def test_fault_reply_fields_commits_the_rotation(authority: SimulatedAuthority, http: httpx.Client,
                                                 sign_in: SignIn) -> None:
    """If a refresh meets reply_fields without an access token, then the refresh token is rotated all the same:
    the reply carries the new one, which works, and the one presented is used up."""
    old = sign_in()["refresh_token"]
    authority.inject(Fault.reply_fields(access_token=Fault.REMOVE, grant_type="refresh_token"))
    spoiled = refresh(http, old).json()
    assert "access_token" not in spoiled and spoiled["refresh_token"] not in (None, old)
    assert refresh(http, spoiled["refresh_token"]).status_code == 200
    assert_error(refresh(http, old), 400, "invalid_grant", 50173)


def test_fault_drip(authority: SimulatedAuthority, tls: Tls) -> None:
    """If the drip fault is queued, then the headers come at once and the real body one byte per write, whole."""
    authority.inject(Fault.drip(0.001))
    with httpx.Client(base_url=authority.url, verify=tls.client, timeout=10) as client, \
            client.stream("POST", f"/{TENANT}/oauth2/v2.0/token", data={
                "grant_type": "client_credentials", "client_id": "app", "client_secret": SECRET,
                "scope": GRAPH_DEFAULT}) as response:
        assert response.status_code == 200 and response.headers["Connection"] == "close"
        pieces = list(response.iter_raw())
    body = b"".join(pieces)
    authority.validate(json.loads(body)["access_token"])
    assert len(pieces) > len(body) // 2  # the client saw it trickle, not arrive in one piece
    assert authority.wait_until(lambda rs: rs[-1].body_sent is not None)[-1].body_sent == len(body)


def test_fault_huge_body(authority: SimulatedAuthority, tls: Tls) -> None:
    """If huge_body is queued, then the real reply arrives padded to the size asked, with that Content-Length, and
    is still valid JSON."""
    size = 3 * 1024 * 1024
    authority.inject(Fault.huge_body(size))
    with httpx.Client(base_url=authority.url, verify=tls.client, timeout=10) as client:
        response = client_credentials(client)
    assert response.status_code == 200 and int(response.headers["Content-Length"]) == len(response.content) == size
    authority.validate(response.json()["access_token"])
    assert authority.wait_until(lambda rs: rs[-1].body_sent is not None)[-1].body_sent == size


def test_fault_endless_body_ends_when_the_client_leaves(authority: SimulatedAuthority, tls: Tls) -> None:
    """If endless_body is queued, then a chunked reply keeps coming past any size, and the authority stops
    sending once the client closes the connection."""
    authority.inject(Fault.endless_body())
    received = 0
    with httpx.Client(base_url=authority.url, verify=tls.client, timeout=10) as client, \
            client.stream("POST", f"/{TENANT}/oauth2/v2.0/token", data={
                "grant_type": "client_credentials", "client_id": "app", "client_secret": SECRET,
                "scope": GRAPH_DEFAULT}) as response:
        assert response.headers["Transfer-Encoding"] == "chunked"
        for piece in response.iter_raw():
            received += len(piece)
            if received > 4 * 1024 * 1024:
                break
    body_sent = authority.wait_until(lambda rs: rs[-1].body_sent is not None)[-1].body_sent
    assert body_sent is not None and body_sent >= received  # body_sent counts the chunk framing too


def test_fault_reset_mid_body(authority: SimulatedAuthority, http: httpx.Client) -> None:
    """If reset_mid_body is queued, then the client gets the headers and the first bytes, then a broken
    connection; the next request is answered."""
    authority.inject(Fault.reset_mid_body(25))
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        client_credentials(http)
    assert authority.wait_until(lambda rs: rs[-1].body_sent is not None)[-1].body_sent == 25
    assert authority.requests[-1].status == 200
    assert client_credentials(http).status_code == 200


def test_fault_hang(authority: SimulatedAuthority, tls: Tls) -> None:
    """If hang is queued, then the request is recorded and never answered; a patient client times out."""
    authority.inject(Fault.hang())
    with httpx.Client(base_url=authority.url, verify=tls.client, timeout=0.3) as impatient, \
            pytest.raises(httpx.ReadTimeout):
        client_credentials(impatient)
    assert (authority.requests[-1].fault, authority.requests[-1].status) == ("hang", None)


def test_stopped_authority_refuses_then_restarts_on_its_port(authority: SimulatedAuthority,
                                                             http: httpx.Client) -> None:
    """If the authority is stopped, then connections are refused; started again, it answers on the same URL."""
    url = authority.url
    authority.stop()
    with pytest.raises(httpx.ConnectError):
        client_credentials(http)
    authority.start()
    assert authority.url == url
    assert client_credentials(http).status_code == 200


# records, garbage, metadata -----------------------------------------------------------------------------------


def test_counters_and_masked_records(authority: SimulatedAuthority, http: httpx.Client, sign_in: SignIn) -> None:
    """If several requests arrive, then counts per endpoint and grant are right and records hold no secret."""
    client_credentials(http)
    client_credentials(http, client_secret="bad")
    sign_in()
    assert authority.count() == 4
    assert authority.count("token") == 3
    assert authority.count(grant_type="client_credentials") == 2
    assert authority.count("devicecode") == 1
    assert authority.count("token", DEVICE_CODE_GRANT) == 1
    first = authority.requests[0]
    assert (first.client_id, first.scope, first.status, first.client_auth) == ("app", GRAPH_DEFAULT, 200, "body")
    assert first.params["client_secret"] == f"<{len(SECRET)} chars>"
    assert authority.requests[1].error == "invalid_client"
    assert SECRET not in repr(authority.requests)


def test_garbage_gets_entra_like_errors(authority: SimulatedAuthority, http: httpx.Client, tls: Tls) -> None:
    """If requests are malformed, then each gets a JSON error and the authority keeps serving."""
    assert_error(http.get("/no/such/path"), 404, "invalid_request", 9002313)
    assert_error(http.get(f"/{TENANT}/oauth2/v2.0/token"), 400, "invalid_request", 900561)
    assert_error(http.post(f"/{TENANT}/oauth2/v2.0/token", content=b"\xff\xfe=\x00"), 400, "invalid_request",
                 9002313)
    assert_error(http.post(f"/{TENANT}/oauth2/v2.0/token", content=b"grant_type=a&grant_type=b"), 400,
                 "invalid_request", 9002313)
    assert_error(http.post(f"/{TENANT}/oauth2/v2.0/token", headers={"Authorization": "Basic !!!"}, data={}), 400,
                 "invalid_request", 9002313)
    chunked = http.post(f"/{TENANT}/oauth2/v2.0/token", content=iter([b"grant_type=x"]))
    assert chunked.status_code == 411
    address = (str(urlsplit(authority.url).hostname), int(urlsplit(authority.url).port or 0))
    with socket.create_connection(address) as plain:  # not TLS at all: the handshake fails
        plain.sendall(b"GET / HTTP/1.1\r\n\r\n")
        plain.recv(100)
    with socket.create_connection(address) as raw, tls.client.wrap_socket(raw, server_hostname=address[0]) as sock:
        sock.sendall(b"\x00\x01garbage / HTTP/1.1\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 501")
    assert client_credentials(http).status_code == 200


def test_openid_configuration(authority: SimulatedAuthority, http: httpx.Client) -> None:
    """If a client reads the tenant's metadata, then it names this authority's endpoints."""
    metadata = http.get(f"/{TENANT}/v2.0/.well-known/openid-configuration").json()
    assert metadata["token_endpoint"] == authority.token_endpoint(TENANT)
    assert metadata["device_authorization_endpoint"] == f"{authority.url}/{TENANT}/oauth2/v2.0/devicecode"


# validate and the protected resource --------------------------------------------------------------------------


def test_validate_rejects_what_it_did_not_issue(authority: SimulatedAuthority, http: httpx.Client, tls: Tls,
                                                clock: Clock) -> None:
    """If a token is tampered with, expired, for another audience or from another authority, then InvalidToken."""
    token = client_credentials(http).json()["access_token"]
    assert authority.validate(f"Authorization: Bearer {token}", audience=GRAPH + "/")["appid"] == "app"
    header, payload, signature = token.split(".")
    claims = json.loads(b64url_decode(payload)) | {"appid": "intruder"}
    tampered = f"{header}.{b64url_encode(json.dumps(claims).encode())}.{signature}"
    with SimulatedAuthority() as other:
        other.add_tenant(TENANT)
        other.add_client("app", tenant=TENANT, secret=SECRET)
        foreign = httpx.post(other.token_endpoint(TENANT), data={
            "grant_type": "client_credentials", "client_id": "app", "client_secret": SECRET,
            "scope": GRAPH_DEFAULT}).json()["access_token"]
    cases = {tampered: "bad signature", foreign: "bad signature", "not-a-jwt": "malformed", f"Basic {token}": "Bearer"}
    for bad, reason in cases.items():
        with pytest.raises(InvalidToken, match=reason):
            authority.validate(bad)
    with pytest.raises(InvalidToken, match="wrong audience"):
        authority.validate(token, audience=ARM)
    clock.advance(3600)
    with pytest.raises(InvalidToken, match="expired") as expired:
        authority.validate(token)
    assert token not in str(expired.value)


def test_protected_resource(authority: SimulatedAuthority, http: httpx.Client, sign_in: SignIn, tls: Tls) -> None:
    """If a caller presents a valid token, then 200 with its claims; otherwise 401 with Bearer challenges."""
    token = client_credentials(http).json()["access_token"]
    arm_token = sign_in(scope=f"{ARM}/.default")["access_token"]
    with ProtectedResource(authority, ssl_context=tls.server) as resource, \
            httpx.Client(base_url=resource.url, verify=tls.client) as client:
        ok = client.get("/me", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and ok.json()["appid"] == "app"
        basic = client.get("/repo.git/info/refs", auth=("anyone", token))
        assert basic.status_code == 200
        missing = client.get("/me")
        assert missing.status_code == 401
        assert missing.headers.get_list("WWW-Authenticate")[0].startswith('Bearer realm=""')
        assert "error=" not in missing.headers["WWW-Authenticate"]
        wrong = client.get("/me", headers={"Authorization": f"Bearer {arm_token}"})
        assert wrong.status_code == 401 and 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
        assert (resource.count(), resource.count(200), resource.count(401)) == (4, 2, 2)
        assert resource.requests[1].username == "anyone"


# python -m aadhelper.testing ----------------------------------------------------------------------------------


def test_command_line_serves_until_interrupted(tls: Tls, tmp_path: Path) -> None:
    """If the module runs with a secret on stdin and a TLS pair, then it serves HTTPS and exits 0 on Ctrl-C."""
    cert = tmp_path / "cert.pem"
    tls.cert.private_key_and_cert_chain_pem.write_to_path(str(cert))
    command = [sys.executable, "-m", "aadhelper.testing", "--tenant", TENANT, "--client", "app",
               "--client-secret-stdin", "--lifetime", "60", "--tls-cert", str(cert), "--serve-resource"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env) as process:
        try:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(SECRET + "\n")
            process.stdin.close()
            url, resource_url = process.stdout.readline().strip(), process.stdout.readline().strip()
            with httpx.Client(verify=tls.client) as client:
                reply = client.post(f"{url}/{TENANT}/oauth2/v2.0/token", data={
                    "grant_type": "client_credentials", "client_id": "app", "client_secret": SECRET,
                    "scope": GRAPH_DEFAULT}).json()
                assert reply["expires_in"] == 60
                me = client.get(resource_url, headers={"Authorization": f"Bearer {reply['access_token']}"})
                assert me.status_code == 200
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=10) == 0
        finally:
            if process.poll() is None:
                process.kill()


def test_command_line_refuses_secret_without_stdin() -> None:
    """If a confidential app is given without --client-secret-stdin, then one error line and exit code 2."""
    result = subprocess.run([sys.executable, "-m", "aadhelper.testing", "--client", "app"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--client-secret-stdin" in result.stderr
