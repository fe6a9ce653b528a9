"""SimulatedAuthority: a loopback Entra ID speaking the v2.0 endpoints, for tests, ``aadhelper demo`` and users' CI.

Endpoints, under ``{url}/{tenant}``: ``POST /oauth2/v2.0/token`` (client credentials, refresh token, device code,
authorization code + PKCE), ``POST /oauth2/v2.0/devicecode``, ``GET /oauth2/v2.0/authorize`` (the browser part is
scripted: it redirects at once, signed in as a registered user), ``GET /v2.0/.well-known/openid-configuration``;
and ``GET {url}/devicelogin?user_code=...``, the simulated verification page (it approves the code).

Everything a test needs to look at or steer is public and thread-safe: request records and counters, scripted
faults (:class:`~aadhelper.testing.faults.Fault`), device-code approval, lifetimes that can change mid-run, and
:meth:`SimulatedAuthority.validate` for the tokens it issued. Stdlib only.
"""

from __future__ import annotations

import hashlib
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from ..config import FEDERATION_AUDIENCE
from . import endpoints, grants
from .client_assertions import CertificateCredentials
from .directory import GRAPH, Directory
from .entra import EntraError, Trace
from .faults import Fault, FaultQueue
from .federation import FederatedCredential, Federation
from .issuer import TokenIssuer
from .jwt import InvalidToken
from .server import BodyWriter, HttpRequest, LoopbackApp, Response
from .sessions import Sessions

_SECRET_PARAMS = frozenset({"client_secret", "refresh_token", "code", "code_verifier", "device_code",
                            "client_assertion"})


@dataclass
class RecordedRequest:
    """One request the authority received; secret parameter values are replaced by their length."""

    method: str
    path: str
    #: ``token``, ``devicecode``, ``authorize``, ``openid-configuration``, ``devicelogin`` or ``unknown``.
    endpoint: str
    tenant: str | None
    grant_type: str | None
    client_id: str | None
    scope: str | None
    #: The authority's clock when the request arrived.
    time: float
    #: ``basic`` (Authorization header), ``body`` (client_secret in the form) or None.
    client_auth: str | None
    params: dict[str, str] = field(repr=False)
    #: SHA-256 (hex) of each secret parameter, so a test can tell whether two requests presented the same secret.
    digests: dict[str, str] = field(default_factory=dict, repr=False)
    #: The kind of the injected fault that met this request, if any.
    fault: str | None = None
    #: The HTTP status answered; None while in progress and for a dropped connection.
    status: int | None = None
    #: The OAuth ``error`` of an error reply.
    error: str | None = None
    #: For a streamed reply (drip, huge, endless, reset faults): body bytes the client's socket accepted before the
    #: stream ended; None while it runs and for other replies. A client that stops reading early keeps this small
    #: (at most its limit plus what the kernel's socket buffers hold).
    body_sent: int | None = None


class SimulatedAuthority(LoopbackApp):
    """A simulated Entra ID authority on a loopback port; use as a context manager or call start/stop."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None, host: str = "127.0.0.1", port: int = 0,
                 token_lifetime: int = 3600, refresh_in: int | None = None,
                 refresh_token_lifetime: int = 90 * 86400, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        # Settings read on every request, so a test or the demo may change them while the authority runs.
        self.token_lifetime: int = token_lifetime
        self.refresh_in: int | None = refresh_in
        self.refresh_token_lifetime: float = refresh_token_lifetime
        #: "revoke": a used refresh token presented again revokes its whole grant (strict OAuth servers);
        #: "allow": old refresh tokens keep working, as on Entra.
        self.refresh_token_reuse: Literal["revoke", "allow"] = "revoke"
        #: With "revoke": seconds after its first use during which the grant's latest redeemed refresh token may be
        #: presented again (a client retrying a lost reply), as Okta's grace period and Auth0's reuse interval allow.
        self.refresh_token_reuse_grace: float = 0.0
        self.refresh_token_length: int = 1200
        self.device_code_lifetime: int = 900
        self.device_code_interval: int = 5
        self.auth_code_lifetime: int = 600
        #: Send expires_in and friends as strings, as some Entra endpoints do.
        self.numbers_as_strings: bool = False
        #: Who the scripted browser signs in as (None: a registered login_hint, else the tenant's first user).
        self.sign_in_as: str | None = None
        #: Script the user to decline: authorize redirects with access_denied, /devicelogin declines the code.
        self.consent_denied: bool = False

        self.directory = Directory()
        self.certificates = CertificateCredentials()
        self.sessions = Sessions()
        self.issuer = TokenIssuer()
        self.federation = Federation()
        self._faults = FaultQueue()
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._records: list[RecordedRequest] = []
        self._stopping = threading.Event()
        super().__init__(ssl_context=ssl_context, host=host, port=port)

    # lifecycle ------------------------------------------------------------------------------------------------

    def token_endpoint(self, tenant: str) -> str:
        return f"{self.url}/{tenant}/oauth2/v2.0/token"

    def start(self) -> None:
        self._stopping.clear()
        super().start()

    def stop(self) -> None:
        """Stop serving; requests held by a fault are released and dropped."""
        self._stopping.set()
        super().stop()

    # the directory --------------------------------------------------------------------------------------------

    def add_tenant(self, tenant: str, *, aliases: Iterable[str] = ()) -> str:
        """Register a tenant by GUID or domain (plus other names for it); returns its tenant id."""
        with self._lock:
            return self.directory.add_tenant(tenant, aliases=aliases).tenant_id

    def add_client(self, client_id: str, *, tenant: str, secret: str | None = None, public: bool = False,
                   resources: Iterable[str] = (GRAPH,), roles: Iterable[str] = (),
                   redirect_uris: Iterable[str] | None = None, secret_expires_at: float | None = None) -> None:
        """Register an app in ``tenant``: confidential with ``secret``, or ``public`` (device code, browser).

        ``resources`` are the APIs it may get tokens for; ``redirect_uris`` None accepts any http loopback URI.
        """
        with self._lock:
            self.directory.add_client(client_id, tenant=tenant, secret=secret, public=public, resources=resources,
                                      roles=roles, redirect_uris=redirect_uris, secret_expires_at=secret_expires_at)

    def set_client_secret(self, client_id: str, secret: str | None, *, expires_at: float | None = None) -> None:
        """Rotate (or expire, with ``expires_at`` in the past) an app's secret while the authority runs."""
        with self._lock:
            client = self.directory.client_by_id(client_id)
            client.secret, client.secret_expires_at = secret, expires_at

    def add_client_certificate(self, client_id: str, certificate: bytes) -> str:
        """Upload a public certificate (PEM or DER) to app ``client_id``: assertions signed with its key are accepted.
        Returns its SHA-1 thumbprint, as the portal shows it."""
        with self._lock:
            self.directory.client_by_id(client_id)
            return self.certificates.add(client_id, certificate).thumbprint

    def presented_assertions(self) -> list[str]:
        """Every client assertion received so far (to check that none leaked into a log)."""
        with self._lock:
            return list(self.certificates.presented)

    def add_user(self, username: str, *, tenant: str, display_name: str | None = None) -> str:
        """Register a user who can sign in (device code, authorize); returns the user's object id."""
        with self._lock:
            return self.directory.add_user(username, tenant=tenant, display_name=display_name).object_id

    def revoke(self, *, user: str | None = None, client_id: str | None = None) -> int:
        """Revoke refresh-token grants (as a password reset does): their next refresh gets AADSTS50173."""
        with self._lock:
            return self.sessions.revoke(username=user, client_id=client_id)

    def add_federated_credential(self, client_id: str, *, issuer: str, subject: str,
                                 audiences: Iterable[str] = (FEDERATION_AUDIENCE,)) -> None:
        """Let tokens of ``issuer`` for ``subject`` (and one of ``audiences``) stand for the app, as a federated
        identity credential on its registration does (the issuer's keys: :meth:`publish_issuer`)."""
        with self._lock:
            self.directory.client_by_id(client_id)
            self.federation.add(client_id, FederatedCredential(issuer, subject, tuple(audiences)))

    def publish_issuer(self, issuer: str, jwks: Mapping[str, object]) -> None:
        """Make an OIDC issuer's JWKS reachable (e.g. ``OidcIssuer.jwks()`` from :mod:`.federation`)."""
        with self._lock:
            self.federation.publish(issuer, jwks)

    # faults and records ---------------------------------------------------------------------------------------

    def inject(self, fault: Fault, times: int = 1) -> None:
        """Queue ``fault`` for the next ``times`` requests it matches."""
        self._faults.push(fault, times)

    def clear_faults(self) -> None:
        self._faults.clear()

    @property
    def pending_faults(self) -> int:
        return len(self._faults)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, oldest first."""
        with self._lock:
            return list(self._records)

    def count(self, endpoint: str | None = None, grant_type: str | None = None) -> int:
        """How many requests arrived (for ``endpoint`` and/or ``grant_type`` when given)."""
        with self._lock:
            return len(self._matching(endpoint, grant_type))

    def wait_for_requests(self, n: int = 1, *, endpoint: str | None = None, grant_type: str | None = None,
                          timeout: float = 10.0) -> list[RecordedRequest]:
        """Block until at least ``n`` matching requests have arrived; raises TimeoutError after ``timeout`` s."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._matching(endpoint, grant_type)) >= n, timeout):
                raise TimeoutError(f"{n} request(s) to {endpoint or 'any endpoint'} "
                                   f"({grant_type or 'any grant'}) did not arrive within {timeout} s")
            return self._matching(endpoint, grant_type)

    def wait_until(self, predicate: Callable[[list[RecordedRequest]], bool], *,
                   timeout: float = 10.0) -> list[RecordedRequest]:
        """Block until ``predicate(requests)`` holds (checked on every change to the records); TimeoutError after
        ``timeout`` s. E.g. wait until a streamed reply ended: ``lambda rs: rs[-1].body_sent is not None``."""
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self._records), timeout):
                raise TimeoutError(f"the authority's records did not reach the expected state within {timeout} s")
            return list(self._records)

    def _matching(self, endpoint: str | None, grant_type: str | None) -> list[RecordedRequest]:
        return [r for r in self._records
                if endpoint in (None, r.endpoint) and grant_type in (None, r.grant_type)]

    # tokens and device codes ----------------------------------------------------------------------------------

    def validate(self, authorization_header_or_token: str, *, audience: str | None = None) -> dict[str, object]:
        """The claims of a token this authority issued, valid now (and for ``audience``); else InvalidToken.

        Accepts the bare token, ``Bearer <token>`` or a whole ``Authorization: Bearer <token>`` line.
        """
        value = authorization_header_or_token.strip()
        if value.lower().startswith("authorization:"):
            value = value.partition(":")[2].strip()
        scheme, _, rest = value.partition(" ")
        if rest:
            if scheme.lower() != "bearer":
                raise InvalidToken(f"not a Bearer credential but {scheme!r}")
            value = rest.strip()
        return self.issuer.validate(value, now=self.clock(), audience=audience)

    def pending_device_codes(self) -> list[str]:
        """The user codes of device-code sign-ins waiting for the user."""
        with self._lock:
            return [code.user_code for code in self.sessions.pending_device_codes(self.clock())]

    def wait_for_device_code(self, timeout: float = 10.0) -> str:
        """The user code of the oldest pending device-code sign-in, waiting for one to start if need be."""
        with self._changed:
            if not self._changed.wait_for(self.pending_device_codes, timeout):
                raise TimeoutError(f"no device-code sign-in started within {timeout} s")
            return self.pending_device_codes()[0]

    def approve(self, user_code: str, user: str | None = None) -> None:
        """The user signs in (as ``user``, else as the scripted browser would) and approves the code."""
        with self._lock:
            code = self.sessions.device_code(user_code)
            code.approve(self.directory.user(user) if user else grants.signed_in_user(self, code.client))

    def deny(self, user_code: str) -> None:
        """The user declines: the next poll gets authorization_declined."""
        with self._lock:
            self.sessions.device_code(user_code).state = "denied"

    def expire(self, user_code: str) -> None:
        """The code runs out now: the next poll gets expired_token."""
        with self._lock:
            self.sessions.device_code(user_code).expires_at = self.clock()

    # HTTP -----------------------------------------------------------------------------------------------------

    def handle(self, request: HttpRequest) -> Response:
        """Answer one HTTP request (called by the server, in the connection's thread)."""
        arrived = self.clock()
        trace = Trace.new(arrived, request.headers.get("client-request-id"))
        endpoint, tenant_name = endpoints.route(request.path)
        bad_request: EntraError | None = None
        try:
            params, basic = endpoints.parse(request)
        except EntraError as exc:
            params, basic, bad_request = {}, None, exc
        record = self._record(request, endpoint, tenant_name, params, basic, arrived)
        fault = self._faults.take(endpoint, params.get("grant_type"))
        try:
            if fault is not None:
                record.fault = fault.kind
                forced = fault.apply(self._stopping)
                if forced is not None:
                    return self._finish(record, forced)
            if bad_request is not None:
                raise bad_request
            with self._lock:
                call = endpoints.Call(tenant_name, params, basic, self.clock(), trace)
                response = endpoints.dispatch(self, endpoint, request.method, call)
        except EntraError as exc:
            record.error = exc.error
            response = Response.json(exc.status, trace.body(exc), {**trace.headers(), **exc.headers})
        if fault is not None:
            response = fault.after_answer(response, self._stopping)
        return self._finish(record, response)

    def _record(self, request: HttpRequest, endpoint: str, tenant_name: str | None, params: dict[str, str],
                basic: tuple[str, str] | None, now: float) -> RecordedRequest:
        record = RecordedRequest(
            method=request.method, path=request.path, endpoint=endpoint, tenant=tenant_name,
            grant_type=params.get("grant_type"), client_id=basic[0] if basic else params.get("client_id"),
            scope=params.get("scope"), time=now,
            client_auth="basic" if basic else "body" if "client_secret" in params else None,
            params={k: f"<{len(v)} chars>" if k in _SECRET_PARAMS else v for k, v in params.items()},
            digests={k: hashlib.sha256(v.encode()).hexdigest() for k, v in params.items() if k in _SECRET_PARAMS})
        with self._changed:
            self._records.append(record)
            self._changed.notify_all()
        return record

    def _finish(self, record: RecordedRequest, response: Response) -> Response:
        with self._changed:
            record.status = response.status or None
            self._changed.notify_all()
        if response.stream is None:
            return response
        inner = response.stream

        def stream(out: BodyWriter) -> None:
            try:
                inner(out)
            finally:
                with self._changed:
                    record.body_sent = out.sent
                    self._changed.notify_all()

        return replace(response, stream=stream)
