"""Running the load generator in its own process: ``loadgen.c`` compiled with ``cc`` into the bench's
temporary folder, or :mod:`aadbench.pyloadgen` when there is no compiler.

The server under test and the generator run on different CPUs when there are at least two (the server on
CPU 0, the generator on CPU 1), so neither steals the other's time and runs are comparable.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .timing import BenchError

SOURCE = Path(__file__).with_name("loadgen.c")
SERVER_CPU = 0
GENERATOR_CPU = 1


@dataclass(frozen=True)
class LoadResult:
    requests: int
    ok: int
    errors: int
    elapsed: float
    p50_us: float
    p99_us: float
    max_us: float

    @property
    def rate(self) -> float:
        """Successful requests per second."""
        return self.ok / self.elapsed if self.elapsed else 0.0


def pinning_possible() -> bool:
    return len(os.sched_getaffinity(0)) >= 2 and {SERVER_CPU, GENERATOR_CPU} <= os.sched_getaffinity(0)


def pin_server(pid: int) -> None:
    """Keep a server process (all its threads) on CPU 0; no-op on one CPU."""
    if pinning_possible():
        for thread in os.listdir(f"/proc/{pid}/task"):
            os.sched_setaffinity(int(thread), {SERVER_CPU})


def unpin(pid: int) -> None:
    if pinning_possible():
        for thread in os.listdir(f"/proc/{pid}/task"):
            os.sched_setaffinity(int(thread), os.sched_getaffinity(0))


class LoadGenerator:
    """Builds (or picks) the generator once; :meth:`run` runs it against a socket."""

    def __init__(self, workdir: Path, *, force_python: bool = False) -> None:
        self.workdir = workdir
        self.command, self.kind = self._build(force_python)
        self._requests: dict[bytes, Path] = {}

    def _build(self, force_python: bool) -> tuple[list[str], str]:
        compiler = shutil.which("cc")
        if compiler and not force_python:
            binary = self.workdir / "loadgen"
            result = subprocess.run([compiler, "-O2", "-pthread", "-o", str(binary), str(SOURCE)],
                                    capture_output=True, text=True, check=False)
            if result.returncode == 0:
                return [str(binary)], "c"
            sys.stderr.write(f"bench: cc failed ({result.stderr.strip()[-300:]}); using the Python generator\n")
        return [sys.executable, "-m", "aadbench.pyloadgen"], "python"

    def run(self, socket_path: str, request: bytes, concurrency: int, seconds: float = 0.0, *, once: bool = False,
            pause_us: int = 0, records: Path | None = None, expect: str | None = None) -> LoadResult:
        """``concurrency`` clients for ``seconds`` (or one request each with ``once``)."""
        args = [socket_path, str(self._request_file(request)), str(concurrency), f"{seconds:.3f}"]
        if once:
            args.append("once")
        if pause_us:
            args.append(f"pause_us={pause_us}")
        if records is not None:
            args.append(f"records={records}")
        if expect is not None:
            args.append(f"expect={expect}")
        if pinning_possible():
            args.append(f"cpu={GENERATOR_CPU}")
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
        result = subprocess.run([*self.command, *args], capture_output=True, text=True, env=env, check=False,
                                timeout=seconds + 120)
        if result.returncode != 0:
            raise BenchError(f"the load generator failed: {result.stderr.strip()[-500:]}")
        return LoadResult(**json.loads(result.stdout))

    def _request_file(self, request: bytes) -> Path:
        path = self._requests.get(request)
        if path is None:
            path = self.workdir / f"request-{len(self._requests)}.json"
            path.write_bytes(request)
            self._requests[request] = path
        return path
