"""doctor's checks of the way to the authority: TLS with the CA in use and the proxy (a GET of the OpenID discovery
document, with no credentials), the clock against its ``Date`` header, and the proxy variables."""

from __future__ import annotations

import email.utils
import os
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

from ..config import Config, Profile
from ..errors import AadhelperError
from ..process_setup import environment_report
from ..proxy import HTTPS_PROXY_VARIABLES, PROXY_VARIABLES, describe
from .findings import AUTHORITY_TIMEOUT, Finding, from_error

#: Clock skew against the authority (seconds) above which doctor warns, and fails. Entra accepts client assertions
#: (certificate and federated credentials) and validates token times with a tolerance of 5 minutes; past that,
#: assertions are refused and other software on this machine takes fresh tokens for expired or not yet valid. A
#: minute is far more than an NTP-synchronised clock ever drifts: worth fixing before it grows.
CLOCK_WARN = 60.0
CLOCK_FAIL = 300.0


def authority_groups(profiles: Iterable[Profile]) -> list[list[Profile]]:
    """Profiles that reach the same discovery document the same way (CA, proxy): one request for each group.
    Managed-identity profiles are left out: their tokens come from the identity endpoint, never from the authority
    (their credential check probes that endpoint)."""
    groups: dict[tuple[Any, ...], list[Profile]] = {}
    for profile in profiles:
        if profile.credential == "managed_identity":
            continue
        key = (profile.authority, profile.tenant.lower(), profile.ca_bundle, profile.proxy)
        groups.setdefault(key, []).append(profile)
    return list(groups.values())


def discovery_url(profile: Profile) -> str:
    """The tenant's OpenID discovery document: public, asked for without credentials."""
    return f"{profile.authority}/{profile.tenant}/v2.0/.well-known/openid-configuration"


def check_authority(group: list[Profile]) -> list[Finding]:
    """GET the discovery document as the daemon's fetcher would connect (its CA and proxy settings), and compare
    the clocks with the reply's ``Date``."""
    import trio

    from ..grants.http import HttpClients, get_json, raise_for_error

    profile = group[0]
    names = ", ".join(repr(p.name) for p in group)
    url = discovery_url(profile)
    how = _connection(profile)

    async def probe() -> tuple[int, Mapping[str, str], dict[str, Any] | None, float, float]:
        clients = HttpClients()
        try:
            http = clients.get(profile.ca_bundle, profile.proxy)
            sent = time.time()
            status, headers, body = await get_json(http, url, profile=profile.name, timeout=AUTHORITY_TIMEOUT)
            return status, headers, body, sent, time.time()
        finally:
            await clients.aclose()

    details = {"url": url, "profiles": [p.name for p in group]}
    try:
        status, headers, body, sent, received = trio.run(probe)
    except AadhelperError as exc:
        finding = from_error("authority", exc, profile=profile.name)
        return [Finding("authority", "fail", f"{finding.message} ({url}; {how}; profiles {names})", finding.fix,
                        profile.name, details)]
    elapsed = f"{(received - sent) * 1000:.0f} ms"
    findings: list[Finding] = []
    if status == 200 and isinstance(body, dict) and isinstance(body.get("token_endpoint"), str):
        findings.append(Finding("authority", "ok", f"{url} answered in {elapsed} ({how}; profiles {names})",
                                profile=profile.name, details=details))
    elif status == 200:
        findings.append(Finding("authority", "warn", f"{url} answered, but not with a discovery document ({how})",
                                "check the profile's authority", profile.name, details))
    else:
        try:
            raise_for_error(status, headers, body, profile=profile.name, action="discovery request")
            raise ValueError("not an error")  # pragma: no cover  (raise_for_error raises for any non-200)
        except AadhelperError as exc:
            finding = from_error("authority", exc, profile=profile.name)
            findings.append(Finding("authority", "fail", f"{finding.message} ({url})", finding.fix, profile.name,
                                    details))
    findings.append(_clock(headers.get("date"), sent, received, url))
    return findings


def _connection(profile: Profile) -> str:
    """How the daemon connects to the profile's authority: the CA it trusts, the proxy."""
    if profile.authority.startswith("http://"):
        ca = "plain HTTP, loopback only"
    elif profile.ca_bundle:
        ca = f"TLS, CA bundle {profile.ca_bundle}"
    else:
        extra = [f"{name}={os.environ[name]}" for name in ("SSL_CERT_FILE", "SSL_CERT_DIR") if os.environ.get(name)]
        ca = "TLS, the system's CAs" + (f" ({', '.join(extra)})" if extra else "")
    host = urllib.parse.urlsplit(profile.authority).hostname or ""
    proxy = f"proxy {describe(profile.proxy.to_status())}" if profile.proxy.used_for(host) else "no proxy"
    return f"{ca}; {proxy}"


def _clock(date: str | None, sent: float, received: float, url: str) -> Finding:
    host = urllib.parse.urlsplit(url).netloc
    if not date:
        return Finding("clock", "warn", f"cannot compare clocks: {host} sent no Date header")
    try:
        theirs = email.utils.parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return Finding("clock", "warn", f"cannot compare clocks: {host} sent an unreadable Date header")
    # The Date was stamped somewhere between sending and receiving, and is truncated to the second.
    skew = (sent + received) / 2 - theirs
    margin = (received - sent) / 2 + 1.0
    off = max(0.0, abs(skew) - margin)
    details = {"skew_seconds": round(skew, 1), "authority": host}
    direction = "ahead of" if skew > 0 else "behind"
    text = f"this machine's clock is {abs(skew):.0f} s {direction} the authority's ({host})"
    fix = "synchronise the clock (`timedatectl set-ntp true`, or check chrony/ntpd)"
    if off > CLOCK_FAIL:
        return Finding("clock", "fail", f"{text}: beyond the {CLOCK_FAIL:g} s Entra tolerates", fix, details=details)
    if off > CLOCK_WARN:
        return Finding("clock", "warn", f"{text}: more than {CLOCK_WARN:g} s", fix, details=details)
    return Finding("clock", "ok", f"{text} (within {CLOCK_WARN:g} s)", details=details)


# -- proxy ---------------------------------------------------------------------------------------------------------

def check_proxy(config: Config) -> list[Finding]:
    """This shell's proxy variables (redacted) against the proxy the daemon's fetches use."""
    shell = {name: value for name, value in environment_report().items() if name in PROXY_VARIABLES and value}
    listed = ", ".join(f"{name}={value}" for name, value in shell.items()) or "none"
    used = describe(config.proxy.to_status())
    details = {"variables": shell, "daemon_proxy": config.proxy.to_status()}
    https = [name for name in HTTPS_PROXY_VARIABLES if name in shell]
    if config.proxy.url is None and config.proxy.source != "environment" and https:
        return [Finding("proxy", "warn", f"this shell has {listed}, but the daemon connects to the authority "
                                         "directly: it takes a proxy only from its configuration",
                        f"if the authority is reachable only through that proxy, set `[daemon] proxy = \"URL\"` or "
                        f"`proxy_from_environment = true` in {config.path}", details=details)]
    return [Finding("proxy", "ok", f"the daemon's fetches: {'direct' if used == 'none' else used}; this shell's "
                                   f"proxy variables: {listed}", details=details)]
