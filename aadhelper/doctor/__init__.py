"""``aadhelper doctor``'s checks: why does it not work? Each check looks at one thing a token depends on and reports
:class:`Finding` records (``ok`` / ``warn`` / ``fail``, with the fix); :mod:`aadhelper.cli.doctor` prints them.

The checks, in the order they are reported:

========== ===================================================================================================
config     the config file is found and valid (its path; the ConfigError line when not); the profile asked for
daemon     which socket, whether a daemon answers (pid, version, its config path, its configuration error)
daemon-env the variables that matter (:data:`~aadhelper.process_setup.REPORTED_VARIABLES`, the proxy variables)
           where they differ between the daemon and this shell
tokens     what a running daemon last failed at, per profile (its ``status``)
keyring    the secret store and keyring backend, reachable and unlocked
credential per profile, whether its credential is there (never its value): by kind, in :mod:`.secrets`
authority  per authority, tenant, CA and proxy: the OpenID discovery document over TLS, with no credentials
clock      this machine's clock against the authority's ``Date`` header (limits in :mod:`.network`)
proxy      the proxy variables of this shell (redacted) and the proxy the daemon's fetches use
git        per git URL mapping, git's helper list for it (reset, then aadhelper) and ``useHttpPath``
systemd    the user units' state, when systemd's tools are there
========== ===================================================================================================

Every check but ``config`` runs in a thread of its own, all at once, each with its own deadline: a keyring waiting
for an unlock prompt, an authority that never answers or a hung ``systemctl`` becomes one line saying so, and
``doctor`` never hangs. A check that raises becomes a ``fail`` line naming the error, never a traceback. Nothing
secret is put in a finding: credentials are checked for presence only, proxy URLs are redacted.

Modules: :mod:`.findings` (the records, the runner and the deadlines), :mod:`.local` (config, daemon), :mod:`.secrets`
(keyring, credentials), :mod:`.network` (authority, clock, proxy), :mod:`.git`, :mod:`.units` (systemd).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .findings import (
    AUTHORITY_TIMEOUT,
    COMMAND_TIMEOUT,
    GRACE,
    KEYRING_DEADLINE,
    SOCKET_TIMEOUT,
    Check,
    Finding,
    run_checks,
    worst,
)
from .git import check_git
from .local import check_config, check_daemon
from .network import authority_groups, check_authority, check_proxy
from .secrets import check_credential, check_keyring, open_store
from .units import check_systemd


def diagnose(profile: str | None = None) -> list[Finding]:
    """Every check, for all profiles or the one named."""
    config_findings, config, profiles = check_config(profile)
    store = open_store()
    checks = [
        Check("daemon", lambda: check_daemon(config, profiles), SOCKET_TIMEOUT + GRACE, "the daemon's socket"),
        Check("keyring", lambda: check_keyring(store), KEYRING_DEADLINE, "the OS keyring",
              fix="unlock your keyring, or look for a prompt waiting for you"),
    ]
    checks += [Check("credential", _bind(check_credential, p, store), KEYRING_DEADLINE, "the OS keyring",
                     on_timeout="warn", profile=p.name) for p in profiles]
    for group in authority_groups(profiles):
        checks.append(Check("authority", _bind(check_authority, group), AUTHORITY_TIMEOUT + GRACE,
                            f"the authority at {group[0].authority}", profile=group[0].name,
                            fix="check the network, the proxy and the profile's authority"))
    if config is not None:
        checks.append(Check("proxy", _bind(check_proxy, config), 1.0, "the proxy check"))
    if any(p.git_urls for p in profiles):
        checks.append(Check("git", _bind(check_git, profiles), COMMAND_TIMEOUT + GRACE, "git", on_timeout="warn"))
    checks.append(Check("systemd", check_systemd, COMMAND_TIMEOUT + GRACE, "systemctl", on_timeout="warn"))
    return config_findings + _one_clock_per_host(run_checks(checks))


def _one_clock_per_host(findings: list[Finding]) -> list[Finding]:
    """Profiles of several tenants on one authority compare the clock with the same host: say it once."""
    seen: set[object] = set()
    kept = []
    for finding in findings:
        host = finding.details.get("authority") if finding.check == "clock" else None
        if host is not None and host in seen:
            continue
        seen.add(host)
        kept.append(finding)
    return kept


def _bind(function: Callable[..., list[Finding]], *args: Any) -> Callable[[], list[Finding]]:
    return lambda: function(*args)


__all__ = ["Check", "Finding", "diagnose", "run_checks", "worst"]
