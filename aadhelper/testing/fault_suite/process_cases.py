"""Process faults: kill -9 and SIGSTOP of the daemon's fetcher, kill -9 of the daemon, during a refresh-token
rotation or not."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import threading
import time
import urllib.parse
import urllib.request
from typing import Any, Literal

from ...secret_chunks import REFRESH_TOKEN
from ...tokens import Secret
from ..authority import SimulatedAuthority
from ..daemon_process import DaemonProcess
from ..faults import Fault
from ..grants import DEVICE_CODE_GRANT
from .base import Case, Shared, TwoProfileCase
from .measure import (
    Background,
    CliRun,
    Group,
    KnownDefect,
    Poller,
    Result,
    alive,
    backoff_bound,
    requests_since,
    run_cli,
)
from .world import SCOPE, TENANT, USER, USER_CLIENT, FaultWorld


class FetcherCase(TwoProfileCase):
    """A process fault of the daemon's fetcher or of the daemon itself."""

    def __init__(self, name: str, how: Literal["kill idle", "kill mid-request", "stop", "kill daemon"], *,
                 known_defect: KnownDefect | None = None) -> None:
        super().__init__(name, "process")
        self.how, self.known_defect = how, known_defect
        self.stopped: int | None = None

    def attack(self, world: FaultWorld, daemon: DaemonProcess, env: dict[str, str], cold: str,
               result: Result) -> tuple[CliRun, DaemonProcess]:
        assert self.authority is not None
        fetcher = daemon.fetcher_pid()
        if fetcher is None:
            raise RuntimeError("the daemon runs no fetcher process")
        if self.how == "kill idle":
            os.kill(fetcher, signal.SIGKILL)
            result.expected_exits = frozenset({0})
            return run_cli(env, "token", cold), daemon
        if self.how == "stop":
            os.kill(fetcher, signal.SIGSTOP)
            self.stopped = fetcher
            cli = Background(lambda: run_cli(env, "token", cold))
            time.sleep(self.timing.stopped)
            self.restore(world)
            result.expected_exits = frozenset({0, 7})
            result.note = f"fetcher stopped {self.timing.stopped:.0f} s"
            return cli.result(), daemon
        release, reached = threading.Event(), threading.Event()
        self.authority.inject(Fault.hold(release, reached=reached))
        cli = Background(lambda: run_cli(env, "token", cold))
        try:
            if not reached.wait(20):
                raise RuntimeError("the request never reached the authority")
            if self.how == "kill mid-request":
                os.kill(fetcher, signal.SIGKILL)
                # The fetch died with the process: one line saying so (exit 1, by design), or a retry's outcome.
                result.expected_exits = frozenset({0, 1, 7})
            else:
                daemon.kill()
                result.expected_exits = frozenset({8})
        finally:
            release.set()
        run = cli.result()
        if self.how == "kill daemon":
            daemon = world.daemon(self.config)
            # Tokens live only in the daemon's memory: a new daemon fetches them again (by design).
            result.accepted_loss.append("cached tokens (in memory only, by design)")
            result.note = "daemon restarted"
        return run, daemon

    def restore(self, world: FaultWorld) -> None:
        if self.stopped is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.stopped, signal.SIGCONT)
            self.stopped = None


class RotationCase(Case):
    """kill -9 of the daemon (or its fetcher) while the authority's reply to a refresh-token refresh (which rotated
    the refresh token) is on its way, with or without the authority's reuse grace window (an authority that revokes
    the whole grant when a used refresh token comes back, as strict OAuth servers do).

    The daemon's death must lose nothing: its fetcher still receives the reply and stores the rotated token. The
    fetcher's death before the reply reaches it cannot be saved client-side without a grace window (the authority
    committed a rotation nobody received): that loss is shown as accepted, as tests/test_refresh_e2e.py pins it."""

    group: Group = "process"

    def __init__(self, name: str, *, grace: float, victim: Literal["daemon", "fetcher"] = "daemon",
                 known_defect: KnownDefect | None = None) -> None:
        self.name, self.grace, self.victim, self.known_defect = name, grace, victim, known_defect
        self.authority: SimulatedAuthority | None = None

    def prepare(self, world: FaultWorld) -> None:
        self.authority = world.authority()
        self.authority.refresh_token_reuse_grace = self.grace
        self.authority.add_client(USER_CLIENT, tenant=TENANT, public=True)
        self.authority.add_user(USER, tenant=TENANT)
        world.add_profile(self.profile, self.profile, self.authority, credential="user")
        world.store.set(self.profile, REFRESH_TOKEN, Secret(_device_sign_in(world, self.authority)))

    def run(self, shared: Shared) -> Result:
        world, authority = shared.world, self.authority
        assert authority is not None
        # The waiting client: the daemon's death (8); the fetcher's: one line saying the fetch died with it (1, by
        # design), or a retry's outcome: served with grace, else the revoked sign-in (6), or a failure (7).
        result = Result(self.name, self.group,
                        expected_exits=frozenset({8} if self.victim == "daemon" else {0, 1, 6, 7}))
        env = world.daemon_env(self.profile)
        daemon = world.daemon(self.profile)
        fetcher = daemon.fetcher_pid()
        since = time.time()
        release, reached = threading.Event(), threading.Event()
        authority.inject(Fault.hold_reply(release, reached=reached, grant_type="refresh_token"))
        cli = Background(lambda: run_cli(env, "token", self.profile))
        try:
            if not reached.wait(20):
                raise RuntimeError("the refresh never reached the authority")
            if self.victim == "daemon":
                daemon.kill()
            elif fetcher is not None:
                os.kill(fetcher, signal.SIGKILL)
        finally:
            release.set()
        result.cli = cli.result()
        if self.victim == "daemon":
            daemon = world.daemon(self.profile)
            result.accepted_loss.append("cached tokens (in memory only, by design)")
        with Poller(daemon, self.profile) as poller:
            time.sleep(shared.timing.observe)
        # The daemon refreshes with what the keyring holds: the rotated token, or the sign-in is lost.
        if not any(s.token for s in poller.samples):
            errors = {s.error for s in poller.samples if s.error}
            lost = f"the sign-in: {sorted(errors)[0] if errors else 'no answer'}"
            unavoidable = self.victim == "fetcher" and not self.grace
            (result.accepted_loss if unavoidable else result.lost).append(lost)
        result.bad_output = poller.bad_output()
        result.daemon_alive = alive(daemon)
        result.requests = len(requests_since(authority, since))
        result.window = time.time() - since
        result.bound = backoff_bound(result.window)
        result.note = f"reuse grace {self.grace:.0f} s"
        return result


def _device_sign_in(world: FaultWorld, authority: SimulatedAuthority) -> str:
    """Sign in as :data:`USER` the way ``aadhelper login`` would, directly over HTTPS; the refresh token."""
    context = ssl.create_default_context(cafile=str(world.ca_bundle))
    base = f"{authority.url}/{TENANT}/oauth2/v2.0"

    def post(url: str, form: dict[str, str]) -> dict[str, Any]:
        request = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(), method="POST")
        with urllib.request.urlopen(request, context=context, timeout=10) as reply:
            answer: dict[str, Any] = json.loads(reply.read())
            return answer

    started = post(f"{base}/devicecode", {"client_id": USER_CLIENT,
                                          "scope": f"{SCOPE} openid profile offline_access"})
    authority.approve(started["user_code"], user=USER)
    tokens = post(f"{base}/token", {"grant_type": DEVICE_CODE_GRANT, "client_id": USER_CLIENT,
                                    "device_code": started["device_code"]})
    return str(tokens["refresh_token"])


def process_cases() -> list[Case]:
    return [
        RotationCase("kill -9 daemon mid-refresh, rotation", grace=0.0),
        RotationCase("kill -9 daemon mid-refresh, rotation, grace", grace=60.0),
        RotationCase("kill -9 fetcher mid-refresh, rotation", grace=0.0, victim="fetcher"),
        RotationCase("kill -9 fetcher mid-refresh, rotation, grace", grace=60.0, victim="fetcher"),
        FetcherCase("kill -9 fetcher, idle", "kill idle"),
        FetcherCase("kill -9 fetcher mid-request", "kill mid-request"),
        FetcherCase("SIGSTOP fetcher", "stop"),
        FetcherCase("kill -9 daemon mid-request", "kill daemon"),
    ]
