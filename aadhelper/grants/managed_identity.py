"""Managed identity (``credential = "managed_identity"``): the daemon as a cache in front of the machine's identity.

Three endpoint protocols, as azure-identity and msal speak them (the source is resolved in
:class:`aadhelper.config.ManagedIdentity`):

==============  ===========================================================  ================================
source          request (GET ``endpoint``, query ``api-version``, ``resource``)  proof
==============  ===========================================================  ================================
``imds``        ``http://169.254.169.254/metadata/identity/oauth2/token``,    ``Metadata: true``
                api-version 2018-02-01
``app_service`` ``$IDENTITY_ENDPOINT``, api-version 2019-08-01               ``X-IDENTITY-HEADER:
                                                                             $IDENTITY_HEADER``
``arc``         ``$IDENTITY_ENDPOINT`` (``localhost:40342``), api-version     ``Metadata: true``; the first reply
                2020-06-01                                                    is 401 with ``WWW-Authenticate:
                                                                             Basic realm=<key file>``, the second
                                                                             request sends ``Authorization: Basic
                                                                             <file content>``
==============  ===========================================================  ================================

A user-assigned identity adds ``client_id``, ``object_id`` or its resource id (``msi_res_id``; App Service spells
it ``mi_res_id``). One scope ``R/.default`` asks for resource ``R``; anything else is a :class:`ConfigError`.

The reply's lifetime is ``expires_on`` (epoch seconds, an integer or a digit string) when present, else
``expires_in`` (azure-identity's order); like msal, a token of two hours or more is refreshed at half its lifetime
(``refresh_in``). Failures: nothing answering within :data:`CONNECT_TIMEOUT` (no IMDS: not on Azure), 429 (with
``Retry-After``), 5xx, IMDS's 404/410 (it is being updated) and IMDS's 400 (no identity assigned yet) are
:class:`AuthorityUnavailable`, which the cache retries with its backoff, so a failing endpoint sees one request per
backoff step; a refused App Service header, an Arc challenge that points outside the agent's directory or a key file
that is too big or unreadable are refusals or configuration errors, not retried on their own. Requests never go
through a proxy: every endpoint is on this machine or link-local, and App Service's header is a secret.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from ..config import ManagedIdentity, Profile
from ..errors import AuthenticationFailed, AuthorityUnavailable, ConfigError
from ..tokens import Secret, TokenResponse
from .http import get_json, parse_retry_after, parse_token_reply, printable

#: api-version of each source's token request.
API_VERSIONS: Mapping[str, str] = {"imds": "2018-02-01", "app_service": "2019-08-01", "arc": "2020-06-01"}
#: The query parameter naming a user-assigned identity, per source and per profile key (msal's mapping).
_ID_PARAMS: Mapping[str, Mapping[str, str]] = {
    "imds": {"client_id": "client_id", "object_id": "object_id", "msi_res_id": "msi_res_id"},
    "app_service": {"client_id": "client_id", "object_id": "object_id", "msi_res_id": "mi_res_id"},
    "arc": {"client_id": "client_id", "object_id": "object_id", "msi_res_id": "msi_res_id"},
}
#: Seconds to wait for a connection (azure-identity's IMDS connection_timeout): every endpoint is on this machine or
#: link-local, so a connection that takes longer will not come, and on a machine that is not in Azure nothing
#: answers at 169.254.169.254 at all.
CONNECT_TIMEOUT = 2.0
#: Largest Arc key file read (msal and azure-identity refuse bigger ones).
MAX_ARC_KEY_BYTES = 4096
#: msal's rule: a managed identity's token living this long or longer is refreshed at half its lifetime.
_HALF_LIFE_FROM = 7200.0
_PEERS: Mapping[str, str] = {"imds": "the Azure instance metadata service (IMDS)",
                             "app_service": "the App Service identity endpoint",
                             "arc": "the Azure Arc agent's identity endpoint"}
_RETRY_HINT = "aadhelper retries with backoff"


def resource_of(scopes: tuple[str, ...], profile: str) -> str:
    """The resource a managed identity is asked for: ``R`` of the one scope ``R/.default``."""
    if len(scopes) != 1:
        raise ConfigError(f"a managed identity gets a token for one resource at a time, but {len(scopes)} scopes "
                          f"were asked ({' '.join(scopes)})", profile=profile,
                          hint="ask for one scope of the form <resource>/.default")
    scope = scopes[0]
    resource = scope.removesuffix("/.default")
    if resource == scope or not resource:
        raise ConfigError(f"a managed identity takes a scope of the form <resource>/.default, not {scope!r}",
                          profile=profile, hint="e.g. https://management.azure.com/.default")
    return resource


class ManagedIdentitySource:
    """Access tokens from the machine's managed identity (a :class:`~aadhelper.cache.TokenSource`)."""

    def __init__(self, profile: Profile, *, client: httpx.AsyncClient, clock: Callable[[], float]) -> None:
        if profile.managed_identity is None:
            raise ConfigError(f"profile {profile.name!r} has no managed identity settings", profile=profile.name)
        self._profile = profile
        self._identity: ManagedIdentity = profile.managed_identity
        self._client = client
        self._clock = clock

    def __repr__(self) -> str:
        return f"ManagedIdentitySource(profile={self._profile.name!r}, source={self._identity.source!r})"

    async def acquire(self, scopes: tuple[str, ...]) -> TokenResponse:
        identity, name = self._identity, self._profile.name
        resource = resource_of(scopes, name)
        url = self._endpoint()
        params = {"api-version": API_VERSIONS[identity.source], "resource": resource}
        if identity.user_assigned is not None:
            key, value = identity.user_assigned
            params[_ID_PARAMS[identity.source][key]] = value
        headers = {"Metadata": "true"}
        if identity.source == "app_service":
            if identity.header is None:
                raise ConfigError("the App Service identity endpoint needs IDENTITY_HEADER, which the daemon's "
                                  "environment does not have", profile=name,
                                  hint="start the daemon from the app's environment (it sets IDENTITY_ENDPOINT and "
                                       "IDENTITY_HEADER), or set the profile's source")
            headers["X-IDENTITY-HEADER"] = identity.header.reveal()
        status, reply_headers, body = await self._get(url, params, headers)
        if identity.source == "arc" and status == 401:
            secret = read_arc_key(reply_headers, identity.arc_key_dir, name)
            headers["Authorization"] = f"Basic {secret.reveal()}"
            try:
                status, reply_headers, body = await self._get(url, params, headers)
            finally:
                del headers["Authorization"]
            if status == 401:
                raise AuthenticationFailed(f"{_PEERS['arc']} refused the key file it pointed to (HTTP 401)",
                                           profile=name, hint="check the Azure Arc agent (`azcmagent show`)")
        raise_for_reply(identity.source, status, reply_headers, body, profile=name)
        return token_of_reply(identity, body, scopes=scopes, now=self._clock(), profile=name)

    def _endpoint(self) -> str:
        endpoint, source = self._identity.endpoint, self._identity.source
        try:
            url = httpx.URL(endpoint)
        except (httpx.InvalidURL, TypeError):
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            where = "IDENTITY_ENDPOINT" if source != "imds" else "AZURE_POD_IDENTITY_AUTHORITY_HOST"
            raise ConfigError(f"the {source} endpoint {endpoint[:80]!r} is not an http(s) URL (from the profile's "
                              f"endpoint, else {where} of the daemon's environment)", profile=self._profile.name)
        return endpoint

    async def _get(self, url: str, params: Mapping[str, str],
                   headers: Mapping[str, str]) -> tuple[int, Mapping[str, str], dict[str, Any] | None]:
        source = self._identity.source
        host = httpx.URL(url).host
        if source == "imds":
            unreachable = (f"no managed identity here: nothing answers at {host} (the Azure instance metadata "
                           "service); this machine is not an Azure VM or scale set, or IMDS is blocked")
        else:
            unreachable = f"no managed identity here: {_PEERS[source]} at {host} does not answer"
        return await get_json(self._client, url, params=params, headers=headers, profile=self._profile.name,
                              peer=_PEERS[source], connect_timeout=CONNECT_TIMEOUT, unreachable=unreachable)


def read_arc_key(headers: Mapping[str, str], key_dir: str, profile: str) -> Secret:
    """The secret of an Arc challenge (``WWW-Authenticate: Basic realm=<file>``): the file's content, read only from
    ``key_dir``, only a ``.key`` file, only a regular file of at most :data:`MAX_ARC_KEY_BYTES` (whoever answers on
    the agent's port must not make us send them any file we can read)."""
    challenge = headers.get("www-authenticate", "")
    scheme, _, realm = challenge.partition("=")
    realm = realm.strip().strip('"')
    if scheme.strip().lower() != "basic realm" or not realm:
        raise AuthenticationFailed(f"{_PEERS['arc']} answered 401 without a Basic realm challenge "
                                   f"({printable(challenge, 80) or 'no WWW-Authenticate header'})", profile=profile,
                                   hint="check that the Azure Arc agent (himds) answers on that port")
    path = os.path.normpath(realm)
    if os.path.dirname(path) != key_dir or not path.endswith(".key"):
        raise AuthenticationFailed(f"{_PEERS['arc']} pointed to the key file {printable(realm, 120)!r}, which is "
                                   f"not a .key file in {key_dir}; refusing to read it", profile=profile,
                                   hint="something other than the Azure Arc agent may answer on its port")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        hint = ("add the daemon's user to the himds group (`sudo usermod -aG himds $USER`), then sign in again"
                if isinstance(exc, PermissionError) else "check the Azure Arc agent (`azcmagent show`)")
        raise ConfigError(f"cannot read the Azure Arc key file {path}: {(exc.strerror or str(exc)).lower()}",
                          profile=profile, hint=hint) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_ARC_KEY_BYTES:
            raise AuthenticationFailed(f"the Azure Arc key file {path} is not a regular file of at most "
                                       f"{MAX_ARC_KEY_BYTES} bytes; refusing to send it", profile=profile)
        data = os.read(fd, MAX_ARC_KEY_BYTES + 1)
    finally:
        os.close(fd)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    key = text.strip()  # a file ending in a newline is usual; the key itself has no white space
    if not key or len(data) > MAX_ARC_KEY_BYTES or not key.isprintable() or any(c.isspace() for c in key):
        raise AuthenticationFailed(f"the Azure Arc key file {path} is empty or not a printable key", profile=profile)
    return Secret(key)


def raise_for_reply(source: str, status: int, headers: Mapping[str, str], body: Mapping[str, Any] | None, *,
                    profile: str) -> None:
    """The error for a reply that is no token: retried with backoff when waiting can help, else a refusal."""
    if status == 200:
        return
    peer = _PEERS[source]
    said = _said(body)
    detail = f": {said}" if said else ""
    retry_after = parse_retry_after(headers.get("retry-after"))
    later = f", retry after {retry_after:.0f} s" if retry_after is not None else ""
    common: dict[str, Any] = {"profile": profile, "retry_after": retry_after, "reason": said or None,
                              "error": printable(body.get("error"), 80) if body else None}
    if status == 429:
        raise AuthorityUnavailable(f"{peer} throttled the request (HTTP 429{later}){detail}", hint=_RETRY_HINT,
                                   **common)
    if status >= 500 or (source == "imds" and status in (404, 410)):
        # IMDS answers 404 and 410 while it is being updated (azure-identity retries them).
        raise AuthorityUnavailable(f"{peer} failed with HTTP {status}{later}{detail}", hint=_RETRY_HINT, **common)
    if source == "imds" and (status == 400 or (status == 403 and "unreachable" in said.lower())):
        # 400: no identity assigned (or not the named one); 403 "unreachable": a proxy (Docker Desktop) answered for
        # the unreachable IMDS. azure-identity calls both "unavailable"; an identity assigned later is picked up.
        what = "no managed identity here: " if status == 403 else "IMDS has no such managed identity: "
        raise AuthorityUnavailable(f"{what}{peer} answered HTTP {status}{detail}", hint=(
            "assign a managed identity to the VM (`az vm identity assign`), or fix the profile's client_id/"
            f"object_id/msi_res_id; {_RETRY_HINT}"), **common)
    if source == "app_service" and status in (401, 403):
        raise AuthenticationFailed(f"{peer} refused the X-IDENTITY-HEADER (HTTP {status}){detail}", hint=(
            "the daemon's IDENTITY_HEADER is wrong or stale (the platform changes it when the app restarts): "
            "restart the daemon from the app's environment"), **common)
    raise AuthenticationFailed(f"{peer} refused the token request (HTTP {status}){detail}", hint=(
        "check the profile's scope (the resource) and the identity (`aadhelper profile show`)"), **common)


def _said(body: Mapping[str, Any] | None) -> str:
    """What an error body says: IMDS and Arc send ``error``/``error_description``, App Service ``message``."""
    if not body:
        return ""
    for key in ("error_description", "message", "error"):
        text = printable(body.get(key), 200)
        if text:
            return text.strip()
    return ""


def token_of_reply(identity: ManagedIdentity, body: Mapping[str, Any] | None, *, scopes: tuple[str, ...],
                   now: float, profile: str) -> TokenResponse:
    """A token reply as a :class:`TokenResponse` (through :func:`~aadhelper.grants.http.parse_token_reply`'s checks),
    its lifetime from ``expires_on`` when present, else ``expires_in``."""
    peer = _PEERS[identity.source]

    def malformed(what: str) -> AuthorityUnavailable:
        return AuthorityUnavailable(f"{peer} sent a malformed token reply ({what})", profile=profile,
                                    hint=_RETRY_HINT)

    if body is None:
        raise malformed("not a JSON object")
    normal: dict[str, Any] = {key: body[key] for key in ("access_token", "token_type", "expires_in", "refresh_in")
                              if key in body}
    if "expires_on" in body:
        expires_on = _epoch(body["expires_on"])
        if expires_on is None:
            raise malformed(f"bad expires_on {printable(str(body['expires_on']), 40)!r}: not whole epoch seconds")
        if expires_on <= now:
            raise malformed(f"expires_on {expires_on} is not in the future")
        normal["expires_in"] = expires_on - now
    if identity.source == "arc" and identity.user_assigned is not None:
        _check_arc_identity(identity.user_assigned, body, profile)
    expires_in = normal.get("expires_in")
    if "refresh_in" not in normal and isinstance(expires_in, (int, float, str)):
        try:
            lifetime = float(expires_in)
        except ValueError:
            lifetime = 0.0
        if lifetime >= _HALF_LIFE_FROM and lifetime < float("inf"):
            normal["refresh_in"] = lifetime / 2
    return parse_token_reply(normal, scopes=scopes, now=now, profile=profile, peer=peer)


def _epoch(value: object) -> int | None:
    """``expires_on``: an integer or a string of digits (what ``int()`` in azure-identity and msal takes)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() and len(value) <= 20:
        return int(value)
    return None


def _check_arc_identity(user_assigned: tuple[str, str], body: Mapping[str, Any], profile: str) -> None:
    """msal's rule: an old Arc agent ignores the identity asked for and answers with the system-assigned one; a
    token for another identity than the profile names is refused, not served."""
    key, wanted = user_assigned
    echoed = body.get(key) if key != "msi_res_id" else (body.get("msi_res_id") or body.get("mi_res_id"))
    if not isinstance(echoed, str) or echoed.lower() != wanted.lower():
        raise AuthenticationFailed(f"{_PEERS['arc']} did not confirm the user-assigned identity {key} {wanted} in "
                                   "its reply (an agent without user-assigned identities answers with the machine's "
                                   "own)", profile=profile, hint="update the Azure Arc agent, or drop the profile's "
                                                                 f"{key} to use the system-assigned identity")


__all__ = ["ManagedIdentitySource", "raise_for_reply", "read_arc_key", "resource_of",
           "token_of_reply"]
