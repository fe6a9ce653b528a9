"""The baseline of row 3: a bare trio one-line server on a Unix socket, run in its own process.

    python -m aadbench.trio_baseline SOCKET REPLY_FILE

Per connection it reads until the first newline, sends the fixed reply (the bench hands it the daemon's
real reply, so both move the same bytes) and closes. No peer check, limits or timeouts: the least a trio
server written the usual way (``serve_listeners`` and ``SocketStream``) does, which is what the daemon's
connection path is compared with. Prints ``ready`` once listening; the bench ends it with SIGTERM.
"""

from __future__ import annotations

import socket
import sys

import trio

from aadhelper.listener import LISTEN_BACKLOG  # the daemon's


async def serve(path: str, reply: bytes) -> None:
    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            received = b""
            while b"\n" not in received:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                received += chunk
            await stream.send_all(reply)

    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(LISTEN_BACKLOG)
    listener = trio.SocketListener(sock)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, answer, [listener])
        print("ready", flush=True)


def main() -> None:
    path, reply_file = sys.argv[1:3]
    with open(reply_file, "rb") as file:
        reply = file.read()
    trio.run(serve, path, reply)


if __name__ == "__main__":
    main()
