"""SimulatedManagedIdentity: a machine's managed-identity endpoint on loopback (IMDS, App Service or Azure Arc).

    with SimulatedManagedIdentity(authority, source="app_service", tenant=TENANT) as identity:
        env = {"IDENTITY_ENDPOINT": identity.endpoint, "IDENTITY_HEADER": identity.header}
        identity.inject(Fault.throttle(60, endpoint="managed_identity"))

It answers ``GET`` on ``/metadata/identity/oauth2/token`` (IMDS, Arc) or ``/msi/token`` (App Service) the way the
real endpoints do, checked as strictly as they check:

- IMDS: ``Metadata: true`` required, api-version ``2018-02-01``; reply values all strings (``expires_in``,
  ``expires_on``, ``not_before``, ...); an unknown identity is 400 ``invalid_request`` "Identity not found".
- App Service: ``X-IDENTITY-HEADER`` must equal :attr:`header` (else 401), api-version ``2019-08-01``; reply with
  ``expires_on`` as a string and no ``expires_in``; errors as ``{"statusCode": N, "message": "..."}``.
- Azure Arc: ``Metadata: true``; a request without credentials gets 401 and ``WWW-Authenticate: Basic
  realm=<key_dir>/<random>.key``, a file written (0600) with a fresh secret; ``Authorization: Basic <secret>``
  then gets the token (with the user-assigned identity echoed, unless :attr:`echo_identity` is off, as in old
  agents).

The tokens are minted by the :class:`~aadhelper.testing.authority.SimulatedAuthority` given, for a service principal
registered in its directory (the system-assigned identity :attr:`object_id`, and any added with
:meth:`add_user_assigned`), so a :class:`~aadhelper.testing.resource.ProtectedResource` accepts them. Faults are the
authority's :class:`~aadhelper.testing.faults.Fault` with ``endpoint="managed_identity"`` (429 with Retry-After,
500, a malformed body, changed reply fields, a hang...). Every request is recorded. Stdlib only.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from .authority import SimulatedAuthority
from .directory import GRAPH
from .entra import EntraError
from .faults import Fault, FaultQueue
from .server import HttpRequest, LoopbackApp, Response, parse_params

Source = Literal["imds", "app_service", "arc"]
#: The endpoint name faults match (``Fault.status(500, endpoint=ENDPOINT)``).
ENDPOINT = "managed_identity"
API_VERSIONS = {"imds": "2018-02-01", "app_service": "2019-08-01", "arc": "2020-06-01"}
PATHS = {"imds": "/metadata/identity/oauth2/token", "app_service": "/msi/token",
         "arc": "/metadata/identity/oauth2/token"}
#: The query parameter naming a user-assigned identity's resource id, per source.
_RESOURCE_ID_PARAM = {"imds": "msi_res_id", "app_service": "mi_res_id", "arc": "msi_res_id"}
#: ARM's resource type of a user-assigned identity.
_UAMI_TYPE = "providers/Microsoft.ManagedIdentity/userAssignedIdentities"


@dataclass(frozen=True)
class IdentityRequest:
    """One request the endpoint received (the header and Arc secret themselves are not kept)."""

    time: float
    resource: str | None
    #: ``client_id``/``object_id``/``msi_res_id``/``mi_res_id`` and its value, when one was named.
    identity: tuple[str, str] | None
    #: An Arc request that carried ``Authorization: Basic ...``.
    authorized: bool
    status: int
    fault: str | None


@dataclass(frozen=True)
class _Identity:
    client_id: str
    object_id: str
    resource_id: str


class SimulatedManagedIdentity(LoopbackApp):
    """The managed-identity endpoint of one simulated machine; use as a context manager or call start/stop."""

    def __init__(self, authority: SimulatedAuthority, *, source: Source = "imds", tenant: str,
                 key_dir: str | None = None, token_lifetime: int = 86400, host: str = "127.0.0.1", port: int = 0,
                 clock: Callable[[], float] = time.time) -> None:
        if source == "arc" and key_dir is None:
            raise ValueError("an Arc endpoint needs key_dir, the directory of its challenge files")
        self.authority = authority
        self.source: Source = source
        self.tenant = tenant
        self.key_dir = key_dir
        self.clock = clock
        #: Lifetime of the tokens issued (seconds); may change while running.
        self.token_lifetime = token_lifetime
        #: App Service's secret header (what IDENTITY_HEADER holds).
        self.header = secrets.token_urlsafe(24)
        #: Arc: echo the user-assigned identity in replies (an old agent does not, and serves the system one).
        self.echo_identity = True
        #: Arc: the realm of the next challenges (None: a fresh key file in key_dir); a test points it elsewhere.
        self.challenge_realm: str | None = None
        #: Arc: written after the key in each key file (the agent's files may end in a newline, which is not part
        #: of the key).
        self.arc_key_suffix = ""
        self._faults = FaultQueue()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._records: list[IdentityRequest] = []
        self._arc_secrets: dict[str, str] = {}
        self._stopping = threading.Event()
        self.system = self._register("system")
        self._user_assigned: list[_Identity] = []
        super().__init__(host=host, port=port)

    @property
    def endpoint(self) -> str:
        """The token URL (what IDENTITY_ENDPOINT or a profile's ``endpoint`` holds)."""
        return self.url + PATHS[self.source]

    def start(self) -> None:
        self._stopping.clear()
        super().start()

    def stop(self) -> None:
        self._stopping.set()
        super().stop()

    def add_user_assigned(self, name: str) -> _Identity:
        """Assign a user-assigned identity to the machine; returns its ids (client, object, resource)."""
        identity = self._register(name)
        self._user_assigned.append(identity)
        return identity

    def _register(self, name: str) -> _Identity:
        client_id = str(uuid.uuid4())
        self.authority.add_client(client_id, tenant=self.tenant, resources=(GRAPH,))
        client = self.authority.directory.client_by_id(client_id)
        resource_id = (f"/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/{_UAMI_TYPE}/{name}")
        return _Identity(client_id, client.object_id, resource_id)

    # faults and records -----------------------------------------------------------------------------------------

    def inject(self, fault: Fault, times: int = 1) -> None:
        """Queue ``fault`` (made with ``endpoint="managed_identity"``) for the next ``times`` requests."""
        if fault.endpoint != ENDPOINT:
            raise ValueError(f"make the fault with endpoint={ENDPOINT!r}")
        self._faults.push(fault, times)

    def clear_faults(self) -> None:
        self._faults.clear()

    @property
    def requests(self) -> list[IdentityRequest]:
        with self._lock:
            return list(self._records)

    def count(self, status: int | None = None) -> int:
        with self._lock:
            return sum(1 for r in self._records if status in (None, r.status))

    def wait_for_requests(self, n: int = 1, *, timeout: float = 10.0) -> list[IdentityRequest]:
        """Block until ``n`` requests have been answered; TimeoutError after ``timeout`` s."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._records) >= n, timeout):
                raise TimeoutError(f"{n} managed-identity request(s) did not arrive within {timeout} s")
            return list(self._records)

    # HTTP -------------------------------------------------------------------------------------------------------

    def handle(self, request: HttpRequest) -> Response:
        now = self.clock()
        try:
            params = parse_params(request.query)
        except ValueError:
            params = {}
        named = next(((key, params[key]) for key in ("client_id", "object_id", "msi_res_id", "mi_res_id")
                      if key in params), None)
        fault = self._faults.take(ENDPOINT, None)
        response: Response | None = None
        try:
            if fault is not None:
                response = fault.apply(self._stopping)
            if response is None:
                response = self._answer(request, params, named, now)
        except EntraError as exc:
            response = self._error(exc.status, exc.error, exc.description, exc.headers)
        if fault is not None:
            response = fault.after_answer(response, self._stopping)
        with self._changed:
            self._records.append(IdentityRequest(now, params.get("resource"), named,
                                                 "Authorization" in request.headers, response.status,
                                                 fault.kind if fault else None))
            self._changed.notify_all()
        return response

    def _answer(self, request: HttpRequest, params: dict[str, str], named: tuple[str, str] | None,
                now: float) -> Response:
        if request.method != "GET" or request.path != PATHS[self.source]:
            return self._error(404, "invalid_request", "Not found")
        if self.source == "app_service":
            if request.headers.get("X-IDENTITY-HEADER") != self.header:
                return self._error(401, "unauthorized", "The X-IDENTITY-HEADER is missing or not valid.")
        elif request.headers.get("Metadata", "").lower() != "true":
            return self._error(400, "invalid_request", "Required metadata header not specified")
        if params.get("api-version") != API_VERSIONS[self.source]:
            return self._error(400, "invalid_request", "Missing or unsupported api-version")
        resource = params.get("resource")
        if not resource:
            return self._error(400, "invalid_request", "Required query variable 'resource' is missing")
        if self.source == "arc":
            denied = self._arc_check(request.headers.get("Authorization", ""))
            if denied is not None:
                return denied
        identity = self._identity(named)
        if identity is None:
            return self._error(400, "invalid_request", "Identity not found")
        client = self.authority.directory.client_by_id(identity.client_id)
        lifetime = self.token_lifetime
        token = self.authority.issuer.access_token(client, resource.rstrip("/"), now=now, lifetime=lifetime)
        expires_on = str(int(now) + lifetime)
        body: dict[str, object] = {"access_token": token, "expires_on": expires_on, "resource": resource,
                                   "token_type": "Bearer", "client_id": identity.client_id}
        if self.source == "app_service":
            body["not_before"] = str(int(now))
        else:
            body.update(expires_in=str(lifetime), ext_expires_in=str(lifetime), not_before=str(int(now)))
        if self.source == "arc" and not self.echo_identity:
            del body["client_id"]
        elif self.source == "arc" and named is not None:
            body["object_id"], body["msi_res_id"] = identity.object_id, identity.resource_id
        return Response.json(200, body)

    def _identity(self, named: tuple[str, str] | None) -> _Identity | None:
        if named is None or (self.source == "arc" and not self.echo_identity):
            return self.system  # an old Arc agent ignores the identity asked for
        key, value = named
        # The other spelling of the resource id is not a parameter of this endpoint: no identity matches it.
        field = {"client_id": "client_id", "object_id": "object_id",
                 _RESOURCE_ID_PARAM[self.source]: "resource_id"}.get(key)
        return next((identity for identity in self._user_assigned
                     if field is not None and str(getattr(identity, field)).lower() == value.lower()), None)

    def _arc_check(self, authorization: str) -> Response | None:
        """None when the request carries a secret of a challenge; else the 401 challenge (a new key file)."""
        scheme, _, secret = authorization.partition(" ")
        with self._lock:
            if scheme.lower() == "basic" and secret and secret in self._arc_secrets.values():
                return None
            assert self.key_dir is not None
            name = secrets.token_hex(8)
            path = os.path.join(self.key_dir, f"{name}.key")
            secret = secrets.token_urlsafe(32)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as file:
                file.write(secret + self.arc_key_suffix)
            self._arc_secrets[path] = secret
        realm = self.challenge_realm or path
        return Response.json(401, {"error": "unauthorized", "error_description": "Authorization required"},
                             {"WWW-Authenticate": f"Basic realm={realm}"})

    def _error(self, status: int, error: str, description: str,
               headers: dict[str, str] | None = None) -> Response:
        if self.source == "app_service":
            return Response.json(status, {"statusCode": status, "message": description}, headers or {})
        return Response.json(status, {"error": error, "error_description": description}, headers or {})


__all__ = ["ENDPOINT", "IdentityRequest", "SimulatedManagedIdentity"]
