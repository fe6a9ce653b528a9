"""The bench's verdict, without running it: correctness rows (4 and 5) are "incorrect" whatever their speed, and an
incorrect row makes ``scripts/bench`` exit 1. The real script runs in tests/test_bench.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

from aadbench.report import exit_status  # noqa: E402
from aadbench.rows_soak import Reply, analyse  # noqa: E402
from aadbench.timing import Row  # noqa: E402


def row(met: bool, *, correct: bool = True) -> Row:
    judged = Row(4, "single-flight", "what", "exactly 1 authority request")
    judged.judge(met, correct=correct)
    return judged


def test_an_incorrect_row_fails_the_bench_whatever_its_speed() -> None:
    """If a row's correctness property failed, then it is "incorrect" even when its speed met the target, and the
    bench exits 1; missed speed targets alone exit 0."""
    assert row(True, correct=False).status == "incorrect"
    assert row(False, correct=False).status == "incorrect"
    assert [row(True).status, row(False).status] == ["met", "missed"]
    assert exit_status([row(True), row(False)]) == 0
    assert exit_status([row(True), row(True, correct=False)]) == 1


def test_soak_analysis_counts_short_and_failed_replies() -> None:
    """If a soak reply arrived with less than the minimum validity left, or failed, then the analysis counts it."""
    replies = [Reply(start=100.0, latency=0.001, expires_on=110, ok=True),   # 9.999 s left: fine
               Reply(start=106.0, latency=0.001, expires_on=110, ok=True),   # 3.999 s left: short of 5
               Reply(start=107.0, latency=0.001, expires_on=0, ok=False),
               Reply(start=108.0, latency=0.001, expires_on=130, ok=True)]
    result = analyse(replies, refreshes=[107.5], min_valid=5)
    assert (result["short"], result["failed"], result["refreshes"]) == (1, 1, 1)
