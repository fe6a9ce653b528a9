"""The fault-injection suite of issue 9 §3 as assertions: every case of ``scripts/faults`` (the table in
:mod:`aadhelper.testing.fault_suite`), with the tests' shorter windows.

All cases run once, side by side (a module fixture, ~85 s on 2 cores): real daemon processes, a simulated HTTPS
authority per case on loopback, secrets in the real gnome-keyring of ``scripts/with-secret-service``. Each test
then asserts one case's outcome: the daemon alive, other clients served, the cached token served while valid, at
most one authority request per backoff step, nothing lost, and one line (no traceback) with the expected exit
code for a client without a token. A case that shows a known defect of main (``KnownDefect``: the table names
it) may show that symptom and nothing else; the rest of its expectations are asserted.
"""

from __future__ import annotations

import pytest

from aadhelper.testing import fault_suite
from aadhelper.testing.fault_suite import Result

pytestmark = [
    pytest.mark.requires("secret-service", "dbus-daemon", "gnome-keyring-daemon"),
    pytest.mark.slow,
    pytest.mark.serial,
]

CASES = fault_suite.all_cases()


@pytest.fixture(scope="module")
def results() -> dict[str, Result]:
    return {result.case: result for result in fault_suite.run_cases(fault_suite.all_cases(),
                                                                     fault_suite.Timing.brief())}


@pytest.mark.parametrize("name", [case.name for case in CASES])
def test_fault_case_keeps_the_daemon_serving_within_bounds(results: dict[str, Result], name: str) -> None:
    """If this case's fault hits a running daemon, then the daemon stays alive, other clients are served, the
    cached token is served while it is valid, the authority gets at most one request per backoff step, nothing is
    lost, and a client without a token gets one line (no traceback) with the expected exit code; a case with a
    known defect of main (named in the table) may show that defect's symptom, and nothing else."""
    result = results[name]
    assert not result.note.startswith("case failed"), result.note
    assert result.unexplained_problems() == [], " | ".join(fault_suite.row(result))


def test_the_table_has_one_row_per_case_with_every_column(results: dict[str, Result]) -> None:
    """If the suite ran, then its table has the header, a separator and one row per case, each with every
    column (what scripts/faults prints and the README keeps)."""
    lines = fault_suite.table([results[case.name] for case in CASES]).splitlines()
    assert len(lines) == 2 + len(CASES)
    assert lines[1] == "|" + "|".join("---" for _ in fault_suite.COLUMNS) + "|"
    assert all(line.count(" | ") >= len(fault_suite.COLUMNS) - 1 for line in lines[:1] + lines[2:])


def test_backoff_bound_allows_one_request_per_step() -> None:
    """If a window spans the backoff steps (each at least half of 1 s doubling to 5 min), then the bound is one
    request at the start plus one per step that fits."""
    assert fault_suite.backoff_bound(0.4) == 1
    assert fault_suite.backoff_bound(0.5) == 2
    assert fault_suite.backoff_bound(12.0) == 5  # 0.5, 1.5, 3.5, 7.5
    # Capped at 5 min: steps of at least 150 s once the doubling reaches it.
    assert fault_suite.backoff_bound(3600.0) - fault_suite.backoff_bound(3600.0 - 150.0) == 1
