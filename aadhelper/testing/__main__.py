"""``python -m aadhelper.testing``: run a simulated Entra ID authority (and a protected resource) until Ctrl-C.

    echo "$SECRET" | python -m aadhelper.testing --tenant contoso.onmicrosoft.com --client APP_ID \\
        --client-secret-stdin --lifetime 60 --tls-cert cert.pem --tls-key key.pem --serve-resource

prints the authority URL on the first line of stdout (the resource URL on the second, with --serve-resource),
then serves. Secrets are read from stdin, never from the command line. Device-code sign-ins are approved by
opening ``URL/devicelogin?user_code=CODE`` (e.g. with curl).
"""

from __future__ import annotations

import argparse
import logging
import signal
import ssl
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from types import FrameType

from ..errors import AadhelperError, ConfigError, UsageError
from .authority import SimulatedAuthority
from .directory import GRAPH
from .resource import ProtectedResource

PROG = "python -m aadhelper.testing"


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line and exit 2, as the CLI's (not imported: the kit stays independent of it)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message, hint=f"see `{self.prog} --help`")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG,
                     description="Run a simulated Entra ID authority on a loopback port until Ctrl-C.")
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    add("--port", type=int, default=0, help="port (default: any free port)")
    add("--tenant", default="contoso.onmicrosoft.com", help="tenant domain or GUID (default %(default)s)")
    add("--client", action="append", default=[], metavar="ID", help="a confidential app (secret from stdin)")
    add("--client-secret-stdin", action="store_true", help="read the --client apps' secret from one stdin line")
    add("--public-client", action="append", default=[], metavar="ID",
        help="a public app, for device-code and browser sign-in")
    add("--user", action="append", default=[], metavar="UPN", help="a user who can sign in (default: user@TENANT)")
    add("--resource", action="append", default=[], metavar="URI",
        help=f"an API the apps may get tokens for (default {GRAPH})")
    add("--lifetime", type=int, default=3600, metavar="S", help="access token lifetime (default 3600)")
    add("--refresh-in", type=int, metavar="S", help="send refresh_in with every token")
    add("--device-code-interval", type=int, default=5, metavar="S", help="device-code polling interval")
    add("--refresh-token-reuse", choices=("revoke", "allow"), default="revoke",
        help="what presenting a used refresh token does (default revoke; Entra: allow)")
    add("--refresh-token-reuse-grace", type=float, default=0.0, metavar="S",
        help="with revoke: seconds the latest used refresh token may be presented again (default 0)")
    add("--tls-cert", metavar="FILE", help="PEM certificate (chain) to serve HTTPS with")
    add("--tls-key", metavar="FILE", help="PEM private key, when not in --tls-cert")
    add("--serve-resource", action="store_true", help="also run a protected resource for the first --resource")
    add("-v", "--verbose", action="store_true", help="log every request on stderr")
    return parser


def serve(args: argparse.Namespace) -> int:
    if args.client and not args.client_secret_stdin:
        raise UsageError("a --client app needs its secret: pass --client-secret-stdin and write it to stdin")
    if not (args.client or args.public_client):
        raise UsageError("register at least one app with --client or --public-client")
    secret = sys.stdin.readline().rstrip("\r\n") if args.client_secret_stdin else None
    if args.client_secret_stdin and not secret:
        raise UsageError("--client-secret-stdin: stdin held no secret")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(message)s")
    ssl_context = _tls(args.tls_cert, args.tls_key) if args.tls_cert else None
    resources = args.resource or [GRAPH]

    authority = SimulatedAuthority(ssl_context=ssl_context, host=args.host, port=args.port,
                                   token_lifetime=args.lifetime, refresh_in=args.refresh_in)
    authority.device_code_interval = args.device_code_interval
    authority.refresh_token_reuse = args.refresh_token_reuse
    authority.refresh_token_reuse_grace = args.refresh_token_reuse_grace
    try:
        authority.add_tenant(args.tenant)
        for client_id in args.client:
            authority.add_client(client_id, tenant=args.tenant, secret=secret, resources=resources)
        for client_id in args.public_client:
            authority.add_client(client_id, tenant=args.tenant, public=True, resources=resources)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for user in args.user or [f"user@{args.tenant}"]:
        authority.add_user(user, tenant=args.tenant)

    signal.signal(signal.SIGTERM, _interrupt)
    with ExitStack() as stack:
        try:
            stack.enter_context(authority)
            print(authority.url, flush=True)
            if args.serve_resource:
                resource = stack.enter_context(ProtectedResource(authority, ssl_context=ssl_context,
                                                                 audience=resources[0], host=args.host))
                print(resource.url, flush=True)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
        sys.stderr.write(f"simulated Entra ID for tenant {args.tenant} at {authority.url}; Ctrl-C stops it\n")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


def _tls(cert: str, key: str | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except OSError as exc:  # ssl.SSLError included
        raise ConfigError(f"cannot load the TLS certificate {cert!r}: {exc.strerror or exc}") from None
    return context


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; expected failures become one stderr line and their exit code, never a traceback."""
    try:
        return serve(build_parser().parse_args(argv))
    except AadhelperError as exc:
        sys.stderr.write(f"{PROG}: {exc.one_line()}\n")
        return exc.exit_code
    except KeyboardInterrupt:  # before serving, e.g. while reading the secret from stdin
        return 130


if __name__ == "__main__":
    sys.exit(main())
