"""Running the cases (who runs alone, who side by side) and the table ``scripts/faults`` prints."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final

from .authority_cases import AuthorityCase, authority_cases
from .base import CONTROL, SHARED, Case, Shared
from .config_git_cases import GitCase, config_cases, git_cases
from .identity_cases import exec_cases, identity_cases
from .keyring_cases import keyring_cases
from .measure import Poller, Result, Timing
from .process_cases import process_cases
from .socket_cases import SocketCase, socket_cases
from .world import FaultWorld


def all_cases() -> list[Case]:
    """Every case, in table order (fresh objects: a case keeps state between prepare and run)."""
    return [*authority_cases(), *identity_cases(), *config_cases(), *git_cases(), *process_cases(), *keyring_cases(),
            *socket_cases(), *exec_cases()]


def run_cases(cases: Sequence[Case], timing: Timing, *, progress: Callable[[str], None] = lambda _: None
              ) -> list[Result]:
    """Run ``cases`` against real daemons in a fresh world; the results in the order of ``cases``.

    Needs a Secret Service (run inside ``scripts/with-secret-service``). The authority cases start first, all at
    once; once each has its first token they wait ~30 s for their refresh, and in that time the exclusive cases
    (the keyring ones) run alone; then every other case runs alongside the authority cases' windows.
    """
    results: dict[str, Result] = {}
    with FaultWorld() as world:
        control_authority = world.authority()
        world.add_profile(SHARED, CONTROL, control_authority)
        # The shared daemon's profiles first; the cases with daemons of their own get ready while the authority
        # cases wait for their refresh.
        first = [c for c in cases if isinstance(c, AuthorityCase)]
        in_shared = [*first, *(c for c in cases if isinstance(c, GitCase))]
        for case in in_shared:
            case.prepare(world)
        shared = Shared(world, world.daemon(SHARED), timing)
        world.token(shared.daemon, CONTROL)

        def start(chosen: Sequence[Case]) -> list[threading.Thread]:
            threads = [threading.Thread(target=lambda c=c: results.__setitem__(c.name, _run_one(c, shared)),
                                        name=f"case-{c.name}", daemon=True) for c in chosen]
            for thread in threads:
                thread.start()
            return threads

        with Poller(shared.daemon, CONTROL) as control:
            shared.control = control
            progress(f"faults: {len(first)} authority cases at once, each ~{30 + timing.observe:.0f} s or more")
            threads = start(first)
            for case in cases:
                if case not in in_shared:
                    case.prepare(world)
            for _ in first:
                shared.ready.acquire(timeout=60)
            for case in [c for c in cases if c.exclusive]:
                progress(f"faults: {case.name} (alone)")
                results[case.name] = _run_one(case, shared)
                if time.monotonic() > shared.first_bite:
                    results[case.name].note += " (overlapped the authority cases' refreshes)"
            last = [c for c in cases if isinstance(c, SocketCase)]
            rest = [c for c in cases if not c.exclusive and c not in first and c not in last]
            progress(f"faults: {len(rest)} more cases at once")
            threads += start(rest)
            for thread in threads:
                thread.join(300)
            # Floods and busy loops slow every daemon on the machine: each runs alone, after the others.
            for case in last:
                progress(f"faults: {case.name} (alone)")
                results[case.name] = _run_one(case, shared)
        for result in results.values():  # the temporary folder's name means nothing in a table
            if result.cli is not None:
                result.cli.stderr = result.cli.stderr.replace(str(world.root), "$TMP")
    return [results.get(c.name) or Result(c.name, c.group, note="did not finish") for c in cases]


def _run_one(case: Case, shared: Shared) -> Result:
    start = time.monotonic()
    try:
        result = case.run(shared)
    except Exception as exc:  # one broken case must not lose the others' rows
        result = Result(case.name, case.group, note=f"case failed: {type(exc).__name__}: {exc}")
        result.lost.append("(the case could not run)")
    result.seconds = time.monotonic() - start
    result.known_defect = case.known_defect
    return result


# -- the table ------------------------------------------------------------------------------------------------

COLUMNS: Final = ("case", "daemon alive", "others served", "cached token served", "authority requests (window)",
                  "lost", "client saw (exit)", "verdict")


def row(result: Result) -> tuple[str, ...]:
    def ratio(pair: tuple[int, int] | None) -> str:
        if pair is None:
            return "n/a (none cached)"
        return f"{'yes' if pair[0] == pair[1] else 'NO'} {pair[0]}/{pair[1]}"

    bound = f", bound {result.bound}" if result.bound is not None else ""
    by = "" if result.counted_by == "authority" else ", daemon's count"
    read = f", longest body read {result.body_sent / 1024**2:.1f} MB" if result.body_sent > 64 * 1024 else ""
    requests = f"{result.requests} in {math.ceil(result.window)} s{bound}{by}{read}"
    cli = result.cli
    saw = f"{cli.line} ({cli.exit_code})" if cli is not None else "-"
    problems = result.problems()
    verdict = "ok" if not problems else "FAIL: " + "; ".join(problems)
    if problems and result.known_defect:
        verdict += f" (known: {result.known_defect.what})"
    lost = "; ".join(result.lost + result.accepted_loss) or "nothing"
    name = result.case + (f" [{result.note}]" if result.note else "")
    return (name, "yes" if result.daemon_alive else "NO", ratio(result.others if result.others[1] else None)
            if result.others[1] else "-", ratio(result.cached), requests, lost, saw, verdict)


def table(results: Sequence[Result]) -> str:
    """A Markdown table, one row per case."""
    rows = [COLUMNS, *(row(r) for r in results)]
    cells = [[cell.replace("|", "\\|") for cell in r] for r in rows]
    lines = ["| " + " | ".join(r) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("---" for _ in COLUMNS) + "|")
    return "\n".join(lines)
