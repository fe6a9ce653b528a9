"""``scripts/faults``: attack real daemons with every fault case and print one table (Markdown), one row per case.

Run through ``scripts/faults`` (which provides the private Secret Service). ``--cases WORDS`` runs only the cases
whose name contains one of the comma-separated words; ``--brief`` uses the tests' shorter windows.
"""

from __future__ import annotations

import argparse
import sys
import time

from aadhelper.testing import fault_suite


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/faults", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", metavar="WORD,WORD", help="only the cases whose name contains one of these")
    parser.add_argument("--brief", action="store_true", help="the tests' shorter windows (rough figures)")
    args = parser.parse_args(argv)
    cases = fault_suite.all_cases()
    if args.cases:
        words = [w.strip().lower() for w in args.cases.split(",") if w.strip()]
        cases = [c for c in cases if any(w in c.name.lower() for w in words)]
    if not cases:
        parser.error("no case matches --cases")
    timing = fault_suite.Timing.brief() if args.brief else fault_suite.Timing()
    started = time.monotonic()
    results = fault_suite.run_cases(cases, timing, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(fault_suite.table(results))
    failed = [r for r in results if r.problems()]
    print(f"\n{len(results)} cases, {len(failed)} with problems; {time.monotonic() - started:.0f} s "
          f"(window: {timing.observe:.0f} s after each fault bites)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
