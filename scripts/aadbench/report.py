"""The results: a plain-text table for the terminal and the JSON document written to ``bench-results.json``.

JSON shape (``version`` 1)::

    {"version": 1, "quick": false, "started": "2026-...Z", "seconds": 131.2,
     "machine": {"cpus": 2, "python": "3.11.7", "load_generator": "c", ...},
     "rows": [{"id": 1, "key": "header", "what": "...", "target": "ratio <= 2.0",
               "status": "met" | "missed" | "incorrect" | "not yet" | "failed" | "skipped",
               "value": 12.1, "baseline": 9.6, "ratio": 1.26, "unit": "ms",
               "result": "12.1 ms", "baseline_text": "9.6 ms (python -c pass)", "note": "",
               "details": {...}, "cases": [...]}, ... rows 2 to 7 ...]}

Every row 1 to 7 is always present; a row that could not be measured has status "failed" and says why in
``note`` ("not yet": the feature it measures is missing; "skipped": left out with ``--rows``). "incorrect":
a correctness property of row 4 or 5 failed; the bench then exits 1 (:func:`exit_status`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .timing import Row

VERSION = 1
STATUS_VALUES = ("met", "missed", "incorrect", "not yet", "failed", "skipped")


def document(rows: Sequence[Row], *, quick: bool, started: str, seconds: float,
             machine: dict[str, Any]) -> dict[str, Any]:
    return {"version": VERSION, "quick": quick, "started": started, "seconds": round(seconds, 1),
            "machine": machine, "rows": [row.as_dict() for row in rows]}


def write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def table(rows: Sequence[Row]) -> str:
    """The table as Markdown (readable in a terminal, pastes into docs/performance.md)."""
    lines = ["| # | what | result | baseline (same run) | ratio | target | status |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        ratio = f"{row.ratio:.2f}" if row.ratio is not None else "—"
        result = row.result or row.note or "—"
        lines.append(f"| {row.id} | {row.what} | {result} | {row.baseline_text or '—'} | {ratio} | {row.target} "
                     f"| {row.status} |")
        for case in row.cases:
            lines.append(
                f"| {row.id} | {case['concurrency']} client(s) | {case['daemon_rps']:.0f} req/s, p50 "
                f"{case['daemon_p50_us']:.0f} us, p99 {case['daemon_p99_us']:.0f} us | {case['baseline_rps']:.0f} "
                f"req/s, p50 {case['baseline_p50_us']:.0f} us, p99 {case['baseline_p99_us']:.0f} us | "
                f"{case['ratio']:.2f} | | |")
    notes = [f"- row {row.id}: {row.note}" for row in rows if row.note and row.result]
    return "\n".join(lines + (["", *notes] if notes else []))


def exit_status(rows: Sequence[Row]) -> int:
    """1 when any row is incorrect (each said on stderr by the caller), else 0: a missed speed target or a row
    that could not be measured is reported in the table, not in the exit status."""
    return 1 if any(row.status == "incorrect" for row in rows) else 0
