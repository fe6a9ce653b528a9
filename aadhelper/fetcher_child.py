"""The token fetcher process, started by the daemon only: forked at its start, or ``python -m
aadhelper.fetcher_child --fd N`` when a fetcher had to be started again.

It reads fetch requests from the socket the daemon passed, answers each with a token or an error (each request
runs on its own, so a slow authority for one profile holds up no other), runs at idle CPU priority
(:func:`aadhelper.process_setup.run_at_idle_priority`: the daemon's serving loop always goes first), and exits
when the daemon closes its end or sends SIGTERM. Before exiting it lets a refresh-token exchange that is under
way finish, so that a rotated refresh token reaches the keyring (:mod:`aadhelper.grants.refresh`); that is also
why a SIGKILL of the daemon loses no rotation. A rotated refresh token the keyring refused so far gets one more
try, and is logged at ERROR level if it is lost (:meth:`aadhelper.grants.refresh.SignIns.store_before_exit`).
Ctrl-C in a terminal goes to the daemon, which then closes the link; the fetcher ignores SIGINT.

Requests (ids chosen by the daemon)::

    {"v": 1, "op": "acquire", "id": 7, "profile": {"name": ..., "tenant": ...}, "scopes": [...]}
    {"v": 1, "op": "login_required", "id": 8, "profile": "me"}
    {"v": 1, "op": "unsaved_sign_ins", "id": 9}

Replies: ``{"v": 1, "ok": true, "id": 7, "token": {...}}``, ``{"v": 1, "ok": true, "id": 8, "login_required":
{error} | null}``, ``{"v": 1, "ok": true, "id": 9, "profiles": ["me"]}``, or an error reply with the id.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
from typing import Any

import trio

from . import protocol
from .errors import AadhelperError, ConfigError, ProtocolError
from .fetcher import LineLink, LocalFetcher, profile_from_wire, scopes_from_wire, token_to_wire
from .process_setup import configure_logging, harden_process, run_at_idle_priority, set_process_name
from .secret_store import SecretStore, open_secret_store

log = logging.getLogger("aadhelper.fetcher")


def main(argv: list[str] | None = None) -> int:
    """The executed fetcher (the daemon starts one this way when the first one stopped)."""
    parser = argparse.ArgumentParser(prog="python -m aadhelper.fetcher_child",
                                     description="aadhelper's token fetcher (started by the daemon)")
    parser.add_argument("--fd", type=int, required=True, help="the socket to the daemon")
    parser.add_argument("--secret-store", choices=("keyring", "memory"))
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    return run(socket.socket(fileno=args.fd), secret_store=args.secret_store, verbose=args.verbose)


def preload() -> None:
    """Import what fetching needs. The daemon does this before it forks the fetcher, which then starts with every
    module loaded (instead of spending ~0.2 s importing them after the daemon's own imports)."""
    from . import grants  # noqa: F401  (httpx)
    from .grants import client_credentials, refresh  # noqa: F401


def run(sock: socket.socket, *, secret_store: str | None, verbose: bool) -> int:
    """The fetcher process's life, forked or executed: answer on ``sock`` until the daemon hangs up."""
    configure_logging(verbose)
    harden_process()
    set_process_name("aadhelper-fetch")
    priority = run_at_idle_priority()  # before trio starts threads: they inherit it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # What a test (or a reader of the log) waits for: the process has its name and priority from here on.
    log.debug("token fetcher running (pid %d, %s)", os.getpid(), priority)
    try:
        store = open_secret_store(secret_store)
    except ConfigError as exc:
        log.error("token fetcher: %s", exc.one_line())
        return exc.exit_code
    trio.run(serve_daemon, sock, store)
    return 0


async def serve_daemon(sock: socket.socket, store: SecretStore) -> None:
    """Answer the daemon's requests on ``sock`` until it closes its end (or SIGTERM)."""
    link = LineLink(trio.socket.from_stdlib_socket(sock))
    try:
        async with LocalFetcher(store) as fetcher, trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_sigterm, nursery.cancel_scope)
            while True:
                try:
                    message = await link.receive()
                except ProtocolError as exc:
                    log.error("token fetcher: %s; exiting", exc.one_line())
                    break
                except OSError:
                    break
                if message is None:
                    break
                nursery.start_soon(_answer, fetcher, link, message)
            # Cancels everything except the shielded part of a refresh-token exchange, which completes.
            nursery.cancel_scope.cancel()
    finally:
        link.close()


async def _stop_on_sigterm(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()
            return


async def _answer(fetcher: LocalFetcher, link: LineLink, message: dict[str, Any]) -> None:
    try:
        reply = await _dispatch(fetcher, message)
    except AadhelperError as exc:
        reply = protocol.error_reply(exc.to_wire())
    except Exception:  # a bug must cost one request, not the fetcher
        log.exception("internal error in the token fetcher")
        reply = protocol.error_reply(AadhelperError("internal error while fetching a token",
                                                    hint="see the daemon's log").to_wire())
    reply["id"] = message.get("id")
    with contextlib.suppress(OSError, trio.ClosedResourceError):
        await link.send(reply)


async def _dispatch(fetcher: LocalFetcher, message: dict[str, Any]) -> dict[str, Any]:
    op = message.get("op")
    if op == "acquire":
        scopes = scopes_from_wire(message.get("scopes"))
        profile = profile_from_wire(message.get("profile"), scopes)
        response = await fetcher.source(profile).acquire(scopes)
        return protocol.ok_reply(token=token_to_wire(response.token))
    if op == "login_required":
        name = message.get("profile")
        if not isinstance(name, str):
            raise ProtocolError("login_required without a profile name")
        error = await fetcher.login_required(name)
        return protocol.ok_reply(login_required=error.to_wire() if error is not None else None)
    if op == "unsaved_sign_ins":
        return protocol.ok_reply(profiles=list(await fetcher.unsaved_sign_ins()))
    raise ProtocolError(f"the token fetcher has no operation {op!r}")


if __name__ == "__main__":
    raise SystemExit(main())
