"""``aadhelper status``: what the daemon holds, per profile, and what went wrong last."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from .. import client
from ..errors import AadhelperError, error_from_wire
from ..proxy import describe as describe_proxy


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "status", help="show the daemon and each profile's token state",
        description="Show the daemon (pid, uptime, socket) and, per profile: credential kind, token state "
                    "(valid until / expired / none), next scheduled refresh and the last error. Exits non-zero "
                    "when a profile is in error (with that error's exit code) or no daemon runs (8).")
    parser.add_argument("--json", action="store_true", help="print the daemon's status reply as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    reply = client.status()
    reply.pop("v", None)
    reply.pop("ok", None)
    _add_credentials(reply)
    if args.json:
        sys.stdout.write(json.dumps(reply, indent=2) + "\n")
    else:
        sys.stdout.write(render(reply, now=time.time()))
    failing = first_failure(reply)
    return failing.exit_code if failing else 0


def _add_credentials(reply: dict[str, Any]) -> None:
    """Per profile, what this process can tell about its credential (common.credential_state: whether a secret or
    sign-in is stored, and as whom), under ``credential_state``; the daemon's reply has no such thing."""
    from ..config import load_config
    from ..errors import ConfigError
    from .common import credential_state

    try:
        config = load_config()
    except ConfigError:
        return  # the daemon's reply reports the broken file
    for record in reply.get("profiles", []):
        profile = config.profiles.get(str(record.get("name"))) if isinstance(record, dict) else None
        if profile is not None:
            record["credential_state"] = credential_state(profile)


def first_failure(reply: dict[str, Any]) -> AadhelperError | None:
    """The error of the first profile that cannot serve tokens (a broken config counts too)."""
    daemon = reply.get("daemon", {})
    if daemon.get("config_error"):
        return error_from_wire(daemon["config_error"])
    for profile in reply.get("profiles", []):
        if isinstance(profile.get("credential_error"), dict):
            return error_from_wire(profile["credential_error"])
        for token in profile.get("tokens", []):
            error = token.get("last_error")
            if error and token.get("state") in ("error", "login_required", "none", "expired"):
                return error_from_wire(error)
    return None


def render(reply: dict[str, Any], *, now: float) -> str:
    daemon = reply.get("daemon", {})
    lines = [f"daemon: pid {daemon.get('pid')}, up {_duration(daemon.get('uptime', 0))}, "
             f"socket {daemon.get('socket')}" + (" (socket-activated)" if daemon.get("socket_activated") else "")]
    if isinstance(daemon.get("proxy"), dict):
        lines.append(f"proxy: {describe_proxy(daemon['proxy'])}")
    if daemon.get("config_error"):
        lines.append(f"config: {error_from_wire(daemon['config_error']).one_line()}")
        if daemon.get("config_last_good"):
            lines.append(f"  still serving the last good configuration, read at {_clock(daemon['config_last_good'])}")
    profiles = reply.get("profiles", [])
    if not profiles and not daemon.get("config_error"):
        lines.append("no profiles configured: add one with `aadhelper profile add NAME ...`")
    for profile in profiles:
        default = " (default)" if profile.get("default") else ""
        min_valid = f"  min_valid {profile['min_valid']} s" if profile.get("min_valid") is not None else ""
        lines.append(f"{profile.get('name')}{default}  {profile.get('credential')}{min_valid}")
        if isinstance(profile.get("managed_identity"), dict):
            from ..config import describe_managed_identity

            lines.append(f"  managed identity: {describe_managed_identity(profile['managed_identity'])}")
        state = profile.get("credential_state")
        if isinstance(state, dict) and state.get("text"):
            lines.append(f"  {state['text']}")
        if profile.get("unsaved_sign_in"):
            lines.append("  a new sign-in is not yet saved to the keyring (retrying; unlock the keyring, or it is lost "
                         "when the daemon stops)")
        lines += _credential_lines(profile, now)
        tokens = profile.get("tokens", [])
        if not tokens:
            lines.append("  no token requested yet")
        for token in tokens:
            lines.append(f"  {' '.join(token.get('scopes', []))}  {_token_state(token, now)}")
    return "\n".join(lines) + "\n"


def _credential_lines(profile: dict[str, Any], now: float) -> list[str]:
    """The credential's own state: a certificate's thumbprint and expiry (a warning within 30 days), its error."""
    lines = []
    if isinstance(profile.get("certificate"), dict):
        from ..certificates import CertificateSummary

        try:
            lines.append(f"  {CertificateSummary.from_dict(profile['certificate']).describe(now)}")
        except ValueError:
            lines.append("  certificate: malformed state from the daemon")
    if isinstance(profile.get("federated"), dict):
        lines.append(f"  {_federated(profile['federated'], now)}")
    if isinstance(profile.get("credential_error"), dict):
        lines.append(f"  error: {error_from_wire(profile['credential_error']).one_line()}")
    return lines


def _federated(state: dict[str, Any], now: float) -> str:
    """A federated profile's assertion source: the command, or the file, when it was written, whose token it holds
    and until when."""
    if state.get("token_command"):
        return f"token command {state['token_command']!r} (run at every exchange)"
    if not state.get("token_file"):
        return "token file: none (AZURE_FEDERATED_TOKEN_FILE was not set for the daemon)"
    details = []
    if isinstance(state.get("written"), (int, float)):
        details.append(f"written {_duration(now - state['written'])} ago")
    if state.get("iss") or state.get("sub"):
        details.append(f"issuer {state.get('iss')}, subject {state.get('sub')}")
    if isinstance(state.get("exp"), (int, float)):
        left = state["exp"] - now
        details.append(f"valid {_duration(left)} more" if left > 0 else "EXPIRED")
    return f"token file {state['token_file']}" + (f" ({'; '.join(details)})" if details else "")


def _token_state(token: dict[str, Any], now: float) -> str:
    state = token.get("state")
    expires = token.get("expires_on")
    if state in ("valid", "expiring") and expires:
        text = f"valid until {_clock(expires)} ({_duration(expires - now)} left)"
    elif state == "expired":
        text = f"expired at {_clock(expires)}" if expires else "expired"
    elif state == "login_required":
        text = "login required"
    elif state == "error":
        text = "error"
    else:
        text = "no token"
    if token.get("short_tokens") and token.get("token_lifetime") is not None:
        text += (f" (the authority's tokens live {_duration(token['token_lifetime'])}, shorter than the profile's "
                 f"min_valid: refreshed at 75-80 % of that, served with {token.get('min_valid')} s left at least)")
    if token.get("throttled_since"):
        text += f", request budget spent since {_clock(token['throttled_since'])}"
    if token.get("refreshing"):
        text += ", refreshing now"
    elif token.get("next_refresh"):
        text += f", next refresh {_clock(token['next_refresh'])}"
    error = token.get("last_error")
    if error:
        when = f" at {_clock(token['last_error_at'])}" if token.get("last_error_at") else ""
        text += f"\n    last error{when}: {error_from_wire(error).one_line()}"
    return text


def _clock(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
