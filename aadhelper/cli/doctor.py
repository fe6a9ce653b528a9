"""``aadhelper doctor [PROFILE] [--json]``: why does it not work? Runs :mod:`aadhelper.doctor`'s checks (no daemon
needed) and prints one line per finding, ``ok`` / ``warn`` / ``fail`` with the fix under it, or (``--json``) the same
as a list of records. Exits 1 when any check fails, else 0."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..doctor import Finding

EPILOG = """\
checks: config, daemon (socket, pid, config path), daemon-env (differences that matter between the daemon and this
shell), tokens (what the running daemon last failed at), keyring, credential (per profile), authority (TLS to the
discovery document), clock (skew against the authority), proxy, git (helper list and useHttpPath per mapped URL),
systemd (user units).

examples:
  aadhelper doctor
  aadhelper doctor graph
  aadhelper doctor --json | jq '.[] | select(.status != "ok")'
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "doctor", help="check the setup and say what to fix (no daemon needed)",
        description="Check everything a token depends on: the config file, the daemon and its environment, the OS "
                    "keyring, each profile's credential, the authority over TLS and the clock, proxies, git's "
                    "helper configuration and the systemd units. Each finding is ok, warn or fail, with the fix. "
                    "Exits 1 when any check fails, else 0.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", metavar="PROFILE", nargs="?", help="check only this profile (default: all)")
    parser.add_argument("--json", action="store_true", help="print the findings as a JSON list of records")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..doctor import diagnose  # only here: every other command's start-up would pay for the checks' imports

    findings = diagnose(args.profile)
    if args.json:
        sys.stdout.write(json.dumps([finding.as_dict() for finding in findings], indent=2) + "\n")
    else:
        sys.stdout.write(render(findings))
    return 1 if any(finding.status == "fail" for finding in findings) else 0


def render(findings: Sequence[Finding]) -> str:
    """One line per finding (``STATUS  check [profile]: message``), its fix indented under it, and a count."""
    lines = []
    for finding in findings:
        where = f" [{finding.profile}]" if finding.profile else ""
        lines.append(f"{finding.status:<4}  {finding.check}{where}: {finding.message}")
        if finding.fix and finding.status != "ok":
            lines.append(f"      fix: {finding.fix}")
    counts = {status: sum(f.status == status for f in findings) for status in ("fail", "warn", "ok")}
    lines.append(f"{counts['fail']} failed, {counts['warn']} warning(s), {counts['ok']} ok")
    return "\n".join(lines) + "\n"
