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
credential per profile, whether its credential is there (never its value): :data:`CREDENTIAL_CHECKS`, by kind
authority  per authority, tenant, CA and proxy: the OpenID discovery document over TLS, with no credentials
clock      this machine's clock against the authority's ``Date`` header (:data:`CLOCK_WARN`, :data:`CLOCK_FAIL`)
proxy      the proxy variables of this shell (redacted) and the proxy the daemon's fetches use
git        per git URL mapping, git's helper list for it (reset, then aadhelper) and ``useHttpPath``
systemd    the user units' state, when systemd's tools are there
========== ===================================================================================================

Every check but ``config`` runs in a thread of its own, all at once, each with its own deadline: a keyring waiting
for an unlock prompt, an authority that never answers or a hung ``systemctl`` becomes one line saying so, and
``doctor`` never hangs. A check that raises becomes a ``fail`` line naming the error, never a traceback. Nothing
secret is put in a finding: credentials are checked for presence only, proxy URLs are redacted.
"""

from __future__ import annotations

import email.utils
import fnmatch
import os
import shutil
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from . import __version__, client, git_helper, paths, protocol
from .cli.service import SERVICE_UNIT, SOCKET_UNIT, default_unit_dir, render_units, unit_state
from .config import Config, Profile, load_config_file, parse_config, unknown_profile
from .errors import AadhelperError, ConfigError, DaemonNotRunning, SecretStoreError, error_from_wire
from .process_setup import REPORTED_VARIABLES, environment_report
from .proxy import HTTPS_PROXY_VARIABLES, PROXY_VARIABLES, describe
from .secret_chunks import CLIENT_SECRET, REFRESH_TOKEN
from .secret_store import KeyringSecretStore, SecretStore, store_kind

Status = Literal["ok", "warn", "fail"]
#: Worst last: a finding list's overall status is the highest of these.
STATUSES: tuple[Status, ...] = ("ok", "warn", "fail")

#: Seconds each check may take. The socket: a daemon answers status in milliseconds. The keyring: a D-Bus round trip
#: plus, at worst, an unlock prompt nobody will answer. The authority: one HTTPS GET (Entra answers in well under a
#: second). git and systemctl: a local command.
SOCKET_TIMEOUT = 3.0
KEYRING_DEADLINE = 10.0
AUTHORITY_TIMEOUT = 8.0
COMMAND_TIMEOUT = 5.0
#: What a thread may take beyond the timeout its own work is bounded by, before the check is reported as hung.
_GRACE = 2.0

#: Clock skew against the authority (seconds) above which doctor warns, and fails. Entra accepts client assertions
#: (certificate and federated credentials) and validates token times with a tolerance of 5 minutes; past that,
#: assertions are refused and other software on this machine takes fresh tokens for expired or not yet valid. A
#: minute is far more than an NTP-synchronised clock ever drifts: worth fixing before it grows.
CLOCK_WARN = 60.0
CLOCK_FAIL = 300.0

_ADD_PROFILE = "add one with `aadhelper profile add NAME --tenant T --client-id C --scope S`"


@dataclass(frozen=True)
class Finding:
    """One line of the report: which check, its verdict, what was found, and the fix (None when nothing to do)."""

    check: str
    status: Status
    message: str
    fix: str | None = None
    profile: str | None = None
    #: Further JSON-ready facts for ``--json`` (never a secret).
    details: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {"check": self.check, "status": self.status, "message": self.message,
                                  "fix": self.fix, "profile": self.profile}
        record.update(self.details)
        return record


def worst(findings: Iterable[Finding]) -> Status:
    return max((f.status for f in findings), key=STATUSES.index, default="ok")


def _from_error(check: str, exc: AadhelperError, status: Status = "fail", *,
                profile: str | None = None) -> Finding:
    """An expected failure as a finding: its message, and its hint as the fix."""
    return Finding(check, status, exc.one_line() if exc.hint is None else exc.one_line().removesuffix(
        f"; {exc.hint}"), exc.hint, profile or exc.profile)


# -- running checks, each within its deadline ---------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    """A check to run: ``run`` returns its findings within ``deadline`` seconds, else one ``on_timeout`` finding
    saying ``waiting_for`` did not answer."""

    name: str
    run: Callable[[], list[Finding]]
    deadline: float
    waiting_for: str
    on_timeout: Status = "fail"
    fix: str | None = None
    profile: str | None = None


def run_checks(checks: Sequence[Check]) -> list[Finding]:
    """Run every check at once, each in a daemon thread (one that hangs is left behind, and cannot keep the process
    from exiting); the findings in the checks' order."""
    results: list[list[Finding] | None] = [None] * len(checks)

    def work(index: int, check: Check) -> None:
        try:
            results[index] = check.run()
        except AadhelperError as exc:
            results[index] = [_from_error(check.name, exc, profile=check.profile)]
        except Exception as exc:  # a check must never end the report with a traceback
            results[index] = [Finding(check.name, "fail", f"the check itself failed: {_describe(exc)}",
                                      "please report this as a bug in aadhelper doctor", check.profile)]

    threads = [threading.Thread(target=work, args=(index, check), name=f"doctor-{check.name}", daemon=True)
               for index, check in enumerate(checks)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    findings: list[Finding] = []
    for index, (check, thread) in enumerate(zip(checks, threads, strict=True)):
        thread.join(max(0.0, started + check.deadline - time.monotonic()))
        result = results[index]
        if result is None:
            result = [Finding(check.name, check.on_timeout,
                              f"{check.waiting_for} did not answer within {check.deadline:g} s", check.fix,
                              check.profile)]
        findings.extend(result)
    return findings


def _describe(exc: BaseException) -> str:
    line = str(exc).strip().partition("\n")[0][:200]
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


# -- the whole diagnosis ------------------------------------------------------------------------------------------

def diagnose(profile: str | None = None) -> list[Finding]:
    """Every check, for all profiles or the one named."""
    config_findings, config, profiles = check_config(profile)
    store = _open_store()
    checks = [
        Check("daemon", lambda: check_daemon(config, profiles), SOCKET_TIMEOUT + _GRACE, "the daemon's socket"),
        Check("keyring", lambda: check_keyring(store), KEYRING_DEADLINE, "the OS keyring",
              fix="unlock your keyring, or look for a prompt waiting for you"),
    ]
    checks += [Check("credential", _bind(check_credential, p, store), KEYRING_DEADLINE, "the OS keyring",
                     on_timeout="warn", profile=p.name) for p in profiles]
    for group in _authority_groups(profiles):
        checks.append(Check("authority", _bind(check_authority, group), AUTHORITY_TIMEOUT + _GRACE,
                            f"the authority at {group[0].authority}", profile=group[0].name,
                            fix="check the network, the proxy and the profile's authority"))
    if config is not None:
        checks.append(Check("proxy", _bind(check_proxy, config), 1.0, "the proxy check"))
    if any(p.git_urls for p in profiles):
        checks.append(Check("git", _bind(check_git, profiles), COMMAND_TIMEOUT + _GRACE, "git", on_timeout="warn"))
    checks.append(Check("systemd", check_systemd, COMMAND_TIMEOUT + _GRACE, "systemctl", on_timeout="warn"))
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


def _open_store() -> SecretStore | None:
    """The store the daemon would use (None: the in-memory one, which no other process can see)."""
    try:
        return KeyringSecretStore() if store_kind() == "keyring" else None
    except ConfigError:
        return None  # the keyring check reports the bad AADHELPER_SECRET_STORE


# -- config ---------------------------------------------------------------------------------------------------------

def check_config(name: str | None) -> tuple[list[Finding], Config | None, list[Profile]]:
    """The config file (found? valid? any profiles?), and the profiles the other checks look at."""
    path = paths.config_file()
    try:
        config = load_config_file(path)
    except ConfigError as exc:
        return [_from_error("config", exc)], None, []
    if config is None:
        empty = parse_config("", path)  # the environment's settings (autostart) still count for the daemon check
        return [Finding("config", "fail", f"no config file at {path}, so no profiles", _ADD_PROFILE,
                        details={"path": path})], empty, []
    if not config.profiles:
        return [Finding("config", "fail", f"{path} has no profiles", _ADD_PROFILE, details={"path": path})], config, []
    default = f" (default {config.default_profile!r})" if config.default_profile else ""
    found = [Finding("config", "ok", f"{path}: {len(config.profiles)} profile(s){default}",
                     details={"path": path, "profiles": sorted(config.profiles)})]
    if name is None:
        return found, config, list(config.profiles.values())
    if name not in config.profiles:
        return [*found, _from_error("config", unknown_profile(path, name, config.profiles))], config, []
    return found, config, [config.profiles[name]]


# -- daemon ---------------------------------------------------------------------------------------------------------

def check_daemon(config: Config | None, profiles: Sequence[Profile] = ()) -> list[Finding]:
    """Which socket, whether a daemon answers on it, and how its configuration and environment differ from ours."""
    path = paths.socket_path()
    try:
        reply = client.call(protocol.request("status"), socket_path=path, timeout=SOCKET_TIMEOUT)
    except DaemonNotRunning:
        from . import autostart

        if autostart.enabled():
            return [Finding("daemon", "ok", f"no daemon runs on {path}; a client starts one when it needs a token",
                            details={"socket": path, "pid": None})]
        return [Finding("daemon", "warn", f"no daemon answers on {path}, and clients do not start one (autostart is "
                                          "off, or the systemd socket unit owns the socket)", client.START_HINT,
                        details={"socket": path, "pid": None})]
    daemon = reply.get("daemon")
    if not isinstance(daemon, dict):
        return [Finding("daemon", "fail", f"the daemon on {path} sent a status without its own details",
                        "restart the daemon")]
    ours = paths.config_file()
    theirs = daemon.get("config")
    activated = ", socket-activated" if daemon.get("socket_activated") else ""
    findings = [Finding("daemon", "ok", f"daemon pid {daemon.get('pid')} answers on {path} (aadhelper "
                                        f"{daemon.get('version')}{activated}; config {theirs})",
                        details={"socket": path, "pid": daemon.get("pid"), "version": daemon.get("version"),
                                 "config": theirs})]
    restart = "restart the daemon from this environment (`systemctl --user restart aadhelper.service` when systemd " \
              "runs it)"
    if daemon.get("version") != __version__:
        findings.append(Finding("daemon", "warn", f"the daemon runs aadhelper {daemon.get('version')}, this command "
                                                  f"is {__version__}", restart))
    if isinstance(theirs, str) and os.path.abspath(theirs) != os.path.abspath(ours):
        findings.append(Finding("daemon", "warn", f"the daemon reads {theirs}, this shell {ours}",
                                f"{restart}, or point AADHELPER_CONFIG at the same file"))
    error = daemon.get("config_error")
    if isinstance(error, dict):
        findings.append(_from_error("daemon", error_from_wire(error)))
    findings.append(_environment_differences(daemon.get("environment"), config, restart))
    return findings + _token_errors(reply.get("profiles"), {profile.name for profile in profiles})


#: Token states (``status``) in which the daemon has no token to serve.
_NOTHING_TO_SERVE = frozenset({"error", "login_required", "none", "expired"})


def _token_errors(records: object, names: set[str]) -> list[Finding]:
    """What the running daemon last failed at, per profile checked: a fail when it has no token to serve, a warning
    while it still serves one (a refresh failing)."""
    findings = []
    for record in records if isinstance(records, list) else []:
        if not isinstance(record, dict) or record.get("name") not in names:
            continue
        for token in record.get("tokens") or []:
            error = token.get("last_error") if isinstance(token, dict) else None
            if not isinstance(error, dict):
                continue
            status: Status = "fail" if token.get("state") in _NOTHING_TO_SERVE else "warn"
            scopes = " ".join(token.get("scopes") or [])
            found = _from_error("tokens", error_from_wire(error), status, profile=record["name"])
            findings.append(Finding("tokens", status, f"the daemon's last attempt for {scopes} failed: "
                                                      f"{found.message}", found.fix, record["name"],
                                    {"state": token.get("state")}))
    return findings


def _environment_differences(reported: object, config: Config | None, restart: str) -> Finding:
    if not isinstance(reported, dict):
        return Finding("daemon-env", "warn", "the daemon does not report its environment (an older aadhelper)",
                       restart)
    mine = environment_report()
    used_proxies = config is not None and config.proxy.source == "environment"
    differ: dict[str, dict[str, str | None]] = {}
    for name in (*REPORTED_VARIABLES, *PROXY_VARIABLES):
        here, there = mine.get(name), reported.get(name)
        if name in ("AADHELPER_CONFIG", "SSL_CERT_FILE", "SSL_CERT_DIR") and here:
            here = os.path.abspath(here)  # the daemon makes these absolute when it starts
        if here != there:
            differ[name] = {"daemon": there if isinstance(there, str) else None, "here": here}
    if not differ:
        return Finding("daemon-env", "ok", "the daemon's environment matches this shell's where it matters "
                                           f"({', '.join(REPORTED_VARIABLES)} and the proxy variables)")
    shown = "; ".join(f"{name} (daemon: {_quoted(values['daemon'])}, here: {_quoted(values['here'])})"
                      for name, values in differ.items())
    matters = [name for name in differ if name not in PROXY_VARIABLES or used_proxies]
    if not matters:
        return Finding("daemon-env", "ok", f"only proxy variables differ, which the daemon does not use (its proxy "
                                           f"comes from the config): {shown}", details={"differences": differ})
    return Finding("daemon-env", "warn", f"the daemon's environment differs from this shell's: {shown}",
                   f"the daemon keeps the environment it started with: {restart} (for the systemd unit: "
                   "`systemctl --user set-environment NAME=VALUE` or a drop-in)", details={"differences": differ})


def _quoted(value: str | None) -> str:
    return "unset" if value is None else repr(value)


# -- keyring and credentials ------------------------------------------------------------------------------------------

def check_keyring(store: SecretStore | None) -> list[Finding]:
    """The secret store in use and, for the OS keyring, whether its backend answers and is unlocked."""
    try:
        kind = store_kind()
    except ConfigError as exc:
        return [_from_error("keyring", exc)]
    if kind == "memory" or store is None:
        return [Finding("keyring", "warn", "AADHELPER_SECRET_STORE=memory: secrets live in one process's memory "
                                           "only and are lost when it ends", "unset AADHELPER_SECRET_STORE to use "
                                                                             "the OS keyring")]
    assert isinstance(store, KeyringSecretStore)
    try:
        backend = store.check()
    except SecretStoreError as exc:
        return [_from_error("keyring", exc)]
    return [Finding("keyring", "ok", f"the OS keyring ({backend}) answers and is unlocked",
                    details={"backend": backend})]


@dataclass(frozen=True)
class StoredCredential:
    """A credential kept in the keyring as one secret: present or not (its value is read and dropped, never shown)."""

    secret_kind: str
    what: str
    fix: str

    def __call__(self, profile: Profile, store: SecretStore | None) -> Finding:
        if store is None:
            return Finding("credential", "warn", f"cannot tell whether its {self.what} is stored: secrets live in "
                                                 "memory only (AADHELPER_SECRET_STORE=memory)", profile=profile.name)
        try:
            present = store.get(profile.name, self.secret_kind) is not None
        except SecretStoreError as exc:
            return Finding("credential", "warn", f"cannot tell whether its {self.what} is stored: {exc.message}",
                           exc.hint, profile.name)
        if present:
            return Finding("credential", "ok", f"its {self.what} is stored in the keyring", profile=profile.name)
        return Finding("credential", "fail", f"no {self.what} is stored for profile {profile.name!r}",
                       self.fix.format(name=profile.name), profile.name)


#: How each credential kind (a profile's ``credential``) is checked: add a kind's entry with the kind. A kind not
#: listed is reported as a warning, never an error.
CREDENTIAL_CHECKS: dict[str, Callable[[Profile, SecretStore | None], Finding]] = {
    "client_secret": StoredCredential(CLIENT_SECRET, "client secret",
                                      "store it with `aadhelper secret set {name}`"),
    "user": StoredCredential(REFRESH_TOKEN, "sign-in (refresh token)", "sign in with `aadhelper login {name}`"),
}


def check_credential(profile: Profile, store: SecretStore | None) -> list[Finding]:
    check = CREDENTIAL_CHECKS.get(profile.credential)
    if check is None:
        return [Finding("credential", "warn", f"credential kind {profile.credential!r} is not one this doctor "
                                              "knows how to check", profile=profile.name)]
    return [check(profile, store)]


# -- the authority and the clock ---------------------------------------------------------------------------------------

def _authority_groups(profiles: Iterable[Profile]) -> list[list[Profile]]:
    """Profiles that reach the same discovery document the same way (CA, proxy): one request for each group."""
    groups: dict[tuple[Any, ...], list[Profile]] = {}
    for profile in profiles:
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

    from .grants.http import HttpClients, get_json, raise_for_error

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
        finding = _from_error("authority", exc, profile=profile.name)
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
            finding = _from_error("authority", exc, profile=profile.name)
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


# -- git ------------------------------------------------------------------------------------------------------------

#: What ``git config --get-regexp`` is asked for: every helper and useHttpPath setting, for any URL or none.
_GIT_KEYS = r"^credential\..*(helper|usehttppath)$"
_TRUE = frozenset({"true", "yes", "on", "1"})


def check_git(profiles: Sequence[Profile]) -> list[Finding]:
    """For each git URL mapping: the helper list git builds for it (as git does: every matching entry, in order, an
    empty value resetting it) must hold aadhelper alone after a reset, and useHttpPath must be on for a prefix with
    a path."""
    git = shutil.which("git")
    if git is None:
        return [Finding("git", "warn", "git is not on PATH: cannot check its configuration")]
    try:
        result = subprocess.run([git, "config", "--null", "--get-regexp", _GIT_KEYS], capture_output=True,
                                timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return [Finding("git", "warn", f"`git config` did not answer within {COMMAND_TIMEOUT:g} s")]
    if result.returncode not in (0, 1):  # 1: no such keys
        reason = result.stderr.decode(errors="replace").strip().partition("\n")[0]
        return [Finding("git", "fail", f"git cannot read its configuration: {reason}", "fix the file git names")]
    entries = _parse_git_entries(result.stdout)
    return [_check_mapping(profile, url.url, entries) for profile in profiles for url in profile.git_urls]


def _parse_git_entries(output: bytes) -> list[tuple[str, str, str | None]]:
    """(URL pattern or "", "helper" or "usehttppath", value or None) for each entry, in git's order."""
    entries = []
    for item in output.decode(errors="replace").split("\0"):
        if not item:
            continue
        key, newline, value = item.partition("\n")
        middle, _, name = key.removeprefix("credential.").rpartition(".")
        entries.append((middle, name.lower(), value if newline else None))
    return entries


def _check_mapping(profile: Profile, prefix: str, entries: list[tuple[str, str, str | None]]) -> Finding:
    origin, needs_path = git_helper.helper_config(prefix)
    helpers: list[str] = []
    reset = use_path = False
    for pattern, name, value in entries:
        if pattern and not _git_url_matches(pattern, prefix):
            continue
        if name == "usehttppath":
            use_path = value is None or value.strip().lower() in _TRUE
        elif value:
            helpers.append(value)
        else:  # an empty value resets the list
            helpers, reset = [], True
    reset_commands = (f"`git config --global --replace-all credential.{origin}.helper ''` then "
                      f"`git config --global --add credential.{origin}.helper {git_helper.HELPER}`")
    problems: list[tuple[Status, str, str]] = []
    ours = [index for index, helper in enumerate(helpers) if _is_aadhelper(helper)]
    others = [helper for helper in helpers if not _is_aadhelper(helper)]
    if not ours:
        problems.append(("fail", f"git asks no aadhelper helper for {prefix} (its helpers there: "
                                 f"{', '.join(helpers) or 'none'})", reset_commands))
    elif ours[0] > 0:
        problems.append(("fail", f"git asks {', '.join(helpers[:ours[0]])} before aadhelper for {prefix}: it may "
                                 "answer with a stale stored password", reset_commands))
    elif others:
        problems.append(("warn", f"{', '.join(others)} also receive(s) every token git gets for {prefix} (git hands "
                                 "a working credential to all its helpers)", reset_commands))
    elif not reset:
        problems.append(("warn", f"the helper list for {origin} is not reset: a storing helper configured later "
                                 "(credential.helper=store) would also receive the tokens", reset_commands))
    if needs_path and not use_path:
        problems.append(("fail", f"git sends helpers no path for {origin}, so the mapping {prefix} never matches",
                         f"`git config --global credential.{origin}.useHttpPath true`"))
    # A plain name makes git run `git credential-NAME`: git-credential-aadhelper must be on PATH.
    if any(helper.split()[:1] == [git_helper.HELPER] for helper in helpers) \
            and shutil.which(f"git-credential-{git_helper.HELPER}") is None:
        where = os.path.dirname(paths.console_script()[0])
        problems.append(("fail", f"git runs `git credential-{git_helper.HELPER}`, which is not on PATH",
                         f"add {where} to PATH"))
    details = {"url": prefix, "helpers": helpers, "reset": reset, "use_http_path": use_path}
    if not problems:
        path_note = ", useHttpPath on" if needs_path else ""
        return Finding("git", "ok", f"git asks aadhelper alone for {prefix} (list reset{path_note})",
                       profile=profile.name, details=details)
    status = worst(Finding("git", s, "") for s, _, _ in problems)
    return Finding("git", status, "; ".join(text for _, text, _ in problems),
                   "; ".join(dict.fromkeys(fix for _, _, fix in problems)), profile.name, details)


def _is_aadhelper(helper: str) -> bool:
    """Whether a ``credential.helper`` value runs aadhelper: ``aadhelper`` (git runs git-credential-aadhelper), a
    path to git-credential-aadhelper, or ``!aadhelper git-credential`` / ``!/path/git-credential-aadhelper``."""
    words = helper.strip().removeprefix("!").split()
    if not words:
        return False
    program = os.path.basename(words[0])
    return program == f"git-credential-{git_helper.HELPER}" or (program == git_helper.HELPER and (
        not helper.strip().startswith("!") or words[1:2] == ["git-credential"]))


def _git_url_matches(pattern: str, url: str) -> bool:
    """git's urlmatch rule for a ``credential.<url>.*`` key: same scheme, host (``*`` matches one label), port and
    user when the key names one, and a path that is a prefix of the URL's on whole segments."""
    try:
        want, have = urllib.parse.urlsplit(pattern), urllib.parse.urlsplit(url)
        ports = (want.port, have.port)
    except ValueError:
        return False
    if not want.scheme or want.scheme.lower() != have.scheme.lower():
        return False
    if want.username and want.username != have.username:
        return False
    labels, host = (want.hostname or "").split("."), (have.hostname or "").split(".")
    if len(labels) != len(host) or not all(fnmatch.fnmatchcase(h, w) for w, h in zip(labels, host, strict=True)):
        return False
    default = 443 if have.scheme.lower() == "https" else 80
    if (ports[0] or default) != (ports[1] or default):
        return False
    prefix = [s for s in want.path.split("/") if s]
    return [s for s in have.path.split("/") if s][:len(prefix)] == prefix


# -- systemd --------------------------------------------------------------------------------------------------------

def check_systemd() -> list[Finding]:
    """The user units: installed (and for this installation?), enabled, running; only where systemd's tools are."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return [Finding("systemd", "ok", "systemd is not installed here: clients start the daemon themselves")]
    unit_dir = default_unit_dir()
    wanted = render_units(paths.console_script())
    states = {name: unit_state(os.path.join(unit_dir, name), text) for name, text in wanted.items()}
    installed = any(state != "absent" for state in states.values())
    details: dict[str, Any] = {"unit_dir": unit_dir, "units": states}
    try:
        result = subprocess.run([systemctl, "--user", "show", "--property=UnitFileState,ActiveState",
                                 SOCKET_UNIT, SERVICE_UNIT], capture_output=True, text=True,
                                timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return [Finding("systemd", "warn", f"`systemctl --user` did not answer within {COMMAND_TIMEOUT:g} s",
                        details=details)]
    if result.returncode != 0:
        reason = result.stderr.strip().partition("\n")[0] or f"exit {result.returncode}"
        if not installed:
            return [Finding("systemd", "ok", f"no systemd user manager answers ({reason}) and the units are not "
                                             "installed: clients start the daemon themselves", details=details)]
        return [Finding("systemd", "warn", f"the units are installed in {unit_dir}, but no systemd user manager "
                                           f"answers ({reason})",
                        "log in through a session that runs `systemd --user` (or `loginctl enable-linger`), then "
                        f"`systemctl --user enable --now {SOCKET_UNIT}`", details=details)]
    socket_state, service_state = _unit_properties(result.stdout)
    details.update(socket=socket_state, service=service_state)
    if not installed:
        return [Finding("systemd", "ok", "the user units are not installed (optional: `aadhelper service install`); "
                                         "clients start the daemon themselves", details=details)]
    if service_state.get("ActiveState") == "failed":
        return [Finding("systemd", "fail", f"{SERVICE_UNIT} failed",
                        f"see `journalctl --user -u {SERVICE_UNIT}`, then "
                        f"`systemctl --user restart {SERVICE_UNIT}`", details=details)]
    if socket_state.get("UnitFileState") != "enabled":
        return [Finding("systemd", "warn", f"{SOCKET_UNIT} is installed but not enabled "
                                           f"({socket_state.get('UnitFileState') or 'unknown'})",
                        f"`systemctl --user daemon-reload` then `systemctl --user enable --now {SOCKET_UNIT}`",
                        details=details)]
    if any(state == "ours" for state in states.values()):
        return [Finding("systemd", "warn", f"the units in {unit_dir} run another aadhelper installation than this "
                                           "one", "`aadhelper service install`, then `systemctl --user daemon-reload`",
                        details=details)]
    return [Finding("systemd", "ok", f"{SOCKET_UNIT} enabled ({socket_state.get('ActiveState')}), "
                                     f"{SERVICE_UNIT} {service_state.get('ActiveState')}", details=details)]


def _unit_properties(output: str) -> tuple[dict[str, str], dict[str, str]]:
    """``systemctl show`` prints one block of KEY=value lines per unit, blocks separated by a blank line."""
    blocks = [dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
              for block in output.strip().split("\n\n")]
    blocks += [{}] * (2 - len(blocks))
    return blocks[0], blocks[1]


__all__ = ["CREDENTIAL_CHECKS", "Check", "Finding", "diagnose", "run_checks", "worst"]
