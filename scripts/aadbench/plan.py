"""How much of each measurement a run makes (full or ``--quick``), and what every row gets to work with."""

from __future__ import annotations

from dataclasses import dataclass

from aadhelper.testing import SimulatedAuthority

from .loadgen import LoadGenerator
from .world import Daemon, World

#: Profiles of the main daemon (config "main").
MAIN = "bench-main"
COLD = "bench-cold"
GIT = "bench-git"
GIT_URL = "https://dev.azure.com/contoso/"
SOAK = "bench-soak"
#: Profile of the daemon that row 7 starts again and again (config "start").
START = "bench-start"
#: The same with a certificate in the keyring instead of a client secret (config "start-cert").
START_CERT = "bench-start-cert"
#: Profiles of the daemon of row 6 (config "many") are MANY_PREFIX + a number.
MANY_PREFIX = "bench-many-"


@dataclass(frozen=True)
class Plan:
    quick: bool
    #: Row 1 and 2: timed process pairs.
    header_runs: int
    git_runs: int
    #: Row 3: seconds per load run, runs per server and concurrency.
    load_seconds: float
    load_repeats: int
    #: Row 4.
    single_flight_requests: int
    #: Row 5: token lifetime and minimum validity (s), soak length (s), clients and their pause. The daemon refreshes
    #: an entry at most once per max(30 s, lifetime/4) (refresh_policy.spacing): 40 s tokens are the shortest that
    #: keep 5 s of validity between refreshes, and refresh every 30 s (5 windows in 150 s, 1 in the quick run).
    soak_lifetime: int
    soak_min_valid: int
    soak_seconds: float
    soak_clients: int
    soak_pause_us: int
    #: Row 6.
    profiles: int
    idle_seconds: float
    #: Row 7: daemon starts, baseline runs.
    starts: int
    start_baseline_runs: int

    @classmethod
    def full(cls) -> Plan:
        return cls(quick=False, header_runs=100, git_runs=60, load_seconds=1.0, load_repeats=3,
                   single_flight_requests=500, soak_lifetime=40, soak_min_valid=5, soak_seconds=150.0,
                   soak_clients=4, soak_pause_us=2000, profiles=50, idle_seconds=10.0, starts=9,
                   start_baseline_runs=15)

    @classmethod
    def brief(cls) -> Plan:
        """``--quick``: every row runs, briefly; the figures are rough."""
        return cls(quick=True, header_runs=15, git_runs=8, load_seconds=0.4, load_repeats=1,
                   single_flight_requests=500, soak_lifetime=40, soak_min_valid=5, soak_seconds=35.0,
                   soak_clients=2, soak_pause_us=2000, profiles=50, idle_seconds=2.0, starts=2,
                   start_baseline_runs=3)


@dataclass
class Bench:
    """The shared state rows measure against: the world, the main daemon, the load generator."""

    plan: Plan
    world: World
    daemon: Daemon
    loadgen: LoadGenerator
    #: Issues the short-lived tokens of the soak (row 5).
    soak_authority: SimulatedAuthority
