"""The verdicts of :mod:`aadhelper.doctor`: :class:`Finding` records, and running :class:`Check` functions at
once, each within its own deadline."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import AadhelperError

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
GRACE = 2.0


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


def from_error(check: str, exc: AadhelperError, status: Status = "fail", *,
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
            results[index] = [from_error(check.name, exc, profile=check.profile)]
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
