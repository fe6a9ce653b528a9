"""The bench's private world: a temporary home, a simulated authority, profiles with secrets, daemon processes.

Everything lives under one temporary folder (config files, sockets, logs, ``HOME`` for git) and in the
keyring of the private D-Bus session ``scripts/with-secret-service`` provides; profiles are named
``bench-*`` and their keyring entries are deleted on close, so nothing of the user's is read or changed.
Child processes get a clean environment: no ``PYTHON*`` variables (``PYTHONDONTWRITEBYTECODE`` would make
every start compile the package from source, which no installed copy does), the venv's ``bin`` first on
``PATH``, and autostart off.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType

from aadhelper import client, config_edit
from aadhelper.errors import AadhelperError
from aadhelper.secret_chunks import CERTIFICATE
from aadhelper.secret_store import KeyringSecretStore
from aadhelper.testing import GRAPH, SimulatedAuthority
from aadhelper.testing.daemon_process import DaemonProcess
from aadhelper.testing.isolated_home import VENV_BIN, isolated_home
from aadhelper.tokens import Secret

AADHELPER = str(VENV_BIN / "aadhelper")
TENANT = "contoso.onmicrosoft.com"
SCOPE = f"{GRAPH}/.default"
#: Environment variables of the bench's own process that children must not inherit.
_DROPPED_PREFIXES = ("PYTHON", "AADHELPER_", "GIT_", "AZURE_")


class World:
    """A temporary home with one simulated authority; a context manager that removes all of it."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="aadbench-"))
        self.authority = SimulatedAuthority()
        self._authorities = [self.authority]
        self.store = KeyringSecretStore()
        self._profiles: list[str] = []
        self._daemons: list[Daemon] = []
        self.env: dict[str, str] = isolated_home(self.root)
        self.env.update(self.daemon_env("main"))

    def daemon_env(self, name: str) -> dict[str, str]:
        """The variables that point a daemon and its clients at the config and socket called ``name``."""
        return {"AADHELPER_CONFIG": str(self.root / "config" / f"{name}.toml"),
                "AADHELPER_SOCKET": str(self.root / "run" / f"{name}.sock")}

    def file(self, name: str) -> Path:
        return self.root / name

    # -- lifecycle -------------------------------------------------------------------------------------

    def __enter__(self) -> World:
        self._start(self.authority)
        return self

    def add_authority(self, *, token_lifetime: int) -> SimulatedAuthority:
        """Another simulated authority, e.g. one issuing short-lived tokens; stopped with the world."""
        authority = SimulatedAuthority(token_lifetime=token_lifetime)
        self._authorities.append(authority)
        self._start(authority)
        return authority

    @staticmethod
    def _start(authority: SimulatedAuthority) -> None:
        authority.start()
        authority.add_tenant(TENANT)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for daemon in self._daemons:
            daemon.stop()
        for authority in self._authorities:
            authority.stop()
        for name in self._profiles:
            for kind in ("client_secret", CERTIFICATE):
                with suppress(AadhelperError):
                    self.store.delete(name, kind)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- profiles and daemons --------------------------------------------------------------------------

    def add_profiles(self, names: Iterable[str], *, config: str = "main", min_valid: int | None = None,
                     git_url: str | None = None, authority: SimulatedAuthority | None = None) -> None:
        """Profiles (one app registration each) in config ``config``, with their secrets in the keyring."""
        path = self.daemon_env(config)["AADHELPER_CONFIG"]
        authority = authority or self.authority
        for name in names:
            client_id = f"app-{name}"
            secret = secrets.token_urlsafe(24)
            authority.add_client(client_id, tenant=TENANT, secret=secret)
            config_edit.add_profile(path, name, tenant=TENANT, client_id=client_id, scopes=[SCOPE],
                                    authority=authority.url, min_valid=min_valid,
                                    git_urls=[git_url] if git_url else (), environ={})
            self.store.set(name, "client_secret", Secret(secret))
            self._profiles.append(name)

    def add_certificate_profile(self, name: str, *, config: str) -> None:
        """A profile (its own app registration) proving itself with a certificate, stored in the keyring."""
        from aadhelper.certificates import load_certificate
        from aadhelper.testing.certificates import make_client_certificate

        material = make_client_certificate()
        client_id = f"app-{name}"
        self.authority.add_client(client_id, tenant=TENANT)
        self.authority.add_client_certificate(client_id, material.certificate_pem)
        config_edit.add_profile(self.daemon_env(config)["AADHELPER_CONFIG"], name, tenant=TENANT,
                                client_id=client_id, scopes=[SCOPE], authority=self.authority.url,
                                credential="certificate", environ={})
        self.store.set(name, CERTIFICATE, load_certificate(material.pem(), source="the bench's").to_pem())
        self._profiles.append(name)

    def authority_requests(self, profile: str, authority: SimulatedAuthority | None = None) -> list[float]:
        """Arrival times of the token requests an authority has received for ``profile``'s app."""
        return [r.time for r in (authority or self.authority).requests
                if r.endpoint == "token" and r.client_id == f"app-{profile}"]

    def daemon(self, config: str = "main") -> Daemon:
        daemon = Daemon({**self.env, **self.daemon_env(config)}, self.root / "state" / f"daemon-{config}.log")
        self._daemons.append(daemon)
        return daemon

    @contextmanager
    def running_daemon(self, config: str = "main") -> Iterator[Daemon]:
        daemon = self.daemon(config).start()
        try:
            yield daemon
        finally:
            daemon.stop()


class Daemon(DaemonProcess):
    """``aadhelper daemon`` as a child process, with a shortcut for asking it for a token."""

    def token(self, profile: str) -> dict[str, object]:
        return client.get_token(profile, socket_path=self.socket_path)
