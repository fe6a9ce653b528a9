"""Scope strings as Entra reads them: one resource per request, ``/.default``, OpenID scopes, bare Graph names.

``https://graph.microsoft.com/.default offline_access`` names the resource ``https://graph.microsoft.com``
with the permission ``.default`` plus the OpenID scope ``offline_access``; a bare ``User.Read`` is a Graph
permission. Errors are Entra's: a missing scope (900144), several resources (700022), a client-credentials scope
without ``/.default`` (1002012), a resource the app has not registered (500011, or 65001 on refresh).
"""

from __future__ import annotations

from dataclasses import dataclass

from .directory import GRAPH, Client
from .entra import entra_error

OIDC_SCOPES = frozenset({"openid", "profile", "email", "offline_access"})


@dataclass(frozen=True)
class UserScope:
    """What a user sign-in or refresh asks for."""

    resource: str
    permissions: tuple[str, ...]
    #: OpenID scopes in request order (``offline_access`` asks for a refresh token, ``openid`` for an id token).
    oidc: tuple[str, ...]

    @property
    def scp(self) -> str:
        """The access token's ``scp`` claim."""
        return " ".join(p for p in self.permissions if p != ".default") or "user_impersonation"

    @property
    def granted(self) -> str:
        """The reply's ``scope`` field, also what a refresh without a scope reuses."""
        return " ".join([f"{self.resource}/{p}" for p in self.permissions] + list(self.oidc))


def app_scope(client: Client, scope: str | None, tenant_name: str) -> str:
    """The resource of a client-credentials request: exactly one ``<resource>/.default`` the app has."""
    items = _items(scope)
    if len({_split(item)[0] for item in items}) > 1:
        raise entra_error(700022, scope=scope)
    if len(items) != 1 or not items[0].endswith("/.default"):
        raise entra_error(1002012, scope=scope)
    resource = _split(items[0])[0]
    if not client.has_resource(resource):
        raise entra_error(500011, resource=resource, tenant=tenant_name)
    return resource


def user_scope(client: Client, scope: str | None, tenant_name: str, *, unconsented: int = 500011) -> UserScope:
    """The resource, permissions and OpenID scopes of a user flow; ``unconsented``: the code for a foreign resource."""
    items = _items(scope)
    oidc = tuple(item.lower() for item in items if item.lower() in OIDC_SCOPES)
    by_resource: dict[str, list[str]] = {}
    for item in items:
        if item.lower() not in OIDC_SCOPES:
            resource, permission = _split(item)
            if not resource or not permission:
                raise entra_error(70011, scope=item)
            by_resource.setdefault(resource, []).append(permission)
    if len(by_resource) > 1:
        raise entra_error(700022, scope=scope)
    # Only OpenID scopes: Entra still issues an access token, for Microsoft Graph.
    resource, permissions = next(iter(by_resource.items()), (GRAPH, ["User.Read"]))
    if not client.has_resource(resource):
        raise entra_error(unconsented, resource=resource, tenant=tenant_name, client_id=client.client_id)
    return UserScope(resource, tuple(permissions), oidc)


def _items(scope: str | None) -> list[str]:
    items = (scope or "").split()
    if not items:
        raise entra_error(900144, name="scope")
    return items


def _split(item: str) -> tuple[str, str]:
    if "/" not in item:
        return GRAPH, item
    resource, _, permission = item.rpartition("/")
    return resource.rstrip("/"), permission
