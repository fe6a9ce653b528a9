"""Faults of the credential kinds and surfaces of issues 12 and 13: federated token sources, IMDS, and the
managed-identity endpoint of ``aadhelper exec``.

* **Federated** (:class:`FederatedCase`): a profile whose token command hangs or prints garbage, or whose token
  file is deleted, when its refresh comes (the same timeline as every authority case: the old token served while
  it has its minimum validity, then one line, then the backoff). The requests counted are what the peers saw: each
  run of the token command (it logs them) plus the authority's token requests (none should come: nothing that is
  not a JWT is posted); for the deleted file, which no peer can count, the daemon's own count.
* **IMDS** (:class:`ImdsCase`): a managed-identity profile whose simulated IMDS answers 429 with Retry-After,
  500, or never, counted by the IMDS itself (by the daemon when it never answers: the IMDS records a request
  when it answers).
* **exec endpoint** (:class:`ExecCase`): ``aadhelper exec`` runs :mod:`.exec_child`, an SDK-like load on its
  endpoint, under a slowloris (300 connections dripping a request head, more than its limit) or as 200
  concurrent keep-alive connections while the daemon's token is invalidated every 1.5 s (so the 200 meet
  refreshes); the "client saw" column is the child's line: every SDK request served within ``measure.PROMPT``.
  With the refreshes, the authority may see one request per invalidation (single flight across the 200
  connections and the pollers).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final, Literal

from ... import client
from ...errors import AadhelperError
from ..daemon_process import DaemonProcess
from ..faults import Fault
from ..federation import OidcIssuer
from ..managed_identity import ENDPOINT, SimulatedManagedIdentity
from .authority_cases import FOR_EVER, LIFETIME, MIN_VALID, AuthorityCase
from .base import SHARED, Case, Shared
from .measure import Background, CliRun, Result, requests_since, run_cli
from .socket_cases import WINDOW, SocketCase
from .world import TENANT, FaultWorld

ISSUER: Final = "https://oidc.fault-suite.example/"
SUBJECT: Final = "system:serviceaccount:fault:suite"
#: The token command: logs each run (Unix time) and does what the ``mode`` file next to it says.
TOKEN_COMMAND: Final = """#!/bin/sh
dir=$(dirname "$0")
date +%s.%N >> "$dir/runs"
case $(cat "$dir/mode") in
  ok) cat "$dir/token" ;;
  hang) exec sleep 600 ;;
  *) echo '<html><body>503 Service Unavailable</body></html>' ;;
esac
"""
FederatedFault = Literal["command hangs", "command prints garbage", "token file deleted"]


class FederatedCase(AuthorityCase):
    """A federated profile whose assertion source breaks when its refresh comes (module docstring)."""

    stores_secret = False

    def __init__(self, fault: FederatedFault) -> None:
        super().__init__(f"federated: {fault}")
        self.breakage = fault
        self.folder = Path()
        self._saved = ""  # the deleted token file's content, put back by repair()

    @property
    def counted_by_peer(self) -> bool:
        return self.breakage != "token file deleted"

    def prepare(self, world: FaultWorld) -> None:
        self.authority = world.authority(token_lifetime=LIFETIME)
        issuer = OidcIssuer(ISSUER)
        self.authority.publish_issuer(issuer.url, issuer.jwks())
        self.folder = world.root / "federated" / self.profile
        self.folder.mkdir(parents=True, mode=0o700)
        (self.folder / "token").write_text(issuer.token(SUBJECT))
        (self.folder / "mode").write_text("ok")
        if self.breakage == "token file deleted":
            options: dict[str, object] = {"token_file": str(self.folder / "token")}
        else:
            script = self.folder / "token-command"
            script.write_text(TOKEN_COMMAND)
            script.chmod(0o700)
            options = {"token_command": [str(script)]}
        client_id = world.add_kind_profile(SHARED, self.profile, "federated", options, authority=self.authority,
                                           min_valid=MIN_VALID)
        assert client_id is not None
        self.authority.add_federated_credential(client_id, issuer=issuer.url, subject=SUBJECT)

    def inject(self) -> None:
        if self.breakage == "token file deleted":
            self._saved = (self.folder / "token").read_text()
            (self.folder / "token").unlink()
        else:
            (self.folder / "mode").write_text("hang" if self.breakage == "command hangs" else "garbage")

    def request_times(self, since: float) -> list[float]:
        assert self.authority is not None
        runs = self.folder / "runs"
        ran = [float(line) for line in runs.read_text().split()] if runs.exists() else []
        return sorted([t for t in ran if t >= since] + requests_since(self.authority, since))

    def repair(self) -> None:
        if self.breakage == "token file deleted":
            (self.folder / "token").write_text(self._saved)
        (self.folder / "mode").write_text("ok")


class ImdsCase(AuthorityCase):
    """A managed-identity profile whose IMDS fails when the refresh comes; the IMDS counts the requests."""

    stores_secret = False

    def __init__(self, name: str, fault: Callable[[], Fault], *, answers: bool = True) -> None:
        super().__init__(name, fault)
        self.answers = answers
        self.imds: SimulatedManagedIdentity | None = None

    @property
    def counted_by_peer(self) -> bool:
        return self.answers

    def prepare(self, world: FaultWorld) -> None:
        self.authority = world.authority()  # signs the identity's tokens; the daemon never asks it
        self.imds = SimulatedManagedIdentity(self.authority, source="imds", tenant=TENANT, token_lifetime=LIFETIME)
        self.imds.start()
        world.adopt(self.imds)
        world.add_kind_profile(SHARED, self.profile, "managed_identity",
                               {"source": "imds", "endpoint": self.imds.endpoint}, min_valid=MIN_VALID)

    def inject(self) -> None:
        assert self.imds is not None and self.fault is not None
        self.imds.inject(self.fault(), times=FOR_EVER)

    def request_times(self, since: float) -> list[float]:
        assert self.imds is not None
        return [r.time for r in self.imds.requests if r.time >= since]

    def repair(self) -> None:
        assert self.imds is not None
        self.imds.clear_faults()


#: How often the concurrent exec case invalidates the daemon's token (seconds).
INVALIDATE_EVERY: Final = 1.5
CHILD: Final = "aadhelper.testing.fault_suite.exec_child"


class ExecCase(SocketCase):
    """``aadhelper exec`` of the cached profile running :mod:`.exec_child` (module docstring)."""

    def __init__(self, mode: Literal["slowloris", "concurrent"]) -> None:
        name = ("exec endpoint: slowloris (300 connections)" if mode == "slowloris" else
                "exec endpoint: 200 SDK connections while refreshing")
        super().__init__(name, self._invalidate if mode == "concurrent" else _nothing)
        self.mode = mode
        self.invalidated = 0
        self._exec: Background | None = None

    def _invalidate(self, path: str, stop: threading.Event) -> str:
        """Drop the cached profile's token every INVALIDATE_EVERY seconds: the next requests meet a refresh."""
        while not stop.wait(INVALIDATE_EVERY):
            try:
                client.invalidate(f"{self.profile}-a", socket_path=path)
                self.invalidated += 1
            except AadhelperError:
                pass
        return f"token invalidated {self.invalidated} times"

    def attack(self, world: FaultWorld, daemon: DaemonProcess, env: dict[str, str], cold: str,
               result: Result) -> tuple[CliRun, DaemonProcess]:
        argv = ["exec", f"{self.profile}-a", "--", sys.executable, "-m", CHILD, self.mode, str(WINDOW)]
        self._exec = Background(lambda: run_cli(env, *argv))
        return super().attack(world, daemon, env, cold, result)

    def run(self, shared: Shared) -> Result:
        result = super().run(shared)
        if self._exec is not None:
            result.cli = self._exec.result()
        if self.mode == "concurrent":
            # Single flight: one authority request per invalidation at most (the first token came before).
            result.bound = self.invalidated + 1
        return result


def _nothing(path: str, stop: threading.Event) -> str:
    stop.wait()
    return ""


def identity_cases() -> list[Case]:
    """The federated and IMDS cases (run with the authority cases, in the shared daemon)."""
    return [
        FederatedCase("command hangs"),
        FederatedCase("command prints garbage"),
        FederatedCase("token file deleted"),
        ImdsCase("IMDS 429 Retry-After 60 s", lambda: Fault.throttle(60, endpoint=ENDPOINT)),
        ImdsCase("IMDS HTTP 500", lambda: Fault.status(500, endpoint=ENDPOINT)),
        ImdsCase("IMDS accepts, never answers", lambda: Fault.hang(endpoint=ENDPOINT), answers=False),
    ]


def exec_cases() -> list[Case]:
    """The exec endpoint cases (run alone at the end, as the socket floods)."""
    return [ExecCase("slowloris"), ExecCase("concurrent")]


__all__ = ["ExecCase", "FederatedCase", "ImdsCase", "exec_cases", "identity_cases"]
