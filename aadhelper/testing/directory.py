"""The simulated directory: tenants, app registrations and users, and the checks Entra makes against them.

Lookups and checks raise :class:`~aadhelper.testing.entra.EntraError` with the code Entra uses: an unknown tenant
(90002), an app not in the tenant (700016), a wrong, missing or expired secret (7000215, 7000218, 7000222).
Not thread-safe by itself: the authority calls it under its lock.
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

from .entra import entra_error

#: Tenant path segments that are not a tenant: Entra resolves them from the app or the user.
TENANT_ALIASES = frozenset({"common", "organizations", "consumers"})
GRAPH = "https://graph.microsoft.com"
#: Azure DevOps' resource id (its scope is ``ADO + "/.default"``).
ADO = "499b84ac-1321-427f-aa17-267ca6975798"
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1"})
_T = TypeVar("_T")


@dataclass(frozen=True)
class Tenant:
    tenant_id: str
    names: frozenset[str]


@dataclass
class Client:
    """An app registration; mutable so a test can rotate or expire its secret while the authority runs."""

    client_id: str
    tenant_id: str
    public: bool
    #: Resource URIs (without a trailing slash) the app may get tokens for.
    resources: tuple[str, ...]
    #: App roles put in app-only tokens.
    roles: tuple[str, ...]
    #: Registered redirect URIs; None accepts any http loopback URI (a simulator convenience).
    redirect_uris: tuple[str, ...] | None
    #: The service principal's object id, the ``oid`` of app-only tokens.
    object_id: str
    secret: str | None = field(default=None, repr=False)
    secret_expires_at: float | None = None

    def has_resource(self, resource: str) -> bool:
        return resource.rstrip("/") in self.resources

    def accepts_redirect(self, uri: str) -> bool:
        """Entra's rule: exact match, except that the port of an http loopback URI is ignored (RFC 8252)."""
        try:
            got = urlsplit(uri)
            got.port  # noqa: B018 - raises ValueError on a port that is not a number
        except ValueError:
            return False
        loopback = got.scheme == "http" and got.hostname in _LOOPBACK_HOSTS
        if self.redirect_uris is None:
            return loopback
        for registered in self.redirect_uris:
            want = urlsplit(registered)
            if registered == uri or (loopback and (want.scheme, want.hostname, want.path or "/", want.query)
                                     == (got.scheme, got.hostname, got.path or "/", got.query)):
                return True
        return False


@dataclass(frozen=True)
class User:
    username: str
    tenant_id: str
    object_id: str
    display_name: str


class Directory:
    """Tenants (by id or domain, case-insensitive), apps by client id, users by user name."""

    def __init__(self) -> None:
        self._tenants: dict[str, Tenant] = {}
        self._clients: dict[str, Client] = {}
        self._users: dict[str, User] = {}

    def add_tenant(self, name: str, *, aliases: Iterable[str] = ()) -> Tenant:
        """Register a tenant by id (a GUID) or domain; a domain gets a stable GUID derived from it."""
        key = name.lower()
        if key in TENANT_ALIASES or not key:
            raise ValueError(f"{name!r} cannot be a tenant name")
        existing = self._tenants.get(key)
        tenant_id = existing.tenant_id if existing else _guid_or_derived(name)
        names = {key, tenant_id, *(alias.lower() for alias in aliases)} | (existing.names if existing else set())
        tenant = Tenant(tenant_id, frozenset(names))
        for each in names:
            self._tenants[each] = tenant
        return tenant

    def add_client(self, client_id: str, *, tenant: str, secret: str | None, public: bool,
                   resources: Iterable[str], roles: Iterable[str], redirect_uris: Iterable[str] | None,
                   secret_expires_at: float | None) -> Client:
        if public and secret is not None:
            raise ValueError("a public client has no secret")
        home = self._registered(tenant)
        client = Client(
            client_id=client_id, tenant_id=home.tenant_id, public=public,
            resources=tuple(r.rstrip("/") for r in resources), roles=tuple(roles),
            redirect_uris=None if redirect_uris is None else tuple(redirect_uris),
            object_id=_derived_guid("sp", client_id), secret=secret, secret_expires_at=secret_expires_at)
        self._clients[client_id.lower()] = client
        return client

    def add_user(self, username: str, *, tenant: str, display_name: str | None = None) -> User:
        home = self._registered(tenant)
        user = User(username, home.tenant_id, _derived_guid("user", username.lower()),
                    display_name or username.partition("@")[0])
        self._users[username.lower()] = user
        return user

    def _registered(self, name: str) -> Tenant:
        return _find(self._tenants, name, "tenant")

    def tenant(self, name: str) -> Tenant | None:
        """The tenant a path segment names; None for ``common``/``organizations``/``consumers``."""
        if name.lower() in TENANT_ALIASES:
            return None
        tenant = self._tenants.get(name.lower())
        if tenant is None:
            raise entra_error(90002, tenant=name)
        return tenant

    def client(self, client_id: str, tenant: Tenant | None, tenant_name: str) -> Client:
        """The app ``client_id`` in ``tenant`` (any tenant through an alias path)."""
        client = self._clients.get(client_id.lower())
        if client is None or (tenant is not None and client.tenant_id != tenant.tenant_id):
            raise entra_error(700016, client_id=client_id, tenant=tenant_name)
        return client

    def client_by_id(self, client_id: str) -> Client:
        return _find(self._clients, client_id, "client")

    def user(self, username: str) -> User:
        return _find(self._users, username, "user")

    def users_of(self, tenant_id: str) -> list[User]:
        return [user for user in self._users.values() if user.tenant_id == tenant_id]


def authenticate(client: Client, form: Mapping[str, str], basic: tuple[str, str] | None, now: float, *,
                 app_only: bool) -> None:
    """Check the client's credentials as Entra does; ``app_only`` (client credentials) needs a secret."""
    if "client_assertion" in form:  # the token endpoint checks assertions before (see grants._client)
        raise entra_error(700027, reason="The app has no certificate or federated credential.")
    if basic is not None and "client_secret" in form:
        raise entra_error(9002313, detail="Client credentials were given both in the Authorization header and "
                                          "in the request body; use one.")
    secret = basic[1] if basic is not None else form.get("client_secret")
    if client.public:
        if secret:
            raise entra_error(700025)
        if app_only:
            raise entra_error(7000218)
        return
    if not secret:
        raise entra_error(7000218)
    if client.secret is None or not hmac.compare_digest(secret.encode(), client.secret.encode()):
        raise entra_error(7000215, client_id=client.client_id)
    if client.secret_expires_at is not None and now >= client.secret_expires_at:
        raise entra_error(7000222, client_id=client.client_id)


def _find(table: Mapping[str, _T], name: str, kind: str) -> _T:
    """A registration by case-insensitive name; ValueError (a mistake in the test's set-up) when missing."""
    try:
        return table[name.lower()]
    except KeyError:
        raise ValueError(f"{name!r} is not a registered {kind}; add it first") from None


def _guid_or_derived(name: str) -> str:
    try:
        return str(uuid.UUID(name))
    except ValueError:
        return _derived_guid("tenant", name.lower())


def _derived_guid(kind: str, name: str) -> str:
    # Stable across runs so that test expectations and demo output do not change from one run to the next.
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"aadhelper-simulated-entra:{kind}:{name}"))
