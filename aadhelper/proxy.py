"""Which HTTP proxy the daemon's fetches to the authority go through, and where that choice came from.

The daemon never takes a proxy from whoever happened to start it (see
:func:`aadhelper.process_setup.clean_start_environment`): one shell's ``HTTPS_PROXY`` would otherwise carry the
client secret of every later fetch. A proxy comes from the configuration (``[daemon] proxy`` and ``no_proxy``),
or, only when the user opts in with ``[daemon] proxy_from_environment = true``, from the proxy variables of the
daemon's own start environment (``HTTPS_PROXY``, else ``ALL_PROXY``, and ``NO_PROXY``; lower-case spellings win,
as in Python's :func:`urllib.request.getproxies`). Fetches go to ``https://`` authorities, so ``HTTP_PROXY`` is
not used.

Pure values and parsing, standard library only: :mod:`aadhelper.config` validates with it, the fetcher's HTTP
clients (:mod:`aadhelper.grants.http`) apply it, ``status`` shows it. A proxy URL may carry ``user:password``:
it is never shown, logged or put in a message (:meth:`ProxySetting.shown_url`, the ``repr``).
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Proxy URL schemes accepted. httpx speaks SOCKS only with its optional ``socks`` extra, which aadhelper does
#: not install: a socks5:// value is refused with a clear error rather than failing at the first fetch.
SCHEMES = ("http", "https")
#: The variables a proxy may come from, in the order they are tried (lower case first, as urllib does).
HTTPS_PROXY_VARIABLES = ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")
NO_PROXY_VARIABLES = ("no_proxy", "NO_PROXY")
#: Every proxy variable the daemon's start environment is cleared of (and keeps aside for the opt-in).
PROXY_VARIABLES = (*HTTPS_PROXY_VARIABLES, "http_proxy", "HTTP_PROXY", *NO_PROXY_VARIABLES)

_HOST_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")
_MAX_URL = 2000


class InvalidProxy(ValueError):
    """A proxy URL or no_proxy list that cannot be used; the message never contains a password."""


@dataclass(frozen=True)
class ProxySetting:
    """The proxy for fetches: ``url`` (None: connect directly), the hosts reached directly all the same, and
    where the setting came from (``none``, ``config`` or ``environment``, with the variable's name)."""

    url: str | None = None
    no_proxy: tuple[str, ...] = ()
    source: str = "none"
    variable: str | None = None

    def __repr__(self) -> str:
        return f"ProxySetting(url={self.shown_url()!r}, no_proxy={self.no_proxy!r}, source={self.source!r})"

    @property
    def bypasses_all(self) -> bool:
        """``no_proxy = "*"``: every host is reached directly (curl's rule)."""
        return "*" in self.no_proxy

    def used_for(self, host: str) -> bool:
        """Whether a connection to ``host`` goes through the proxy (no_proxy: the host or a parent domain)."""
        host = host.lower().strip("[]")
        return self.url is not None and not self.bypasses_all and not any(
            host == entry.strip("[]") or host.endswith("." + entry) for entry in self.no_proxy)

    def shown_url(self) -> str | None:
        """The URL for display and logs: any ``user:password@`` replaced by ``***@``."""
        return None if self.url is None else redact(self.url)

    def to_status(self) -> dict[str, Any]:
        """For ``status --json`` (``daemon.proxy``): nothing secret."""
        return {"source": self.source, "variable": self.variable, "url": self.shown_url(),
                "no_proxy": list(self.no_proxy)}

    def to_wire(self) -> dict[str, Any]:
        """For the daemon -> fetcher link (private to the user's own processes): the real URL."""
        return {"url": self.url, "no_proxy": list(self.no_proxy), "source": self.source, "variable": self.variable}

    @classmethod
    def from_wire(cls, wire: object) -> ProxySetting:
        """The inverse of :meth:`to_wire`; None or a malformed value is a ValueError (absent means direct)."""
        if wire is None:
            return DIRECT
        if not isinstance(wire, dict):
            raise ValueError("malformed proxy setting")
        url, no_proxy, source, variable = (wire.get(key) for key in ("url", "no_proxy", "source", "variable"))
        if (not isinstance(url, (str, type(None))) or not isinstance(no_proxy, list)
                or not all(isinstance(host, str) for host in no_proxy) or not isinstance(source, str)
                or not isinstance(variable, (str, type(None)))):
            raise ValueError("malformed proxy setting")
        return cls(url, tuple(no_proxy), source, variable)


#: No proxy: fetches connect to the authority directly.
DIRECT = ProxySetting()


def describe(status: Mapping[str, Any]) -> str:
    """One line for ``aadhelper status`` from :meth:`ProxySetting.to_status`."""
    url = status.get("url")
    if not url:
        return "none"
    where = "from config" if status.get("source") == "config" else \
        f"from the daemon's start environment ({status.get('variable')})"
    hosts = status.get("no_proxy") or []
    return f"{where}: {url}" + (f" (not for {', '.join(hosts)})" if hosts else "")


def redact(url: str) -> str:
    """``url`` without the password (and user) it may carry; also a bare ``user:password@host:port``, which a proxy
    variable may hold (:func:`from_environment` reads it as http://)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return f"{scheme}{sep}{authority}{slash}{path}"


def parse_proxy_url(value: str) -> str:
    """A proxy URL, checked: ``http(s)://[user:password@]host[:port][/]``. Raises :class:`InvalidProxy` whose
    message never repeats the value's password."""
    if not value or len(value) > _MAX_URL or any(c.isspace() or not c.isprintable() for c in value):
        raise InvalidProxy("must be a URL like http://proxy.example.com:3128, without spaces or control characters")
    try:
        split = urllib.parse.urlsplit(value)
        split.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError:
        raise InvalidProxy(f"is not a valid URL: {redact(value)} (check the host and port)") from None
    scheme = split.scheme.lower()
    if scheme.startswith("socks"):
        raise InvalidProxy("is a SOCKS proxy; aadhelper supports http:// and https:// proxies only")
    if scheme not in SCHEMES or not split.hostname:
        raise InvalidProxy(f"must be an http:// or https:// URL naming a host, like http://proxy.example.com:3128, "
                           f"not {redact(value)!r}")
    if split.path not in ("", "/") or split.query or split.fragment or value.endswith(("?", "#")):
        raise InvalidProxy(f"must be just scheme://host:port, without a path, query or fragment: {redact(value)!r}")
    return value


def parse_no_proxy(value: str) -> tuple[str, ...]:
    """A no_proxy list: comma-separated host names (each also covers its subdomains; a leading ``.`` or ``*.`` is
    the same), IP addresses, or ``*`` for every host. Returned normalised: lower case, without the leading dot."""
    hosts: list[str] = []
    for raw in value.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            hosts.append(entry)
            continue
        host = entry.removeprefix("*.").removeprefix(".")
        if not _is_ip(host.strip("[]")) and not _HOST_RE.fullmatch(host):
            raise InvalidProxy(f"has {entry[:60]!r}, which is not a host name or IP address (ranges, ports and "
                               "wildcards other than a leading '.' are not supported)")
        if host not in hosts:
            hosts.append(host)
    return tuple(hosts)


def from_environment(environ: Mapping[str, str]) -> ProxySetting:
    """The proxy the variables in ``environ`` name for https:// URLs (the opt-in ``proxy_from_environment``).

    A bare ``host:port`` means ``http://host:port`` (curl's and httpx's reading). Raises :class:`InvalidProxy`,
    naming the variable, for a value that cannot be used.
    """
    name = next((name for name in HTTPS_PROXY_VARIABLES if environ.get(name, "").strip()), None)
    if name is None:
        return ProxySetting(source="environment")
    value = environ[name].strip()
    try:
        url = parse_proxy_url(value if "://" in value else "http://" + value)
    except InvalidProxy as exc:
        raise InvalidProxy(f"environment variable {name} {exc}") from None
    hosts: tuple[str, ...] = ()
    for no_proxy_name in NO_PROXY_VARIABLES:
        if environ.get(no_proxy_name):
            try:
                hosts = parse_no_proxy(environ[no_proxy_name])
            except InvalidProxy as exc:
                raise InvalidProxy(f"environment variable {no_proxy_name} {exc}") from None
            break
    return ProxySetting(url, hosts, "environment", name)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
