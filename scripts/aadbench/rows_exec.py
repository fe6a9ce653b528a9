"""Row 9: an Azure SDK's managed-identity call through ``aadhelper exec``, next to the same call against a bare server.

One Python process under ``aadhelper exec bench-main`` creates a new ``ManagedIdentityCredential`` for each call
(so azure-identity's and msal's own caches never answer) and times ``get_token`` on the Graph scope; the baseline
is the same script, run the same way, with ``IDENTITY_ENDPOINT`` pointing at a bare stdlib ``http.server``
(HTTP/1.1, one thread per connection) in the bench process that returns a fixed token. Both processes time only
the calls, after warm-up calls (the SDK's lazy imports), and run in turn, twice each. The figure is what the
endpoint adds to an SDK's call: its HTTP handling plus one round trip to the daemon over the Unix socket. Every
call must return the daemon's token (checked), or the row is incorrect.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

from aadhelper.testing import GRAPH

from .plan import MAIN, Bench, Plan
from .timing import BenchError, Row, median, ms, percentile
from .world import AADHELPER

EXEC_TARGET = 1.5
WARMUP_CALLS = 5
ROUNDS = 2
FIXED_TOKEN = "bench-fixed-token"

#: Times `calls` calls of a new credential's get_token; prints the tokens seen and the seconds of each call.
SCRIPT = textwrap.dedent("""
    import json, sys, time
    from azure.identity import ManagedIdentityCredential
    scope, warmup, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    for _ in range(warmup):
        ManagedIdentityCredential().get_token(scope)
    times, tokens = [], set()
    for _ in range(calls):
        began = time.perf_counter()
        token = ManagedIdentityCredential().get_token(scope).token
        times.append(time.perf_counter() - began)
        tokens.add(token)
    print(json.dumps({"times": times, "tokens": sorted(tokens)}))
""")


def exec_spec(plan: Plan) -> Row:
    return Row(9, "exec-mi", "`ManagedIdentityCredential().get_token` through `aadhelper exec` (new credential "
               "per call)", f"ratio <= {EXEC_TARGET}", unit="ms")


class _FixedToken(http.server.BaseHTTPRequestHandler):
    """The baseline endpoint: any GET gets the same App Service reply."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = json.dumps({"access_token": FIXED_TOKEN, "expires_on": str(int(time.time()) + 3600),
                           "resource": GRAPH, "token_type": "Bearer"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the bench prints its own table
        pass


def exec_row(bench: Bench, row: Row) -> None:
    calls = bench.plan.header_runs * 2
    env = {key: value for key, value in bench.world.env.items() if not key.startswith(("IDENTITY_", "MSI_"))}
    token = str(bench.daemon.token(MAIN)["access_token"])
    args = [sys.executable, "-c", SCRIPT, f"{GRAPH}/.default", str(WARMUP_CALLS), str(calls)]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FixedToken)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    baseline_env = {**env, "IDENTITY_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}/msi/token",
                    "IDENTITY_HEADER": "bench-baseline-secret"}
    subject_times: list[float] = []
    baseline_times: list[float] = []
    wrong: set[str] = set()
    try:
        for _ in range(ROUNDS):
            seen = _run([AADHELPER, "exec", MAIN, "--", *args], env, subject_times)
            wrong |= seen - {token}
            seen = _run(args, baseline_env, baseline_times)
            if seen != {FIXED_TOKEN}:
                raise BenchError(f"the baseline server's token did not come back: {len(seen)} distinct tokens")
    finally:
        server.shutdown()
        server.server_close()
    row.value, row.baseline = median(subject_times) * 1000, median(baseline_times) * 1000
    row.ratio = row.value / row.baseline
    row.result = ms(row.value / 1000)
    row.baseline_text = f"{ms(row.baseline / 1000)} (bare http.server, fixed token)"
    row.details.update(calls=len(subject_times), subject_p90_ms=percentile(subject_times, 0.9) * 1000,
                       baseline_p90_ms=percentile(baseline_times, 0.9) * 1000, wrong_tokens=len(wrong))
    row.judge(row.ratio <= EXEC_TARGET, correct=not wrong)


def _run(argv: list[str], env: dict[str, str], times: list[float]) -> set[str]:
    """Run the timing script; add its call times to ``times`` and return the tokens it saw."""
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
    if result.returncode != 0:
        raise BenchError(f"the SDK script exited {result.returncode}: {result.stderr.strip()[-500:]}")
    out = json.loads(result.stdout.strip().splitlines()[-1])
    times.extend(out["times"])
    return set(out["tokens"])
