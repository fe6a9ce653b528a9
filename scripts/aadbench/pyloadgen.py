"""The load generator without a C compiler: the same command line and output as ``loadgen.c``, in Python.

    python -m aadbench.pyloadgen SOCKET REQUEST_FILE CONCURRENCY SECONDS [once] [pause_us=N] [records=FILE]
                                 [expect=TEXT] [cpu=N]

The clients are spread over a few worker processes (threads inside each), so the interpreter lock of one
process does not cap the load. It is slower than the C one, so on a fast daemon it may measure itself;
the bench says which generator it used.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier as ProcessBarrier

#: A record: start (ns, wall clock), latency (ns), the reply's expires_on (0 when absent), ok.
Record = tuple[int, int, int, bool]
WORKER_PROCESSES = 4


@dataclass(frozen=True)
class Options:
    socket_path: str
    request: bytes
    concurrency: int
    seconds: float
    once: bool = False
    pause: float = 0.0
    records: str | None = None
    expect: bytes = b'"ok":true'
    cpu: int | None = None


def parse(argv: list[str]) -> Options:
    if len(argv) < 4:
        raise SystemExit(__doc__)
    with open(argv[1], "rb") as file:
        request = file.read()
    extra: dict[str, str] = dict(arg.partition("=")[::2] for arg in argv[4:])
    return Options(argv[0], request, int(argv[2]), float(argv[3]), once="once" in extra,
                   pause=int(extra.get("pause_us", "0")) / 1e6, records=extra.get("records"),
                   expect=extra.get("expect", '"ok":true').encode(),
                   cpu=int(extra["cpu"]) if "cpu" in extra else None)


def one_request(options: Options) -> tuple[bool, int]:
    """One connect-request-reply-close; (ok, expires_on)."""
    reply = b""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(options.socket_path)
            sock.sendall(options.request)
            while not reply.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return False, 0
    field = reply.find(b'"expires_on":')
    expires_on = int(reply[field + 13:].split(b",")[0].split(b"}")[0]) if field >= 0 else 0
    return reply.endswith(b"\n") and options.expect in reply, expires_on


def client(options: Options, start: threading.Barrier, deadline: float, records: list[Record]) -> None:
    start.wait()
    while True:
        began = time.time_ns()
        clock = time.perf_counter_ns()
        ok, expires_on = one_request(options)
        records.append((began, time.perf_counter_ns() - clock, expires_on, ok))
        if options.pause:
            time.sleep(options.pause)
        if options.once or time.monotonic() >= deadline:
            return


def worker(options: Options, clients: int, start: ProcessBarrier, results: Queue[list[Record]]) -> None:
    if options.cpu is not None:
        os.sched_setaffinity(0, {options.cpu})
    records: list[Record] = []
    start.wait()
    deadline = time.monotonic() + options.seconds
    ready = threading.Barrier(clients)
    threads = [threading.Thread(target=client, args=(options, ready, deadline, records)) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put(records)


def main(argv: list[str]) -> None:
    options = parse(argv)
    processes = min(WORKER_PROCESSES, options.concurrency)
    shares = [options.concurrency // processes + (i < options.concurrency % processes) for i in range(processes)]
    context = multiprocessing.get_context("fork")
    start = context.Barrier(processes + 1)
    results: Queue[list[Record]] = context.Queue()
    workers = [context.Process(target=worker, args=(options, share, start, results)) for share in shares]
    for process in workers:
        process.start()
    start.wait()
    began = time.perf_counter()
    records = [record for _ in workers for record in results.get()]
    elapsed = time.perf_counter() - began
    for process in workers:
        process.join()
    if options.records:
        with open(options.records, "w") as file:
            file.writelines(f"{s} {lat} {exp} {int(ok)}\n" for s, lat, exp, ok in records)
    latencies = sorted(lat / 1e3 for _, lat, _, _ in records) or [0.0]
    ok_count = sum(1 for record in records if record[3])
    print(json.dumps({"requests": len(records), "ok": ok_count, "errors": len(records) - ok_count,
                      "elapsed": elapsed, "p50_us": latencies[(len(latencies) - 1) // 2],
                      "p99_us": latencies[int((len(latencies) - 1) * 0.99)], "max_us": latencies[-1]}))


if __name__ == "__main__":
    main(sys.argv[1:])
