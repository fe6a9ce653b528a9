"""doctor's checks of this machine's aadhelper set-up: the config file, the daemon on the socket (its config, its
environment against this shell's, what it last failed at)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from .. import __version__, client, paths, protocol
from ..config import Config, Profile, load_config_file, parse_config, unknown_profile
from ..errors import ConfigError, DaemonNotRunning, error_from_wire
from ..process_setup import REPORTED_VARIABLES, environment_report
from ..proxy import PROXY_VARIABLES
from .findings import SOCKET_TIMEOUT, Finding, Status, from_error

_ADD_PROFILE = "add one with `aadhelper profile add NAME --tenant T --client-id C --scope S`"


def check_config(name: str | None) -> tuple[list[Finding], Config | None, list[Profile]]:
    """The config file (found? valid? any profiles?), and the profiles the other checks look at."""
    path = paths.config_file()
    try:
        config = load_config_file(path)
    except ConfigError as exc:
        return [from_error("config", exc)], None, []
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
        return [*found, from_error("config", unknown_profile(path, name, config.profiles))], config, []
    return found, config, [config.profiles[name]]


# -- daemon ---------------------------------------------------------------------------------------------------------

def check_daemon(config: Config | None, profiles: Sequence[Profile] = ()) -> list[Finding]:
    """Which socket, whether a daemon answers on it, and how its configuration and environment differ from ours."""
    path = paths.socket_path()
    try:
        reply = client.call(protocol.request("status"), socket_path=path, timeout=SOCKET_TIMEOUT)
    except DaemonNotRunning:
        from .. import autostart

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
        findings.append(from_error("daemon", error_from_wire(error)))
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
            found = from_error("tokens", error_from_wire(error), status, profile=record["name"])
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
