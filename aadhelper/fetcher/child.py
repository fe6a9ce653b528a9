"""The token fetcher process, started by the daemon only: forked at its start, or ``python -m
aadhelper.fetcher.child --fd N --build ID`` when a fetcher had to be started again.

It reads fetch requests from the socket the daemon passed, answers each with a token or an error (each request
runs on its own, so a slow authority for one profile holds up no other), runs at idle CPU priority
(:func:`aadhelper.process_setup.run_at_idle_priority`: the daemon's serving loop always goes first), and exits
when the daemon closes its end or sends SIGTERM. Before exiting it lets a refresh-token exchange that is under
way finish, so that a rotated refresh token reaches the keyring (:mod:`aadhelper.grants.refresh_token`); that is
also why a SIGKILL of the daemon loses no rotation. A rotated refresh token the keyring refused so far gets one
more try, and is logged at ERROR level if it is lost
(:meth:`aadhelper.grants.refresh_token.SignIns.store_before_exit`).
Ctrl-C in a terminal goes to the daemon, which then closes the link; the fetcher ignores SIGINT.

Its first line is an unasked ``hello`` (:mod:`aadhelper.fetcher.wire`, which declares every message of this
channel); a started one whose :func:`~aadhelper.fetcher.wire.build_id` differs from the daemon's (``--build``: the
package was upgraded under the running daemon) sends a failed ``hello`` and exits instead.
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

from .. import protocol
from ..config import LOG_LEVELS
from ..errors import AadhelperError, ConfigError, ProtocolError
from ..process_setup import configure_logging, harden_process, run_at_idle_priority, set_process_name
from ..secret_store import SecretStore, open_secret_store
from . import wire
from .local import LocalFetcher
from .wire import LineLink, profile_from_wire, scopes_from_wire, strings_from_wire, token_to_wire

log = logging.getLogger("aadhelper.fetcher")


def main(argv: list[str] | None = None) -> int:
    """The executed fetcher (the daemon starts one this way when the first one stopped)."""
    parser = argparse.ArgumentParser(prog="python -m aadhelper.fetcher.child",
                                     description="aadhelper's token fetcher (started by the daemon)")
    parser.add_argument("--fd", type=int, required=True, help="the socket to the daemon")
    parser.add_argument("--build", required=True, help="the daemon's build id (the fetcher must be the same)")
    parser.add_argument("--secret-store", choices=("keyring", "memory"))
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="the daemon's log level")
    args = parser.parse_args(argv)
    return run(socket.socket(fileno=args.fd), secret_store=args.secret_store, verbose=args.verbose,
               log_level=args.log_level, daemon_build=args.build)


def preload(*, certificates: bool = True) -> None:
    """Import what fetching needs. The daemon does this before it forks the fetcher, which then starts with every
    module loaded (instead of spending ~0.2 s importing them after the daemon's own imports). ``certificates``
    False: no profile uses a certificate at start, so that source (and cryptography's parts it needs) is imported
    only if one is added later (~2 ms less on every start)."""
    from .. import grants  # noqa: F401  (httpx)
    from ..grants import client_credentials, managed_identity, refresh_token  # noqa: F401

    if certificates:
        from ..grants import certificate  # noqa: F401


def run(sock: socket.socket, *, secret_store: str | None, verbose: bool, log_level: str = "info",
        daemon_build: str | None = None) -> int:
    """The fetcher process's life, forked (``daemon_build`` None: the daemon's own code) or executed: answer on
    ``sock`` until the daemon hangs up, logging at the daemon's ``log_level``."""
    configure_logging(verbose, log_level)
    harden_process()
    set_process_name("aadhelper-fetch")
    priority = run_at_idle_priority()  # before trio starts threads: they inherit it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # What a test (or a reader of the log) waits for: the process has its name and priority from here on.
    log.debug("token fetcher running (pid %d, %s)", os.getpid(), priority)
    if daemon_build is not None and daemon_build != wire.build_id():
        refused = AadhelperError(
            f"aadhelper was upgraded while the daemon ran (daemon {daemon_build}, installed {wire.build_id()}): "
            "the new token fetcher cannot serve the old daemon", hint="restart the daemon "
            "(`systemctl --user restart aadhelper`, or stop it and let the next client start it)")
        log.error("token fetcher: %s", refused.one_line())
        _say_hello(sock, wire.hello_refused(refused))
        return 3
    try:
        store = open_secret_store(secret_store)
    except ConfigError as exc:
        log.error("token fetcher: %s", exc.one_line())
        return exc.exit_code
    if not _say_hello(sock, wire.hello(wire.build_id())):
        return 0
    trio.run(serve_daemon, sock, store)
    return 0


def _say_hello(sock: socket.socket, message: dict[str, Any]) -> bool:
    """Send the first line; False when the daemon is already gone (it failed to start: its log says why)."""
    try:
        sock.sendall(protocol.encode(message))
    except OSError:
        log.debug("token fetcher: the daemon is gone before it was greeted; exiting")
        return False
    return True


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
    if op == wire.ACQUIRE:
        scopes = scopes_from_wire(message.get("scopes"))
        profile = profile_from_wire(message.get("profile"), scopes)
        response = await fetcher.source(profile).acquire(scopes)
        return protocol.ok_reply(token=token_to_wire(response.token))
    if op == wire.SIGN_IN_STATES:
        logins, unsaved = await fetcher.sign_in_states(strings_from_wire(message.get("profiles"), "profile names"))
        return wire.sign_in_states_reply(logins, unsaved)
    if op == wire.CREDENTIAL_STATES:
        wires = message.get("profiles")
        if not isinstance(wires, list):
            raise ProtocolError("credential_states without a list of profiles")
        profiles = [profile_from_wire(each, ()) for each in wires]
        return protocol.ok_reply(states=await fetcher.credential_states(profiles))
    raise ProtocolError(f"the token fetcher has no operation {op!r}")


if __name__ == "__main__":
    raise SystemExit(main())
