"""Rows 1 and 2: what a thin client process costs against a warm daemon, next to a bare interpreter.

Row 1 runs the installed ``aadhelper`` console script (``aadhelper header PROFILE``) against
``<venv python> -c pass``. Row 2 runs ``git credential fill`` with ``credential.helper=aadhelper`` (git
starts ``git credential-aadhelper get``) against the same git command whose helper is the venv's python
printing a fixed answer.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from aadhelper.testing.isolated_home import VENV_BIN

from .plan import GIT, MAIN, Bench, Plan
from .timing import BenchError, Command, Row, median, ms, percentile, time_pair
from .world import AADHELPER

PYTHON = sys.executable
HEADER_TARGET = 2.0
GIT_TARGET = 1.5
GIT_REQUEST = b"protocol=https\nhost=dev.azure.com\npath=contoso/repo\n\n"
# The baseline helper reads git's request like a real one and answers at once.
_FIXED_HELPER = ("import sys; sys.stdin.read(); "
                 "sys.stdout.write('username=bench\\npassword=fixed-password\\n')")


def header_spec(plan: Plan) -> Row:
    return Row(1, "header", "`aadhelper header` process, warm daemon (console script)", f"ratio <= {HEADER_TARGET}",
               unit="ms")


def header_row(bench: Bench, row: Row) -> None:
    subject = Command([AADHELPER, "header", MAIN], bench.world.env, expect=b"Authorization: Bearer ")
    baseline = Command([PYTHON, "-c", "pass"], bench.world.env)
    _compare(row, subject, baseline, bench.plan.header_runs, "python -c pass", HEADER_TARGET)
    # How this venv was installed decides part of both figures (see docs/performance.md).
    row.details["console_script_imports_re"] = b"import re" in Path(AADHELPER).read_bytes()
    row.details["pip"] = subprocess.run([PYTHON, "-m", "pip", "--version"], capture_output=True, text=True,
                                        check=False).stdout.split(" from ")[0]


def git_spec(plan: Plan) -> Row:
    return Row(2, "git-credential", "`git credential fill` through git-credential-aadhelper",
               f"ratio <= {GIT_TARGET}", unit="ms")


def git_row(bench: Bench, row: Row) -> None:
    git = shutil.which("git")
    if git is None:
        raise BenchError("git is not installed")
    row.details["git_version"] = subprocess.run([git, "--version"], capture_output=True, text=True,
                                                check=False).stdout.strip()
    env = bench.world.env
    token = str(bench.daemon.token(GIT)["access_token"])
    subject = Command(_git(git, "aadhelper"), env, GIT_REQUEST, expect=f"password={token}".encode())
    baseline = Command(_git(git, f"!{PYTHON} -c \"{_FIXED_HELPER}\""), env, GIT_REQUEST,
                       expect=b"password=fixed-password")
    reason = _not_ready(subject)
    if reason:
        row.status, row.note = "not yet", reason
        return
    _compare(row, subject, baseline, bench.plan.git_runs, "git + python -c helper", GIT_TARGET)


def _git(git: str, helper: str) -> list[str]:
    # An empty credential.helper first drops any helper configured elsewhere.
    return [git, "-c", "credential.helper=", "-c", f"credential.helper={helper}",
            "-c", "credential.useHttpPath=true", "credential", "fill"]


def _not_ready(subject: Command) -> str | None:
    """Why the aadhelper git helper cannot be measured yet, or None when it answers with the token."""
    if not (VENV_BIN / "git-credential-aadhelper").exists():
        return "git-credential-aadhelper is not installed in the venv"
    result = subprocess.run(list(subject.argv), env=dict(subject.env), input=subject.stdin, capture_output=True,
                            check=False)
    if result.returncode != 0 or subject.expect not in result.stdout:
        stderr = result.stderr.decode(errors="replace").strip().splitlines()
        return f"git got no token from the helper ({stderr[-1] if stderr else f'exit {result.returncode}'})"
    return None


def _compare(row: Row, subject: Command, baseline: Command, runs: int, baseline_name: str, target: float) -> None:
    subject_times, baseline_times = time_pair(subject, baseline, runs)
    row.value, row.baseline = median(subject_times) * 1000, median(baseline_times) * 1000
    row.ratio = row.value / row.baseline
    row.result = ms(row.value / 1000)
    row.baseline_text = f"{ms(row.baseline / 1000)} ({baseline_name})"
    row.details.update(runs=runs, subject_p90_ms=percentile(subject_times, 0.9) * 1000,
                       baseline_p90_ms=percentile(baseline_times, 0.9) * 1000,
                       subject_min_ms=min(subject_times) * 1000, baseline_min_ms=min(baseline_times) * 1000)
    row.judge(row.ratio <= target)
