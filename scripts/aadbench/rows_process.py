"""Rows 6 and 7: the daemon as a process.

Row 6 starts a daemon with 50 profiles, gets a token of each, then reads the memory of the daemon and of its
token fetcher process (VmRSS of each, and Pss, which counts the pages they share since the fork once) and
their CPU time (utime + stime) over an idle stretch with no requests. Row 7 times a fresh daemon process from
spawn to the first token it serves (secret from the keyring, token from the authority), polling its socket
every millisecond, against an interpreter that only imports trio, httpx and keyring; and the same for a
certificate profile (key and chain from the keyring, a signed client assertion), held to the same target.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor

from aadhelper import client
from aadhelper.errors import DaemonNotRunning

from .plan import MANY_PREFIX, START, START_CERT, Bench, Plan
from .timing import BenchError, Command, Row, median, ms, pss_bytes, rss_bytes
from .timing import cpu_seconds as cpu_seconds_of

RSS_TARGET_MB = 60.0
#: Idle CPU above this share of one core counts as busy polling.
IDLE_CPU_TARGET = 0.005
START_TARGET = 1.5
POLL_INTERVAL = 0.001
#: A token per profile is fetched this many at a time.
FETCH_CONCURRENCY = 10


def many_profiles(count: int) -> list[str]:
    return [f"{MANY_PREFIX}{index:02d}" for index in range(count)]


def memory_spec(plan: Plan) -> Row:
    return Row(6, "memory-idle", f"daemon + fetcher memory after serving {plan.profiles} profiles; idle CPU over "
               f"{plan.idle_seconds:.0f} s", f"memory <= {RSS_TARGET_MB:.0f} MB; idle CPU ~ 0 "
               f"(<= {IDLE_CPU_TARGET:.1%})", unit="MB")


def memory_row(bench: Bench, row: Row) -> None:
    plan = bench.plan
    with bench.world.running_daemon("many") as daemon:
        fetcher = daemon.fetcher_pid()
        if fetcher is None:
            raise BenchError("the daemon has no token fetcher process")
        pids = (daemon.pid, fetcher)
        rss_started = sum(rss_bytes(pid) for pid in pids)
        with ThreadPoolExecutor(FETCH_CONCURRENCY) as pool:
            replies = list(pool.map(daemon.token, many_profiles(plan.profiles)))
        if len(replies) != plan.profiles:
            raise BenchError("not every profile got a token")
        rss = [rss_bytes(pid) / 2**20 for pid in pids]
        pss = sum(pss_bytes(pid) for pid in pids) / 2**20
        before, started = sum(cpu_seconds_of(pid) for pid in pids), time.monotonic()
        time.sleep(plan.idle_seconds)
        idle_cpu = sum(cpu_seconds_of(pid) for pid in pids) - before
        idle_wall = time.monotonic() - started
        daemon.check_alive()
    row.value = pss
    share = idle_cpu / idle_wall
    row.result = (f"{pss:.1f} MB PSS (RSS {rss[0]:.1f} MB daemon + {rss[1]:.1f} MB fetcher); {idle_cpu:.2f} s CPU "
                  f"in {idle_wall:.0f} s idle ({share:.2%})")
    row.details.update(pss_mb=pss, rss_daemon_mb=rss[0], rss_fetcher_mb=rss[1], rss_sum_mb=sum(rss),
                       rss_at_start_mb=rss_started / 2**20, idle_cpu_s=idle_cpu, idle_wall_s=idle_wall,
                       idle_cpu_share=share, profiles=plan.profiles)
    row.judge(row.value <= RSS_TARGET_MB and share <= IDLE_CPU_TARGET)


def start_spec(plan: Plan) -> Row:
    return Row(7, "start", "daemon start to first token served", f"ratio <= {START_TARGET}", unit="ms")


def start_row(bench: Bench, row: Row) -> None:
    baseline = Command([sys.executable, "-c", "import trio, httpx, keyring"], bench.world.env)
    baseline.run()
    starts: list[tuple[float, float]] = []
    certificate_starts: list[tuple[float, float]] = []
    baseline_times: list[float] = []
    per_start = max(1, round(bench.plan.start_baseline_runs / bench.plan.starts))
    # Interleaved, so that a change in the machine's load affects every series alike.
    for _ in range(bench.plan.starts):
        starts.append(_one_start(bench, "start", START))
        certificate_starts.append(_one_start(bench, "start-cert", START_CERT))
        baseline_times.extend(baseline.run() for _ in range(per_start))
    row.value = median([total for _, total in starts]) * 1000
    row.baseline = median(baseline_times) * 1000
    row.ratio = row.value / row.baseline
    certificate = median([total for _, total in certificate_starts]) * 1000
    certificate_ratio = certificate / row.baseline
    row.result = f"{ms(row.value / 1000)} (certificate: {ms(certificate / 1000)}, ratio {certificate_ratio:.2f})"
    row.baseline_text = f"{ms(row.baseline / 1000)} (python -c 'import trio, httpx, keyring')"
    row.details.update(starts=len(starts), listening_ms=median([listening for listening, _ in starts]) * 1000,
                       baseline_runs=len(baseline_times), certificate_ms=certificate,
                       certificate_ratio=certificate_ratio)
    row.judge(max(row.ratio, certificate_ratio) <= START_TARGET)


def _one_start(bench: Bench, config: str, profile: str) -> tuple[float, float]:
    """Seconds from spawn until the socket accepted a connection, and until the first token arrived."""
    daemon = bench.world.daemon(config)
    began = time.perf_counter()
    daemon.spawn()
    try:
        deadline = began + 30
        while time.perf_counter() < deadline:
            attempt = time.perf_counter()
            try:
                client.get_token(profile, socket_path=daemon.socket_path)
            except DaemonNotRunning:
                daemon.check_alive()
                time.sleep(POLL_INTERVAL)
                continue
            return attempt - began, time.perf_counter() - began
        raise BenchError("the daemon served no token within 30 s")
    finally:
        daemon.stop()
