"""Measuring helpers: medians and percentiles, wall time of processes, CPU time and memory of a pid, and the
:class:`Row` every measurement reports.

Subject and baseline processes run interleaved (A B B A ...), after a few discarded warm-up runs, so a
machine that gets busier or quieter during the run shifts both alike; the ratio is what is compared.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

WARMUP_RUNS = 3


class BenchError(Exception):
    """A measurement could not be made (a command failed, a server did not start): the row reports it."""


@dataclass
class Row:
    """One row of the table; ``cases`` holds sub-measurements (row 3's concurrencies)."""

    id: int
    key: str
    what: str
    target: str
    #: "met", "missed", "incorrect" (a correctness property failed: see :meth:`judge`), "not yet" (the feature is
    #: missing), "failed" (the measurement broke) or "skipped".
    status: str = "failed"
    value: float | None = None
    baseline: float | None = None
    ratio: float | None = None
    unit: str = ""
    result: str = ""
    baseline_text: str = ""
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    cases: list[dict[str, Any]] = field(default_factory=list)

    def judge(self, met: bool, *, correct: bool = True) -> None:
        """``met`` or ``missed`` the speed target; ``incorrect`` whatever the speed when ``correct`` is false.

        Correctness (one authority request for 500 concurrent callers, no reply below the minimum validity, no
        failed reply) is not a target a slow machine may miss: an incorrect row makes the whole bench fail.
        """
        self.status = ("met" if met else "missed") if correct else "incorrect"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def median(values: Sequence[float]) -> float:
    if not values:
        raise BenchError("no samples")
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` 0.99 for p99) of unsorted ``values``."""
    if not values:
        raise BenchError("no samples")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))]


@dataclass(frozen=True)
class Command:
    """A process to time: argv, environment, stdin, and a check of its stdout."""

    argv: Sequence[str]
    env: Mapping[str, str]
    stdin: bytes = b""
    expect: bytes = b""

    def run(self) -> float:
        """Wall seconds from spawn to exit; a non-zero exit or unexpected output is a BenchError."""
        start = time.perf_counter()
        result = subprocess.run(list(self.argv), env=dict(self.env), input=self.stdin, capture_output=True,
                                check=False)
        elapsed = time.perf_counter() - start
        if result.returncode != 0 or self.expect not in result.stdout:
            stderr = result.stderr.decode(errors="replace").strip()[-500:]
            raise BenchError(f"{self.argv[0]} exited {result.returncode}"
                             f"{'' if self.expect in result.stdout else ' without the expected output'}: {stderr}")
        return elapsed


def time_pair(subject: Command, baseline: Command, runs: int) -> tuple[list[float], list[float]]:
    """Wall times (seconds) of ``runs`` runs of each, interleaved, after warm-up runs."""
    for _ in range(WARMUP_RUNS):
        subject.run()
        baseline.run()
    subject_times: list[float] = []
    baseline_times: list[float] = []
    for index in range(runs):
        # Alternate which goes first, so neither always runs right after the other.
        order = ((subject, subject_times), (baseline, baseline_times))
        for command, times in order if index % 2 == 0 else reversed(order):
            times.append(command.run())
    return subject_times, baseline_times


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (from /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rpartition(")")[2].split()
    # Fields 14 and 15 of stat(5), counted after the command name: utime and stime in clock ticks.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (VmRSS from /proc/PID/status)."""
    return _kilobytes(f"/proc/{pid}/status", "VmRSS:") * 1024


def pss_bytes(pid: int) -> int:
    """Proportional set size (Pss from /proc/PID/smaps_rollup): each page shared with other processes counts by
    its share, so the PSS of processes sharing pages (a fork) add up to the memory they use together."""
    return _kilobytes(f"/proc/{pid}/smaps_rollup", "Pss:") * 1024


def _kilobytes(path: str, field: str) -> int:
    with open(path) as file:
        for line in file:
            if line.startswith(field):
                return int(line.split()[1])
    raise BenchError(f"no {field} in {path}")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"
