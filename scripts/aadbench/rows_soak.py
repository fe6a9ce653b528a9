"""Row 5: a refresh soak. Tokens live 40 s (a second authority issues them), the profile asks for 5 s of
minimum validity, and a steady, unsaturated load runs for 150 s while the daemon refreshes in the background
(every 30 s: the refresh policy's spacing floor).

Every reply is recorded by the load generator (start, latency, ``expires_on``). A reply is short when
``expires_on`` (whole seconds, rounded down by the daemon) minus the time the reply arrived is less than the
minimum validity. A refresh window runs from the authority's arrival time of a refresh request to the first
reply that carries the new token, widened by :data:`WINDOW_MARGIN` on both sides (the keyring read before
the request and the bookkeeping after it belong to the refresh too); requests overlapping a window are
"during refresh", the others "outside".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .loadgen import pin_server, unpin
from .plan import SOAK, Bench, Plan
from .rows_daemon import token_request
from .timing import BenchError, Row, percentile

P99_TARGET = 1.5
#: Seconds added before and after each refresh window.
WINDOW_MARGIN = 0.05


@dataclass(frozen=True)
class Reply:
    start: float
    latency: float
    expires_on: int
    ok: bool

    @property
    def done(self) -> float:
        return self.start + self.latency


def soak_spec(plan: Plan) -> Row:
    return Row(5, "refresh-soak", f"refresh soak: {plan.soak_lifetime} s tokens, {plan.soak_min_valid} s minimum "
               f"validity, {plan.soak_seconds:.0f} s of steady load",
               f"0 short replies; p99 during refresh <= {P99_TARGET} x outside", unit="x p99")


def soak_row(bench: Bench, row: Row) -> None:
    plan, world = bench.plan, bench.world
    bench.daemon.token(SOAK)
    records = world.file("soak-records.txt")
    pin_server(bench.daemon.pid)
    try:
        load = bench.loadgen.run(bench.daemon.socket_path, token_request(SOAK), plan.soak_clients, plan.soak_seconds,
                                 pause_us=plan.soak_pause_us, records=records)
    finally:
        unpin(bench.daemon.pid)
    replies = [_parse(line) for line in records.read_text().splitlines()]
    first = min(reply.start for reply in replies)
    refreshes = [t for t in world.authority_requests(SOAK, bench.soak_authority) if t >= first]
    analysis = analyse(replies, refreshes, plan.soak_min_valid)
    row.details.update(analysis, requests=load.requests, rate=load.rate)
    if not refreshes:
        raise BenchError("no refresh happened during the soak")
    row.value = row.ratio = analysis["p99_ratio"]
    row.result = (f"{analysis['short']} short, {analysis['failed']} failed of {len(replies)}; p99 "
                  f"{analysis['p99_during_us']:.0f} us during {len(refreshes)} refreshes vs "
                  f"{analysis['p99_outside_us']:.0f} us outside")
    # No short and no failed reply is correctness; the p99 ratio is the speed target.
    row.judge(row.ratio <= P99_TARGET, correct=analysis["short"] == 0 and analysis["failed"] == 0)


def _parse(line: str) -> Reply:
    start_ns, latency_ns, expires_on, ok = line.split()
    return Reply(int(start_ns) / 1e9, int(latency_ns) / 1e9, int(expires_on), ok == "1")


def analyse(replies: Sequence[Reply], refreshes: Sequence[float], min_valid: int) -> dict[str, float]:
    """Short and failed replies, and p99 latency inside and outside the refresh windows."""
    windows = refresh_windows(replies, refreshes)
    during: list[float] = []
    outside: list[float] = []
    for reply in replies:
        overlaps = any(reply.start <= end and reply.done >= begin for begin, end in windows)
        (during if overlaps else outside).append(reply.latency)
    if not outside:
        raise BenchError("every request of the soak overlapped a refresh window")
    result = {
        "short": sum(1 for r in replies if r.ok and r.expires_on - r.done < min_valid),
        "failed": sum(1 for r in replies if not r.ok),
        "refreshes": len(refreshes),
        "requests_during": len(during),
        "window_seconds": sum(end - begin for begin, end in windows),
        "min_remaining_s": min((r.expires_on - r.done for r in replies if r.ok), default=0.0),
        "p99_outside_us": percentile(outside, 0.99) * 1e6,
        "p99_during_us": percentile(during, 0.99) * 1e6 if during else 0.0,
    }
    result["p99_ratio"] = result["p99_during_us"] / result["p99_outside_us"]
    return result


def refresh_windows(replies: Sequence[Reply], refreshes: Sequence[float]) -> list[tuple[float, float]]:
    """[arrival - margin, first reply with the new token + margin] for each refresh request."""
    by_done = sorted((r for r in replies if r.ok), key=lambda r: r.done)
    last = by_done[-1].done if by_done else 0.0
    windows = []
    for arrival in sorted(refreshes):
        old = max((r.expires_on for r in by_done if r.done < arrival), default=0)
        end = next((r.done for r in by_done if r.start >= arrival and r.expires_on > old), last)
        windows.append((arrival - WINDOW_MARGIN, end + WINDOW_MARGIN))
    return windows
