"""The frame of every case: what cases running side by side share, the case interface, and the two-profile case
(a daemon of its own with a cached and a cold profile) that config, process and keyring cases build on."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Final

from ..authority import SimulatedAuthority
from ..daemon_process import DaemonProcess
from .measure import CliRun, Group, KnownDefect, Poller, Result, Timing, alive, backoff_bound, requests_since
from .world import FaultWorld

SHARED: Final = "shared"
CONTROL: Final = "fs-control"


@dataclass
class Shared:
    """What the cases running side by side share: the world, its daemon, the control client, the timing."""

    world: FaultWorld
    daemon: DaemonProcess
    timing: Timing
    control: Poller | None = None
    #: Authority cases that have their first token (the keyring cases wait for all of them).
    ready: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    #: When (monotonic) the first authority case's refresh meets its fault.
    first_bite: float = math.inf


class Case:
    """One row: ``prepare`` (before the shared daemon starts: profiles go into its config) then ``run``."""

    name: str
    group: Group
    #: Runs alone (it breaks something every case shares: the keyring).
    exclusive: bool = False
    #: See :attr:`Result.known_defect`.
    known_defect: KnownDefect | None = None

    def prepare(self, world: FaultWorld) -> None:
        """Add what the case needs to the world before any daemon starts."""

    def run(self, shared: Shared) -> Result:
        raise NotImplementedError

    @property
    def profile(self) -> str:
        return "fs-" + "".join(c if c.isalnum() else "-" for c in self.name.lower()).strip("-")[:40]


class TwoProfileCase(Case):
    """A daemon of its own with a cached profile ``-a`` and a cold one ``-b`` on one authority (long tokens)."""

    #: Whether the cold profile's requests count as "other clients" (not when the fault takes what it needs).
    measures_others = True

    def __init__(self, name: str, group: Group) -> None:
        self.name, self.group = name, group
        self.authority: SimulatedAuthority | None = None
        #: The run's timing (set when it runs), for attacks that last a while.
        self.timing = Timing()

    @property
    def config(self) -> str:
        return self.profile

    def prepare(self, world: FaultWorld) -> None:
        self.authority = world.authority()
        world.add_profiles(self.config, [f"{self.profile}-a", f"{self.profile}-b"], self.authority)

    def run(self, shared: Shared) -> Result:
        world, timing = shared.world, shared.timing
        self.timing = timing
        assert self.authority is not None
        cached, cold = f"{self.profile}-a", f"{self.profile}-b"
        daemon = world.daemon(self.config)
        env = world.daemon_env(self.config)
        result = Result(self.name, self.group)
        try:
            world.token(daemon, cached)
            since = time.time()
            with Poller(daemon, cached) as poller:
                cli, daemon = self.attack(world, daemon, env, cold, result)
                others = Poller(daemon, cold)
                with others:
                    time.sleep(self.observe(timing))
            result.cli = cli
            # Tokens live only in the daemon's memory (by design): a restarted daemon has none to serve.
            result.cached = None if result.accepted_loss else poller.served()
            # Without its keyring the cold profile cannot be served: the CLI column shows what it hears instead.
            result.others = others.served() if self.measures_others else (0, 0)
            result.bad_output = poller.bad_output() + others.bad_output()
            result.daemon_alive = alive(daemon)
            times = requests_since(self.authority, since)
            result.requests = len(times)
            result.window = time.time() - since
            result.bound = backoff_bound(result.window)
        finally:
            self.restore(world)
        return result

    def observe(self, timing: Timing) -> float:
        return timing.observe

    def attack(self, world: FaultWorld, daemon: DaemonProcess, env: dict[str, str], cold: str,
               result: Result) -> tuple[CliRun, DaemonProcess]:
        """Break something; the CLI's run for ``cold`` and the daemon to watch from now on."""
        raise NotImplementedError

    def restore(self, world: FaultWorld) -> None:
        """Undo the attack (idempotent)."""

