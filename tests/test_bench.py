"""``scripts/bench --quick``: it runs every row and writes well-formed JSON. Its timings are not checked here, but
the two rows that are correctness are: row 4 (500 concurrent requests for a cold profile make exactly one
authority request and all 500 get a token) and row 5 (no reply below the minimum validity, no failed reply).

The bench starts its own simulated authority and daemons; inside ``scripts/with-secret-service`` it uses that
private keyring, elsewhere it starts one of its own. This test runs the real script once (~25 s).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import SECRET_SERVICE, missing

pytestmark = [
    pytest.mark.requires("dbus-daemon", "gnome-keyring-daemon", "git"),
    pytest.mark.slow,
    pytest.mark.serial,
]

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "scripts" / "bench"
ROW_KEYS = {"id", "key", "what", "target", "status", "value", "baseline", "ratio", "unit", "result",
            "baseline_text", "note", "details", "cases"}
#: Rows whose figure is a ratio to a baseline process measured in the same run.
RATIO_ROWS = {1, 2, 7}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    tmp = tmp_path_factory.mktemp("bench")
    workdir = tmp / "work"
    workdir.mkdir()
    output = tmp / "out" / "x.json"
    result = subprocess.run([str(BENCH), "--quick", "--output", str(output)], cwd=workdir, text=True,
                            capture_output=True, timeout=240, env={**os.environ, "TMPDIR": str(workdir)},
                            check=False)
    return result, output, workdir


def rows_of(output: Path) -> dict[int, dict[str, Any]]:
    doc = json.loads(output.read_text())
    return {row["id"]: row for row in doc["rows"]}


def test_quick_run_writes_every_row(quick_run: tuple[subprocess.CompletedProcess[str], Path, Path]) -> None:
    """If `scripts/bench --quick` runs, then it exits 0 and writes JSON with rows 1 to 7, each measured."""
    result, output, _ = quick_run
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads(output.read_text())
    assert doc["version"] == 1 and doc["quick"] is True
    assert doc["machine"]["load_generator"] in ("c", "python")
    rows = rows_of(output)
    assert sorted(rows) == [1, 2, 3, 4, 5, 6, 7]
    for number, row in rows.items():
        assert set(row) == ROW_KEYS, f"row {number} has keys {sorted(row)}"
        # met or missed are both fine here; failed (or not yet) means the row could not be measured.
        assert row["status"] in ("met", "missed"), f"row {number} is {row['status']}: {row['note']}"
        assert row["target"] and row["what"] and row["result"]
    for number in RATIO_ROWS:
        row = rows[number]
        assert row["value"] > 0 and row["baseline"] > 0
        assert row["ratio"] == pytest.approx(row["value"] / row["baseline"])
    assert [case["concurrency"] for case in rows[3]["cases"]] == [1, 10, 100]
    for case in rows[3]["cases"]:
        assert case["daemon_rps"] > 0 and case["baseline_rps"] > 0 and case["daemon_errors"] == 0
    assert rows[6]["value"] > 0 and rows[6]["details"]["idle_wall_s"] > 0


def test_quick_run_is_correct(quick_run: tuple[subprocess.CompletedProcess[str], Path, Path]) -> None:
    """If `scripts/bench --quick` runs, then row 4 saw exactly 1 authority request for 500 concurrent callers, all
    answered, and row 5 had no short and no failed reply over at least one refresh, whatever the speed figures."""
    result, output, _ = quick_run
    rows = rows_of(output)
    single_flight, soak = rows[4], rows[5]
    assert (single_flight["value"], single_flight["details"]["ok"], single_flight["details"]["requests"]) == (
        1, 500, 500), single_flight["result"]
    assert (soak["details"]["short"], soak["details"]["failed"]) == (0, 0), soak["result"]
    assert soak["details"]["refreshes"] >= 1 and soak["details"]["requests"] > 0
    assert "incorrect" not in result.stderr


def test_quick_run_prints_the_table(quick_run: tuple[subprocess.CompletedProcess[str], Path, Path]) -> None:
    """If `scripts/bench --quick` runs, then stdout carries the table with one line per row and the JSON path."""
    result, output, _ = quick_run
    lines = result.stdout.splitlines()
    for number in range(1, 8):
        assert any(line.startswith(f"| {number} | ") for line in lines), f"no table line for row {number}"
    assert str(output) in result.stdout


def test_quick_run_leaves_nothing_behind(quick_run: tuple[subprocess.CompletedProcess[str], Path, Path]) -> None:
    """If `scripts/bench --quick` has run, then its temporary files and its keyring entries are gone."""
    _, _, workdir = quick_run
    assert list(workdir.iterdir()) == []
    if missing(SECRET_SERVICE) is None:  # the bench shared our private keyring: its profiles must be gone
        import secretstorage

        from aadhelper.secret_store import SERVICE

        connection = secretstorage.dbus_init()
        try:
            names = [item.get_attributes().get("username", "") for item in
                     secretstorage.get_default_collection(connection).search_items({"service": SERVICE})]
        finally:
            connection.close()
        assert not [name for name in names if "bench-" in name]
