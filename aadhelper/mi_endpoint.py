"""A private managed-identity endpoint for one child process: the App Service protocol, backed by the daemon.

``aadhelper exec PROFILE -- CMD`` (:mod:`aadhelper.cli.exec`) runs one :class:`Endpoint` for the lifetime of CMD
and hands CMD its address and secret in ``IDENTITY_ENDPOINT`` / ``IDENTITY_HEADER`` (:func:`child_environment`).
Azure SDKs (azure-identity's ``ManagedIdentityCredential`` and ``DefaultAzureCredential``, msal's
``ManagedIdentityClient``, @azure/identity) then ask it for tokens as they would ask App Service, with no change to
their code::

    GET /msi/token?api-version=2019-08-01&resource=https://management.azure.com HTTP/1.1
    X-IDENTITY-HEADER: <the secret>

    200 {"access_token": "...", "expires_on": "1764400000", "resource": "https://management.azure.com",
         "token_type": "Bearer", "expires_in": "3599", "client_id": "<the profile's app>"}
    4xx {"statusCode": 401, "message": "aadhelper: ..."}

Why the App Service protocol: of the managed-identity sources the SDKs know, it is the only one that guards a
loopback endpoint with a secret header and needs neither root (Azure Arc reads root-owned key files), TLS (Service
Fabric) nor a fixed link-local address (IMDS).

Design, with the reasons:

* **In the exec process, over the daemon's socket.** Each token request becomes one ordinary ``token`` request to
  the daemon through :mod:`aadhelper.client` (stdlib only), so the daemon stays the one place that holds tokens,
  talks to the authority and keeps single flight across every caller (exec children, ``aadhelper header``, git).
  The daemon needs no HTTP server, and the endpoint lives and dies with CMD: when CMD exits, exec closes it and
  the port refuses connections. The exec process imports neither trio, httpx nor keyring (a test checks).
* **Tokens with comfortably more than 300 s left.** msal and azure-core treat a token with less than 300 s left as
  expired and would call again at once. The endpoint asks the daemon for :data:`MIN_VALID` = 600 s: the peers'
  300 s plus 300 s, so a token the SDK caches is good in its eyes for at least five more minutes. It travels as an
  explicit ``min_valid``, which the daemon's schedule honours (an ask above the profile's keeps the entry refreshed
  early enough that such requests are served from memory, see :mod:`aadhelper.refresh_policy`).
* **A small HTTP/1.1 server of its own** (:mod:`aadhelper.loopback_http`): a thread per keep-alive connection (SDK
  processes hold several at once), bounded request heads, a deadline per head (slowloris), idle and connection
  limits; ``http.server`` bounds neither the head nor its arrival time. Each connection thread keeps its own
  connection to the daemon (:class:`aadhelper.client.Session`): an SDK makes a new HTTP connection per credential
  object, and a new daemon connection per request as well would double what the endpoint adds to a call.
* **Who can reach it.** It binds 127.0.0.1 only, on a port the kernel picks; every local user can connect to it,
  so each request must carry the secret (:func:`new_secret`: 256 random bits, fresh per exec, compared with
  :func:`hmac.compare_digest`) before anything else about it is looked at. The secret goes only into the child's
  environment, never into argv or a log line; the child's ``NO_PROXY`` names 127.0.0.1, so that no proxy of its
  environment gets the request and the secret with it (:func:`child_environment`).
* **Refusals fail fast.** Every refusal is a 4xx other than 408 and 429 (the SDKs retry those, and 5xx, three
  times over several seconds; @azure/identity also retries 404 and 410, so a wrong path is a 400) with JSON
  ``{"statusCode": N, "message": "<one line>"}``, which msal, azure-identity and @azure/identity put in the
  exception they raise after that one request. The message is aadhelper's own one-line
  error (:meth:`~aadhelper.errors.AadhelperError.one_line`): what failed, the profile, the authority's error, the
  fix. The daemon already retries the authority with backoff, so nothing is gained by the SDK retrying as well.
* **One identity.** The endpoint serves its profile's identity only. The parameters App Service uses to pick a
  user-assigned identity (``client_id``, ``object_id``, ``mi_res_id``) are accepted and ignored:
  DefaultAzureCredential sends ``client_id=$AZURE_CLIENT_ID`` whenever that variable is set, often for other
  reasons, and failing on it would break such programs for nothing.
* **Which resources.** Any resource the profile's app may get a token for (the authority decides), or, with
  ``aadhelper exec --scope S``, only those whose ``R/.default`` scope is listed. Resource ``R`` means scope
  ``R/.default`` (azure-identity strips ``/.default`` from the scope to make the resource).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from . import client, protocol
from .errors import (
    AadhelperError,
    AuthorityError,
    AuthorityUnavailable,
    ConfigError,
    DaemonNotRunning,
    DaemonTimedOut,
    ProtocolError,
    SecretStoreError,
)
from .loopback_http import HEAD_DEADLINE, IDLE_TIMEOUT, MAX_CONNECTIONS, JsonHttpServer, Refusal, split_target
from .proxy import NO_PROXY_VARIABLES
from .token_request import MAX_SCOPE

#: Where the endpoint answers (App Service's own is ``/msi/token`` too); the query carries the request.
PATH = "/msi/token"
#: The App Service protocol version the SDKs send (azure-identity 1.27, msal 1.39 and @azure/identity 4.13.1 through
#: msal-node 5.6: 2019-08-01 only).
API_VERSION = "2019-08-01"
#: The request header carrying the secret, in lower case (HTTP header names are case-insensitive).
SECRET_HEADER = "x-identity-header"
#: Seconds of validity a served token has at least: the SDKs' 300 s expiry margin plus 300 s (module docstring).
MIN_VALID = 600
#: Most query parameters in one request (the SDKs send two or three).
MAX_QUERY_FIELDS = 16
#: Longest resource accepted (the daemon's own limit on a scope, less "/.default").
MAX_RESOURCE = MAX_SCOPE - len("/.default")
#: The variables the child gets, and those it must not inherit: each would make an SDK pick another managed-identity
#: source (msal picks Service Fabric when IDENTITY_SERVER_THUMBPRINT merely exists, even empty) or make
#: DefaultAzureCredential use another credential before managed identity (environment, workload identity).
ENDPOINT_VARIABLE = "IDENTITY_ENDPOINT"
HEADER_VARIABLE = "IDENTITY_HEADER"
REMOVED_VARIABLES = (
    "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT", "MSI_ENDPOINT", "MSI_SECRET",
    "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_CLIENT_CERTIFICATE_PASSWORD",
    "AZURE_FEDERATED_TOKEN_FILE", "AZURE_USERNAME", "AZURE_PASSWORD",
)

#: The status of a daemon error: the request or the configuration is refused (403), or something the answer
#: depends on failed (424: the authority unreachable, the daemon gone). Never 408, 429 or 5xx (module docstring).
_FORBIDDEN_ERRORS: tuple[type[AadhelperError], ...] = (ConfigError, SecretStoreError, AuthorityError)


def status_of(error: AadhelperError) -> int:
    """The HTTP status an endpoint reply carries for a daemon error."""
    if isinstance(error, AuthorityUnavailable) or not isinstance(error, _FORBIDDEN_ERRORS):
        return 424
    return 403


def new_secret() -> str:
    """A fresh secret for ``IDENTITY_HEADER``: 256 random bits, 43 URL-safe characters."""
    return secrets.token_urlsafe(32)


def child_environment(base: Mapping[str, str], url: str, secret: str) -> dict[str, str]:
    """``base`` without :data:`REMOVED_VARIABLES`, with the endpoint's address and secret, and the endpoint's host
    added to both spellings of ``NO_PROXY``.

    The proxy exception keeps the request, and so the secret header, off any proxy the child's environment names:
    @azure/identity sends even a plain-http request to ``HTTPS_PROXY`` (or ``ALL_PROXY``/``HTTP_PROXY``) unless
    ``NO_PROXY`` names its host, and Python's requests does so with ``HTTP_PROXY``/``ALL_PROXY``; either way a
    proxy would see the secret, and one that is unreachable from here fails every token request.
    ``AZURE_TOKEN_CREDENTIALS`` is neither set nor removed: its accepted values differ across azure-identity
    versions, and a value the user set is theirs.
    """
    env = {key: value for key, value in base.items() if key not in REMOVED_VARIABLES}
    env[ENDPOINT_VARIABLE] = url
    env[HEADER_VARIABLE] = secret
    host = urlsplit(url).hostname or ""
    for name in NO_PROXY_VARIABLES:  # @azure/identity reads NO_PROXY first, requests no_proxy: set both
        entries = [entry.strip() for entry in env.get(name, "").split(",") if entry.strip()]
        if host not in entries and "*" not in entries:
            env[name] = ",".join([*entries, host])
    return env


#: How the endpoint gets a token for a scope: the daemon's token reply (``access_token``, ``token_type``,
#: ``expires_on``), or an :class:`AadhelperError`.
Fetch = Callable[[str], dict[str, Any]]


class Endpoint:
    """The managed-identity endpoint of one ``aadhelper exec``: :meth:`start`, hand :attr:`url` and the secret to
    the child (:func:`child_environment`), :meth:`close` when it exits. Also a context manager.

    ``fetch`` defaults to the daemon (profile ``profile``, on ``socket_path``, or the usual one); ``clock`` is the
    monotonic clock the head deadline is measured on (tests pass one they move by hand).
    """

    def __init__(self, profile: str, *, client_id: str | None = None, scopes: Iterable[str] | None = None,
                 socket_path: str | None = None, fetch: Fetch | None = None, secret: str | None = None,
                 clock: Callable[[], float] = time.monotonic, head_deadline: float = HEAD_DEADLINE,
                 idle_timeout: float = IDLE_TIMEOUT, max_connections: int = MAX_CONNECTIONS) -> None:
        self.profile = profile
        self.client_id = client_id
        self.allowed = None if scopes is None else frozenset(_scope_base(scope) for scope in scopes)
        self._fetch = fetch or self._from_daemon
        self._socket_path = socket_path
        self._secret = (secret or new_secret()).encode()
        #: Each connection thread's daemon connection (:meth:`_from_daemon`), closed when its connection ends.
        self._local = threading.local()
        self._server = JsonHttpServer(self.handle, name="mi-endpoint", clock=clock, head_deadline=head_deadline,
                                      idle_timeout=idle_timeout, max_connections=max_connections,
                                      on_connection_end=self._connection_ended, unique_headers=(SECRET_HEADER,))
        self.port = self._server.port
        self.url = f"http://127.0.0.1:{self.port}{PATH}"

    def __repr__(self) -> str:  # the secret stays out of every repr and log line
        return f"Endpoint(profile={self.profile!r}, url={self.url!r})"

    @property
    def secret(self) -> str:
        """The value the child's ``X-IDENTITY-HEADER`` must carry (for :func:`child_environment` only)."""
        return self._secret.decode()

    def start(self) -> Endpoint:
        self._server.start()
        return self

    def close(self) -> None:
        """Stop answering: the port is closed (new connections are refused) and open connections are cut."""
        self._server.close()

    def __enter__(self) -> Endpoint:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- requests -------------------------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: Mapping[str, str]) -> dict[str, Any]:
        """The token reply for one parsed request; a refusal raises :class:`Refusal`. The secret is checked first:
        a caller without it learns nothing else about the request."""
        given = headers.get(SECRET_HEADER)
        if given is None:
            raise Refusal(401, f"the {SECRET_HEADER.upper()} header is missing: use the value of ${HEADER_VARIABLE}")
        if not hmac.compare_digest(given.encode(), self._secret):
            raise Refusal(401, f"the {SECRET_HEADER.upper()} header is wrong: use the value of ${HEADER_VARIABLE} "
                               "of this aadhelper exec")
        if method != "GET":
            raise Refusal(405, f"method {method} is not supported: GET {PATH}?api-version={API_VERSION}&resource=R")
        path, query = split_target(target, f"{PATH}?api-version={API_VERSION}&resource=R")
        if path.rstrip("/") != PATH:
            # 400, not 404: @azure/identity retries 404 and 410 (its IMDS retry policy, applied to every source)
            # five times over ~16 s before it shows the reason.
            raise Refusal(400, f"no endpoint at {path[:100]!r}: use {PATH}")
        resource = self._resource(query)
        scope = resource + "/.default"
        if self.allowed is not None and _scope_base(scope) not in self.allowed:
            raise Refusal(403, f"resource {resource!r} is not one this aadhelper exec serves (profile "
                               f"{self.profile!r}, --scope {', '.join(sorted(self.allowed))})")
        try:
            reply = self._fetch(scope)
        except AadhelperError as exc:
            raise Refusal(status_of(exc), exc.one_line()) from None
        expires_on = int(reply["expires_on"])
        body: dict[str, Any] = {
            "access_token": reply["access_token"],
            # A string of whole epoch seconds, as App Service sends it: azure-identity and msal parse it with int().
            "expires_on": str(expires_on),
            # Echoed as asked: msal-node (@azure/identity) files the token under it, and would miss its cache on
            # every later call for a reply that spelled the resource otherwise.
            "resource": resource,
            "token_type": reply.get("token_type", "Bearer"),
            # Older clients read expires_in (IMDS style: a string).
            "expires_in": str(max(0, expires_on - int(time.time()))),
        }
        if self.client_id:
            body["client_id"] = self.client_id
        return body

    def _resource(self, query: str) -> str:
        """The ``resource`` of a query, checked (api-version, no repeated or malformed parameters)."""
        try:
            fields = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query),
                               max_num_fields=MAX_QUERY_FIELDS, errors="strict")
        except (ValueError, UnicodeDecodeError) as exc:
            raise Refusal(400, f"malformed query string ({_first_line(exc)})") from None
        params: dict[str, str] = {}
        for key, value in fields:
            if key in params:
                raise Refusal(400, f"query parameter {key[:40]!r} is given more than once")
            params[key] = value
        version = params.get("api-version")
        if version != API_VERSION:
            shown = "missing" if version is None else repr(version[:40])
            raise Refusal(400, f"api-version {shown} is not supported: this endpoint speaks the App Service "
                               f"protocol, api-version={API_VERSION}")
        resource = params.get("resource", "")
        if not resource:
            raise Refusal(400, "query parameter 'resource' is missing (e.g. resource=https://management.azure.com)")
        if len(resource) > MAX_RESOURCE or not resource.isprintable() or " " in resource:
            raise Refusal(400, "query parameter 'resource' must be a resource URI or app id without spaces, "
                               f"at most {MAX_RESOURCE} characters")
        return resource

    def _connection_ended(self) -> None:
        session: client.Session | None = getattr(self._local, "session", None)
        if session is not None:
            session.close()
            self._local.session = None

    def _from_daemon(self, scope: str) -> dict[str, Any]:
        """The daemon's token reply, over this connection thread's own daemon connection (kept open: an SDK makes a
        new HTTP connection per credential object, and a new daemon connection for each would double the cost);
        a daemon that is not running is started as ``aadhelper token`` would."""
        message = protocol.request("token", profile=self.profile, scopes=[scope], min_valid=MIN_VALID)
        session: client.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = client.Session(self._socket_path)
        try:
            reply = session.call(message)
        except DaemonTimedOut:
            raise  # it has the request; asking again (or starting another daemon) would only wait again
        except DaemonNotRunning:
            reply = client.call(message, socket_path=self._socket_path, autostart=True)
        if not isinstance(reply.get("access_token"), str):
            raise ProtocolError("malformed token reply from the daemon")
        client.check_expiry(reply)
        return reply


def _scope_base(scope: str) -> str:
    """A scope compared without a trailing ``/`` before ``/.default`` (``https://x/`` and ``https://x`` agree)."""
    base = scope.removesuffix("/.default")
    return base.rstrip("/") + "/.default"


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__


__all__ = ["API_VERSION", "MIN_VALID", "PATH", "REMOVED_VARIABLES", "Endpoint", "Refusal", "child_environment",
           "new_secret", "status_of"]
