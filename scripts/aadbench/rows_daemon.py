"""Rows 3 and 4: the daemon under load.

Row 3 compares cached-token throughput and latency (connect, one request line, reply, close) with a bare
trio server (:mod:`aadbench.trio_baseline`) that sends the daemon's own reply bytes, at 1, 10 and 100
concurrent clients, the two servers alternating run by run. Row 4 sends 500 requests at once for a profile
nobody asked for yet, with the authority slowed down so they all arrive while the fetch is under way, and
counts the authority's token requests.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from aadhelper import protocol
from aadhelper.testing import Fault
from aadhelper.testing.daemon_process import terminate

from .loadgen import LoadResult, pin_server, unpin
from .plan import COLD, MAIN, Bench, Plan
from .timing import BenchError, Row, median

THROUGHPUT_TARGET = 0.8
CONCURRENCIES = (1, 10, 100)
#: How long the authority holds the cold profile's token request (s): far longer than 500 connects take.
COLD_FETCH_DELAY = 1.0


def token_request(profile: str) -> bytes:
    return protocol.encode(protocol.request("token", profile=profile))


def throughput_spec(plan: Plan) -> Row:
    return Row(3, "throughput", "daemon req/s and latency, cached token, 1/10/100 clients",
               f"req/s >= {THROUGHPUT_TARGET} x baseline", unit="req/s")


def throughput_row(bench: Bench, row: Row) -> None:
    row.details["load_generator"] = bench.loadgen.kind
    request = token_request(MAIN)
    reply_file = bench.world.file("baseline-reply.json")
    reply_file.write_bytes(_exchange(bench.daemon.socket_path, request))
    with BaselineServer(bench.world.file("run/baseline.sock"), reply_file) as baseline:
        pin_server(bench.daemon.pid)
        pin_server(baseline.pid)
        try:
            for concurrency in CONCURRENCIES:
                row.cases.append(_compare_at(bench, request, baseline.socket_path, concurrency))
        finally:
            unpin(bench.daemon.pid)
    worst = min(row.cases, key=lambda case: case["ratio"])
    row.ratio = worst["ratio"]
    row.value, row.baseline = worst["daemon_rps"], worst["baseline_rps"]
    row.result = "  ".join(f"{c['concurrency']}: {c['daemon_rps']:.0f}" for c in row.cases)
    row.baseline_text = "  ".join(f"{c['concurrency']}: {c['baseline_rps']:.0f}" for c in row.cases) + \
        " (bare trio server)"
    row.note = f"worst ratio with {worst['concurrency']} concurrent client(s)"
    row.judge(all(case["ratio"] >= THROUGHPUT_TARGET and case["daemon_errors"] == 0 for case in row.cases))


def _compare_at(bench: Bench, request: bytes, baseline_socket: str, concurrency: int) -> dict[str, float]:
    daemon_runs: list[LoadResult] = []
    baseline_runs: list[LoadResult] = []
    for _ in range(bench.plan.load_repeats):
        daemon_runs.append(bench.loadgen.run(bench.daemon.socket_path, request, concurrency, bench.plan.load_seconds))
        baseline_runs.append(bench.loadgen.run(baseline_socket, request, concurrency, bench.plan.load_seconds))
    case: dict[str, float] = {"concurrency": concurrency}
    for name, runs in (("daemon", daemon_runs), ("baseline", baseline_runs)):
        case[f"{name}_rps"] = median([run.rate for run in runs])
        case[f"{name}_p50_us"] = median([run.p50_us for run in runs])
        case[f"{name}_p99_us"] = median([run.p99_us for run in runs])
        case[f"{name}_errors"] = sum(run.errors for run in runs)
    case["ratio"] = case["daemon_rps"] / case["baseline_rps"]
    return case


def single_flight_spec(plan: Plan) -> Row:
    return Row(4, "single-flight", f"{plan.single_flight_requests} concurrent requests for a cold profile",
               "exactly 1 authority request", unit="authority requests")


def single_flight_row(bench: Bench, row: Row) -> None:
    requests = bench.plan.single_flight_requests
    world = bench.world
    before = len(world.authority_requests(COLD))
    world.authority.inject(Fault.delay(COLD_FETCH_DELAY))
    pin_server(bench.daemon.pid)
    try:
        result = bench.loadgen.run(bench.daemon.socket_path, token_request(COLD), requests, once=True)
    finally:
        unpin(bench.daemon.pid)
        world.authority.clear_faults()
    fetched = len(world.authority_requests(COLD)) - before
    row.value = fetched
    row.result = f"{fetched} authority request(s); {result.ok}/{requests} replies ok"
    row.details.update(requests=requests, ok=result.ok, authority_delay_s=COLD_FETCH_DELAY,
                       p50_ms=result.p50_us / 1000, p99_ms=result.p99_us / 1000)
    # All correctness, no speed: one flight for every concurrent caller, and every caller answered.
    correct = fetched == 1 and result.ok == requests
    row.judge(correct, correct=correct)


def _exchange(socket_path: str, request: bytes) -> bytes:
    """One request, the complete reply line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(socket_path)
        sock.sendall(request)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise BenchError("the daemon closed the connection without a reply")
            reply += chunk
    if b'"ok":true' not in reply:
        raise BenchError(f"the daemon answered with an error: {reply[:300]!r}")
    return reply


class BaselineServer:
    """:mod:`aadbench.trio_baseline` as a child process; a context manager."""

    def __init__(self, socket_path: Path, reply_file: Path) -> None:
        self.socket_path = str(socket_path)
        env = {"PYTHONPATH": str(Path(__file__).parent.parent)}
        self.process = subprocess.Popen([sys.executable, "-m", "aadbench.trio_baseline", self.socket_path,
                                         str(reply_file)], env=env, stdout=subprocess.PIPE)

    @property
    def pid(self) -> int:
        return self.process.pid

    def __enter__(self) -> BaselineServer:
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != b"ready":
            self.__exit__()
            raise BenchError("the baseline trio server did not start")
        return self

    def __exit__(self, *exc_info: object) -> None:
        terminate(self.process)
