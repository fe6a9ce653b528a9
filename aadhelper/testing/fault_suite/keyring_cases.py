"""Keyring faults: the collection locked, the keyring's D-Bus peer stopped, the D-Bus session bus gone."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from typing import Literal

from ..daemon_process import DaemonProcess
from ..keyring_control import lock_keyring, unlock_keyring
from .base import Case, Shared, TwoProfileCase
from .measure import Background, CliRun, Result, Timing, run_cli
from .world import FaultWorld


class KeyringCase(TwoProfileCase):
    """The keyring locked, or its D-Bus peer stopped, while the daemon runs (runs alone: the keyring is shared)."""

    exclusive = True

    def __init__(self, name: str, how: Literal["lock", "stop"]) -> None:
        super().__init__(name, "keyring")
        self.how = how
        self.stopped: int | None = None
        self.locked = False

    def attack(self, world: FaultWorld, daemon: DaemonProcess, env: dict[str, str], cold: str,
               result: Result) -> tuple[CliRun, DaemonProcess]:
        result.expected_exits = frozenset({4})
        if self.how == "lock":
            lock_keyring()
            self.locked = True
            run = run_cli(env, "token", cold)
            self.restore(world)
            return run, daemon
        pid = _keyring_pid()
        os.kill(pid, signal.SIGSTOP)
        self.stopped = pid
        try:
            cli = Background(lambda: run_cli(env, "token", cold))
            time.sleep(self.timing.keyring_stopped)
        finally:
            self.restore(world)
        run = cli.result()
        # Served once the keyring came back, or a keyring error before: either way no hang.
        result.expected_exits = frozenset({0, 4})
        result.note = (f"gnome-keyring stopped {self.timing.keyring_stopped:.0f} s; the client was answered after "
                       f"{run.seconds:.0f} s")
        return run, daemon

    def observe(self, timing: Timing) -> float:
        return timing.keyring_observe

    def restore(self, world: FaultWorld) -> None:
        if self.stopped is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.stopped, signal.SIGCONT)
            self.stopped = None
        if self.locked:
            unlock_keyring()
            self.locked = False


class BusGoneCase(TwoProfileCase):
    """The daemon's D-Bus session bus killed while it runs: a bus and gnome-keyring of the case's own (so it does
    not take the suite's keyring with it, and runs alongside the others)."""

    def __init__(self) -> None:
        super().__init__("keyring's D-Bus gone", "keyring")
        self.measures_others = False
        self.processes: list[subprocess.Popen[bytes]] = []
        self.secrets: dict[str, str] = {}

    def prepare(self, world: FaultWorld) -> None:
        self.authority = world.authority()
        for name in (f"{self.profile}-a", f"{self.profile}-b"):
            self.secrets[name] = world.add_profile(self.config, name, self.authority, store=False)

    def run(self, shared: Shared) -> Result:
        folder = shared.world.root / self.profile
        for sub in ("home", "data", "run"):
            (folder / sub).mkdir(parents=True, mode=0o700)
        bus = subprocess.Popen(["dbus-daemon", "--session", "--nofork", "--print-address=1"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.processes.append(bus)
        assert bus.stdout is not None
        address = bus.stdout.readline().decode().strip()
        env = {**shared.world.daemon_env(self.config), "DBUS_SESSION_BUS_ADDRESS": address,
               "XDG_DATA_HOME": str(folder / "data"), "XDG_RUNTIME_DIR": str(folder / "run")}
        keyring = subprocess.Popen(["gnome-keyring-daemon", "--foreground", "--unlock", "--components=secrets"],
                                   env={**env, "HOME": str(folder / "home")}, stdin=subprocess.PIPE,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.processes.append(keyring)
        assert keyring.stdin is not None
        keyring.stdin.write(b"throwaway")
        keyring.stdin.close()
        shared.world.extra_env[self.config] = env
        deadline = time.monotonic() + 10
        for name, secret in self.secrets.items():
            # The keyring takes its bus name a moment after it starts: retry until the secret is stored.
            while run_cli(env, "secret", "set", name, stdin=f"{secret}\n".encode()).exit_code != 0:
                if time.monotonic() > deadline:
                    raise RuntimeError("the case's own gnome-keyring did not come up")
                time.sleep(0.1)
        return super().run(shared)

    def attack(self, world: FaultWorld, daemon: DaemonProcess, env: dict[str, str], cold: str,
               result: Result) -> tuple[CliRun, DaemonProcess]:
        self.processes[0].kill()
        self.processes[0].wait()
        result.expected_exits = frozenset({4})
        return run_cli(env, "token", cold), daemon

    def restore(self, world: FaultWorld) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def keyring_cases() -> list[Case]:
    return [KeyringCase("keyring locked", "lock"), KeyringCase("keyring's D-Bus peer stopped", "stop"),
            BusGoneCase()]


def _keyring_pid() -> int:
    """The pid of the process that owns org.freedesktop.secrets on the session bus."""
    from jeepney import DBusAddress, new_method_call
    from jeepney.io.blocking import open_dbus_connection

    bus = DBusAddress("/org/freedesktop/DBus", bus_name="org.freedesktop.DBus", interface="org.freedesktop.DBus")
    with open_dbus_connection(bus="SESSION") as connection:
        reply = connection.send_and_get_reply(
            new_method_call(bus, "GetConnectionUnixProcessID", "s", ("org.freedesktop.secrets",)), timeout=5)
    return int(reply.body[0])


