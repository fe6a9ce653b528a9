"""The program the exec cases of :mod:`.identity_cases` run under ``aadhelper exec``: an SDK-like load on the
managed-identity endpoint, with or without an attack on the same endpoint, that reports what the SDK saw.

    python -m aadhelper.testing.fault_suite.exec_child slowloris|concurrent SECONDS

* ``slowloris``: 300 connections (more than the endpoint's limit) send a request head one byte every half
  second (reopened when the endpoint drops them) while the SDK asks for a token on a new connection (a new
  credential object) every 0.2 s;
* ``concurrent``: 200 keep-alive connections (an SDK process with many credential objects), each asking for a
  token every half second.

Every SDK request must get a 200 with a token within :data:`PROMPT` seconds. The program prints one line on
stderr (how many were served, what the attack did) and exits 0 when all were served, 1 otherwise: the fault table
shows that line and exit status in its "client saw" column. Standard library only (it stands for any SDK).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import sys
import threading
import time
from urllib.parse import quote, urlsplit

#: Seconds within which an SDK request counts as served (as :data:`.measure.PROMPT`).
PROMPT = 5.0
#: Connections of the slowloris (above the endpoint's limit of 256), and of the concurrent SDK.
SLOW_CONNECTIONS = 300
CONNECTIONS = 200
RESOURCE = "https://graph.microsoft.com"


class Tally:
    """SDK requests asked and served, and the first failure, from many threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.asked = self.served = 0
        self.failure = ""

    def ask(self, connection: http.client.HTTPConnection, target: str, secret: str) -> None:
        start = time.monotonic()
        try:
            connection.request("GET", target, headers={"X-IDENTITY-HEADER": secret, "Metadata": "true"})
            reply = connection.getresponse()
            body = json.loads(reply.read())
            ok = reply.status == 200 and isinstance(body.get("access_token"), str)
            why = "" if ok else f"HTTP {reply.status}: {str(body.get('message', ''))[:100]}"
        except (OSError, http.client.HTTPException, ValueError) as exc:
            ok, why = False, f"{type(exc).__name__}: {exc}"
            connection.close()  # the next request reconnects, as an SDK's connection pool does
        ok = ok and time.monotonic() - start <= PROMPT
        with self.lock:
            self.asked += 1
            self.served += ok
            if not ok and not self.failure:
                self.failure = why or f"answered after more than {PROMPT:g} s"


def slow_connections(host: str, port: int, stop: threading.Event) -> str:
    """:data:`SLOW_CONNECTIONS` connections dripping a request head, reopened when dropped; what happened to them."""
    conns: list[socket.socket] = []
    opened = dropped = 0
    try:
        while not stop.is_set():
            while len(conns) < SLOW_CONNECTIONS:
                try:
                    conns.append(socket.create_connection((host, port), timeout=1.0))
                    opened += 1
                except OSError:
                    break
            for conn in list(conns):
                try:
                    conn.send(b"G")
                except OSError:
                    dropped += 1
                    conns.remove(conn)
                    conn.close()
            stop.wait(0.5)
    finally:
        for conn in conns:
            conn.close()
    return f"{opened} slow connections opened, {dropped} dropped by the endpoint"


def main(argv: list[str]) -> int:
    mode, seconds = argv[0], float(argv[1])
    url = urlsplit(os.environ["IDENTITY_ENDPOINT"])
    secret = os.environ["IDENTITY_HEADER"]
    host, port = url.hostname or "127.0.0.1", url.port or 80
    target = f"{url.path}?api-version=2019-08-01&resource={quote(RESOURCE, safe='')}"
    tally, stop = Tally(), threading.Event()
    end = time.monotonic() + seconds
    attack: list[str] = []
    if mode == "slowloris":
        dripping = threading.Thread(target=lambda: attack.append(slow_connections(host, port, stop)), daemon=True)
        dripping.start()
        time.sleep(1.0)  # the slow connections are in place
        while time.monotonic() < end:
            connection = http.client.HTTPConnection(host, port, timeout=PROMPT)
            tally.ask(connection, target, secret)
            connection.close()
            time.sleep(0.2)
        stop.set()
        dripping.join(10)
    else:
        def sdk(offset: float) -> None:
            connection = http.client.HTTPConnection(host, port, timeout=PROMPT)
            time.sleep(offset)
            while time.monotonic() < end:
                tally.ask(connection, target, secret)
                time.sleep(0.5)
            connection.close()

        workers = [threading.Thread(target=sdk, args=(i * 0.5 / CONNECTIONS,), daemon=True)
                   for i in range(CONNECTIONS)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(seconds + 2 * PROMPT)
        attack.append(f"{CONNECTIONS} keep-alive connections")
    said = f"; first failure: {tally.failure}" if tally.failure else ""
    sys.stderr.write(f"exec child: {tally.served}/{tally.asked} SDK requests served ({', '.join(attack)}){said}\n")
    return 0 if tally.asked and tally.served == tally.asked else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main(sys.argv[1:]))
