"""URLs in the configuration: cloud names and authority URLs (azure-identity's rules), and git remote prefixes.

Pure functions over strings, shared by :mod:`aadhelper.config` (validation) and the git URL matching.
"""

from __future__ import annotations

import ipaddress
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .errors import ConfigError

CLOUDS: Mapping[str, str] = MappingProxyType({
    "public": "https://login.microsoftonline.com",
    "usgov": "https://login.microsoftonline.us",
    # azure-identity's host for Azure China; Entra's national-cloud page also lists login.partner.microsoftonline.cn,
    # which a profile can name as authority = "https://login.partner.microsoftonline.cn".
    "china": "https://login.chinacloudapi.cn",
})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def resolve_authority(value: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The authority base URL for a profile's ``authority`` value (None: ``AZURE_AUTHORITY_HOST``, else public)."""
    try:
        return resolve_authority_url(value, environ)
    except InvalidAuthority as exc:
        raise ConfigError(f"{exc.source} {exc}") from None


def normalize_git_url(url: str) -> str:
    """A git URL prefix in canonical form (``https://host[:port]/seg/.../``); ValueError says what is wrong."""
    parts = _split_url(url, ("http", "https"))
    if parts.userinfo:
        raise ValueError("must not contain a user name or password (use the 'username' key)")
    if parts.query_or_fragment:
        raise ValueError("must not contain a query or fragment")
    segments = [s for s in parts.path.split("/") if s]
    return parts.origin + "/" + "".join(s + "/" for s in segments)


class InvalidAuthority(ValueError):
    """A bad authority value; ``source`` says whether it came from the key or the environment."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(problem)
        self.source = source


def resolve_authority_url(value: str | None, environ: Mapping[str, str]) -> str:
    """Like :func:`resolve_authority`, raising :class:`InvalidAuthority` so the caller can add the file and profile."""
    if value is None:
        env = environ.get("AZURE_AUTHORITY_HOST", "").strip()
        if not env:
            return CLOUDS["public"]
        # azure-identity's rule: a bare host means https.
        value, source = (env if "://" in env else "https://" + env), "environment variable AZURE_AUTHORITY_HOST"
    elif value in CLOUDS:
        return CLOUDS[value]
    else:
        source = "key 'authority'"
    try:
        parts = _split_url(value, ("https", "http"))
    except ValueError as exc:
        raise InvalidAuthority(source, f"{exc} (use public, usgov, china or an https:// URL)") from None
    if parts.scheme == "http" and not _is_loopback(parts.host):
        raise InvalidAuthority(source, "must use https:// (plain http:// only for a loopback host such as 127.0.0.1)")
    if parts.userinfo or parts.query_or_fragment:
        raise InvalidAuthority(source, "must be a plain https://host[/path] URL, without user, query or fragment")
    return parts.origin + parts.path.rstrip("/")


@dataclass(frozen=True)
class _UrlParts:
    scheme: str
    host: str
    port: int | None
    path: str
    userinfo: bool
    query_or_fragment: bool

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port in (None, _DEFAULT_PORTS.get(self.scheme)) else f":{self.port}"
        return f"{self.scheme}://{host}{port}"


def _split_url(url: str, schemes: tuple[str, ...]) -> _UrlParts:
    if not url or any(c.isspace() or not c.isprintable() for c in url):
        raise ValueError("must be a URL without spaces or control characters")
    try:
        split = urllib.parse.urlsplit(url)
        port = split.port
    except ValueError:
        raise ValueError("is not a valid URL (check the host and port)") from None
    scheme = split.scheme.lower()
    if scheme not in schemes:
        raise ValueError(f"must be an {' or '.join(s + '://' for s in schemes)} URL")
    if not split.hostname:
        raise ValueError("must name a host")
    return _UrlParts(scheme, split.hostname.lower(), port, split.path, "@" in split.netloc,
                     bool(split.query or split.fragment or url.endswith(("?", "#"))))


def match_key(url: str) -> tuple[str, tuple[str, ...]]:
    """Origin and decoded path segments: prefixes compare on whole segments, ignoring userinfo and query."""
    # git decodes the path it passes to helpers, so a remote's "%20" may arrive as a space.
    parts = _split_url(url.replace(" ", "%20"), ("http", "https"))
    return parts.origin, tuple(urllib.parse.unquote(s) for s in parts.path.split("/") if s)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
