"""The fault suite's private world: a temporary home, simulated authorities, profiles, daemon processes.

Used by the cases of :mod:`aadhelper.testing.fault_suite` (the table that ``scripts/faults`` prints and
``tests/test_fault_suite.py`` asserts). Everything lives under one temporary folder (config files, sockets,
logs) and in the keyring of the private D-Bus session ``scripts/with-secret-service`` provides; profiles are
named ``fs-*`` and their keyring entries are deleted on close. Every authority listens on 127.0.0.1 only and
speaks HTTPS with a certificate from the world's own throwaway CA (trustme, a test extra), which every profile
names as its ``ca_bundle``.

Each case gets its own authority (a fault queue is per authority, so cases run side by side without taking
each other's faults) and its own profiles; cases that break the whole daemon (its config file, its processes)
get a daemon of their own.
"""

from __future__ import annotations

import secrets
import shutil
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from pathlib import Path
from types import TracebackType
from typing import Any

from ... import client, config_edit, protocol
from ...errors import AadhelperError
from ...secret_chunks import CLIENT_SECRET, REFRESH_TOKEN
from ...secret_store import KeyringSecretStore
from ...tokens import Secret
from ..authority import SimulatedAuthority
from ..daemon_process import DaemonProcess
from ..directory import GRAPH
from ..isolated_home import VENV_BIN, isolated_home

AADHELPER = str(VENV_BIN / "aadhelper")
GIT_HELPER = str(VENV_BIN / "git-credential-aadhelper")
TENANT = "contoso.onmicrosoft.com"
SCOPE = f"{GRAPH}/.default"
#: The public client and the user of ``user`` profiles (sign-ins with refresh tokens).
USER_CLIENT = "22222222-0000-0000-0000-000000000001"
USER = "me@contoso.onmicrosoft.com"
#: Environment variables of our own process that children must not inherit.
_DROPPED_PREFIXES = ("PYTHON", "AADHELPER_", "GIT_", "AZURE_", "SSL_CERT")


class FaultWorld:
    """A temporary home; a context manager that stops every daemon and authority and removes all of it."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="aadfaults-"))
        self.store = KeyringSecretStore()
        self._lock = threading.Lock()
        self._authorities: list[SimulatedAuthority] = []
        self._daemons: list[DaemonProcess] = []
        self._profiles: list[str] = []
        self._servers: list[Any] = []
        #: Variables for the daemon of one config only (e.g. a D-Bus session of its own).
        self.extra_env: dict[str, dict[str, str]] = {}
        import trustme  # a test extra: only the suite needs it

        self.ca = trustme.CA()
        self.ca_bundle = self.root / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_bundle))
        self.env: dict[str, str] = isolated_home(self.root)

    def daemon_env(self, config: str) -> dict[str, str]:
        """The environment of a daemon (and its clients) using the config file and socket called ``config``."""
        return {**self.env, "AADHELPER_CONFIG": str(self.config_path(config)),
                "AADHELPER_SOCKET": str(self.root / "run" / f"{config}.sock"), **self.extra_env.get(config, {})}

    def config_path(self, config: str) -> Path:
        return self.root / "config" / f"{config}.toml"

    def __enter__(self) -> FaultWorld:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # Side by side: a few dozen daemons and authorities each take a moment to stop.
        stops = [threading.Thread(target=_quietly, args=(daemon.stop, 5.0)) for daemon in self._daemons]
        stops += [threading.Thread(target=_quietly, args=(authority.stop,)) for authority in self._authorities]
        stops += [threading.Thread(target=_quietly, args=(server.stop,)) for server in self._servers]
        for thread in stops:
            thread.start()
        for thread in stops:
            thread.join()
        for name in self._profiles:
            for kind in (CLIENT_SECRET, REFRESH_TOKEN):
                with suppress(AadhelperError):
                    self.store.delete(name, kind)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- authorities, profiles, daemons ------------------------------------------------------------------

    def server_context(self, ca: Any = None) -> ssl.SSLContext:
        """A server TLS context with a certificate for 127.0.0.1 from ``ca`` (a ``trustme.CA``; the world's own
        by default)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        (ca or self.ca).issue_cert("127.0.0.1").configure_cert(context)
        return context

    def authority(self, *, token_lifetime: int = 3600, ssl_context: ssl.SSLContext | None = None
                  ) -> SimulatedAuthority:
        """A started simulated HTTPS authority on loopback (certificate from ``ssl_context``, else from the
        world's CA) with our tenant."""
        authority = SimulatedAuthority(token_lifetime=token_lifetime,
                                       ssl_context=ssl_context or self.server_context())
        authority.start()
        authority.add_tenant(TENANT)
        with self._lock:
            self._authorities.append(authority)
        return authority

    def add_profile(self, config: str, name: str, authority: SimulatedAuthority, *, min_valid: int | None = None,
                    ca_bundle: str | None = None, git_url: str | None = None, credential: str = "client_secret",
                    store: bool = True) -> str:
        """Profile ``name`` in config ``config``: an app of its own at ``authority``, its secret in the keyring;
        ``ca_bundle`` is the world's CA unless given. A ``user`` profile uses the authority's public client
        :data:`USER_CLIENT` and gets no secret (the caller signs in and stores the refresh token). Returns the
        client secret (stored in the keyring unless ``store`` is false)."""
        client_id = f"app-{name}" if credential == "client_secret" else USER_CLIENT
        secret = secrets.token_urlsafe(24)
        if credential == "client_secret":
            authority.add_client(client_id, tenant=TENANT, secret=secret)
        with self._lock:  # config_edit rewrites the whole file: one writer at a time
            config_edit.add_profile(str(self.config_path(config)), name, tenant=TENANT, client_id=client_id,
                                    scopes=[SCOPE], authority=authority.url, min_valid=min_valid,
                                    credential=credential,
                                    ca_bundle=ca_bundle or str(self.ca_bundle),
                                    git_urls=[git_url] if git_url else (), environ={})
            self._profiles.append(name)
        if credential == "client_secret" and store:
            self.store.set(name, CLIENT_SECRET, Secret(secret))
        return secret

    def add_kind_profile(self, config: str, name: str, credential: str, options: Mapping[str, object], *,
                         authority: SimulatedAuthority | None = None, min_valid: int | None = None) -> str | None:
        """Profile ``name`` of a credential kind with no secret in the keyring (``federated``: an app of its own at
        ``authority``, whose client id is returned; ``managed_identity``: no app, no authority), with the kind's
        ``options`` (``token_file``, ``source``...)."""
        client_id = f"app-{name}" if authority is not None else None
        if authority is not None and client_id is not None:
            authority.add_client(client_id, tenant=TENANT)
        with self._lock:
            config_edit.add_profile(str(self.config_path(config)), name, tenant=TENANT if client_id else None,
                                    client_id=client_id, scopes=[SCOPE],
                                    authority=authority.url if authority is not None else None,
                                    min_valid=min_valid, credential=credential,
                                    ca_bundle=str(self.ca_bundle) if authority is not None else None,
                                    environ={}, options=options)
            self._profiles.append(name)
        return client_id

    def adopt(self, server: Any) -> None:
        """Stop ``server`` (anything with ``stop()``: an identity endpoint) with the world."""
        with self._lock:
            self._servers.append(server)

    def add_profiles(self, config: str, names: Iterable[str], authority: SimulatedAuthority) -> None:
        for name in names:
            self.add_profile(config, name, authority)

    def daemon(self, config: str) -> DaemonProcess:
        """A started daemon (``-v``, log in the state folder) on config ``config``; stopped with the world."""
        daemon = DaemonProcess(self.daemon_env(config), self.root / "state" / f"daemon-{config}.log", args=["-v"])
        with self._lock:
            self._daemons.append(daemon)
        return daemon.start()

    @staticmethod
    def token(daemon: DaemonProcess, profile: str, *, timeout: float = client.DEFAULT_TIMEOUT) -> str:
        """The daemon's token for ``profile`` (through the thin client, as ``aadhelper token`` asks for it)."""
        reply = client.call(protocol.request("token", profile=profile), socket_path=daemon.socket_path,
                            timeout=timeout)
        token = reply.get("access_token")
        if not isinstance(token, str):
            raise AssertionError("malformed token reply from the daemon")
        return token


def _quietly(stop: Callable[..., object], *args: object) -> None:
    with suppress(Exception):
        stop(*args)
