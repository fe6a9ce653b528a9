"""``scripts/bench``: measure aadhelper against its baselines and targets; print a table, write JSON.

Run through ``scripts/bench`` (which provides the private Secret Service); see :mod:`aadbench` for what each
row measures. ``--quick`` runs every row briefly (for tests: the figures are rough). Exits 1 when a correctness
property (rows 4 and 5) failed, whatever the speed figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .loadgen import LoadGenerator, pinning_possible
from .plan import COLD, GIT, GIT_URL, MAIN, SOAK, START, START_CERT, Bench, Plan
from .report import document, exit_status, table, write
from .rows_client import git_row, git_spec, header_row, header_spec
from .rows_daemon import single_flight_row, single_flight_spec, throughput_row, throughput_spec
from .rows_process import many_profiles, memory_row, memory_spec, start_row, start_spec
from .rows_soak import soak_row, soak_spec
from .timing import BenchError, Row
from .world import World

#: Every row, in order: what it is (given the plan) and how it is measured (filling in the row).
ROWS: tuple[tuple[Callable[[Plan], Row], Callable[[Bench, Row], None]], ...] = (
    (header_spec, header_row),
    (git_spec, git_row),
    (throughput_spec, throughput_row),
    (single_flight_spec, single_flight_row),
    (soak_spec, soak_row),
    (memory_spec, memory_row),
    (start_spec, start_row),
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="every row, briefly (well under a minute)")
    parser.add_argument("--output", type=Path, default=Path("bench-results.json"), metavar="PATH",
                        help="where to write the JSON results (default: %(default)s)")
    parser.add_argument("--rows", metavar="N,N", help="measure only these rows (the others say 'skipped')")
    parser.add_argument("--python-loadgen", action="store_true",
                        help="use the Python load generator even when cc is available")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    plan = Plan.brief() if args.quick else Plan.full()
    wanted = {int(n) for n in args.rows.split(",")} if args.rows else set(range(1, len(ROWS) + 1))
    started, clock = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), time.monotonic()
    machine = machine_info()
    rows: list[Row] = []
    with World() as world:
        loadgen = LoadGenerator(world.root, force_python=args.python_loadgen)
        machine["load_generator"] = loadgen.kind
        bench = prepare(world, plan, loadgen)
        for spec, measure in ROWS:
            row = spec(plan)
            rows.append(row)
            if row.id not in wanted:
                row.status, row.note = "skipped", "not requested (--rows)"
                continue
            sys.stderr.write(f"bench: row {row.id}: {row.what}\n")
            measure_row(bench, measure, row)
    doc = document(rows, quick=plan.quick, started=started, seconds=time.monotonic() - clock, machine=machine)
    write(args.output, doc)
    print(table(rows))
    print(f"\n{'quick run: rough figures; ' if plan.quick else ''}results in {args.output} "
          f"({doc['seconds']:.0f} s)")
    for row in rows:
        if row.status == "incorrect":
            sys.stderr.write(f"bench: row {row.id} is incorrect: {row.result}\n")
    return exit_status(rows)


def prepare(world: World, plan: Plan, loadgen: LoadGenerator) -> Bench:
    """Profiles and secrets for every row, the main daemon started and its tokens fetched."""
    backend = world.store.backend_name
    if "SecretService" not in backend:
        raise SystemExit(f"bench: needs a Secret Service keyring, found {backend}: run scripts/bench "
                         "(it starts a private one), not the module directly")
    world.add_profiles([MAIN, COLD])
    world.add_profiles([GIT], git_url=GIT_URL)
    soak_authority = world.add_authority(token_lifetime=plan.soak_lifetime)
    world.add_profiles([SOAK], min_valid=plan.soak_min_valid, authority=soak_authority)
    world.add_profiles(many_profiles(plan.profiles), config="many")
    world.add_profiles([START], config="start")
    world.add_certificate_profile(START_CERT, config="start-cert")
    daemon = world.daemon().start()
    daemon.token(MAIN)
    return Bench(plan, world, daemon, loadgen, soak_authority)


def measure_row(bench: Bench, measure: Callable[[Bench, Row], None], row: Row) -> None:
    """Measure one row; a failure marks it 'failed' with the reason, and the bench goes on."""
    try:
        measure(bench, row)
        return
    except (BenchError, OSError, subprocess.SubprocessError) as exc:
        row.note = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # a bug in one row must not lose the others' results
        traceback.print_exc()
        row.note = f"internal error: {type(exc).__name__}: {exc}"
    row.status = "failed"
    sys.stderr.write(f"bench: row {row.id} failed: {row.note}\n")
    try:
        bench.daemon.check_alive()
    except RuntimeError:
        bench.daemon = bench.world.daemon().start()


def machine_info() -> dict[str, Any]:
    load = os.getloadavg()
    finder = any(name.startswith("__editable__") and name.endswith("finder.py")
                 for path in sys.path if os.path.isdir(path) for name in os.listdir(path))
    return {"cpus": os.cpu_count(), "pinned": pinning_possible(), "python": platform.python_version(),
            "platform": platform.platform(), "load_average_at_start": [round(x, 2) for x in load],
            "editable_install_finder": finder,
            "pythondontwritebytecode_in_caller": "PYTHONDONTWRITEBYTECODE" in os.environ}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
