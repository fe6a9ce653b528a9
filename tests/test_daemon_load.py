"""Many clients at once against the real daemon process: none is told "daemon not running" while it runs
(issue 10 §3: with a 128-connection backlog and no retry, 1,000 concurrent calls saw 479 such failures)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from .harness import DaemonProcess

#: 1,000 threads connect at once (a barrier releases them together) and each sends one ping; prints the failures.
BURST = textwrap.dedent("""
    import sys, threading
    from aadhelper import client, protocol
    from aadhelper.errors import AadhelperError
    path, count = sys.argv[1], int(sys.argv[2])
    barrier = threading.Barrier(count)
    failures = []
    def one():
        barrier.wait()
        try:
            client.call(protocol.request("ping"), socket_path=path, timeout=60)
        except AadhelperError as exc:
            failures.append(exc.one_line())
    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(len(failures))
    print("\\n".join(sorted(set(failures))[:3]))
""")


def test_a_thousand_clients_at_once_are_all_answered(isolated_env: dict[str, str]) -> None:
    """If 1,000 clients connect at the same moment, then every one of them gets its reply: a full listen backlog is
    retried with a short backoff, not reported as "daemon not running"."""
    with DaemonProcess(isolated_env) as daemon:
        result = subprocess.run([sys.executable, "-c", BURST, daemon.socket_path, "1000"], capture_output=True,
                                text=True, timeout=300, env=isolated_env)
        assert daemon.alive()
    assert result.returncode == 0, result.stderr
    failures, _, examples = result.stdout.partition("\n")
    assert failures == "0", examples
