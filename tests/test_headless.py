"""Headless machines (issue 14 §3): no desktop session, so no session bus and often no ``XDG_RUNTIME_DIR``.

- :func:`aadhelper.paths.session_environment`: what a daemon autostarted from cron or a bare SSH session is given
  so that it reaches the user bus (``/run/user/UID/bus``) and the keyring on it.
- ``scripts/keyring-session``: the README's recipe for a machine without systemd: the daemon in a D-Bus session of
  its own with gnome-keyring unlocked, started with no desktop session at all, serving a token from that keyring.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from aadhelper import client, paths
from aadhelper.errors import DaemonNotRunning
from aadhelper.testing.authority import SimulatedAuthority
from tests.harness import (  # noqa: F401 -- two_app_*, two_profile_env: fixtures
    APP,
    BIN,
    add_profile,
    cli,
    sensitive,
    two_app_authority,
    two_app_secrets,
    two_profile_env,
    wait_until,
)

KEYRING_SESSION = str(Path(__file__).resolve().parent.parent / "scripts" / "keyring-session")


# -- the user bus for a daemon started without a session ------------------------------------------------------

@pytest.fixture
def run_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for /run/user/UID (ours, 0700), and no session variables in this process."""
    folder = tmp_path / "run-user" / str(os.getuid())
    folder.mkdir(parents=True, mode=0o700)
    monkeypatch.setattr(paths, "_RUN_USER", str(tmp_path / "run-user" / "{uid}"))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    return folder


def test_cron_without_session_variables_is_given_the_user_bus(run_user: Path) -> None:
    """If neither XDG_RUNTIME_DIR nor DBUS_SESSION_BUS_ADDRESS is set (cron) but /run/user/UID is ours with a bus
    socket in it, then a daemon started from there is given both, and the socket lives there too."""
    with socket.socket(socket.AF_UNIX) as bus:
        bus.bind(str(run_user / "bus"))
        assert paths.session_environment({}) == {"XDG_RUNTIME_DIR": str(run_user),
                                                 "DBUS_SESSION_BUS_ADDRESS": f"unix:path={run_user}/bus"}
    assert paths.runtime_dir() == str(run_user / "aadhelper")


def test_variables_already_set_are_left_alone(run_user: Path) -> None:
    """If the session variables are set, then nothing is added, whatever /run/user/UID holds."""
    with socket.socket(socket.AF_UNIX) as bus:
        bus.bind(str(run_user / "bus"))
        environ = {"XDG_RUNTIME_DIR": str(run_user), "DBUS_SESSION_BUS_ADDRESS": "unix:path=/elsewhere"}
        assert paths.session_environment(environ) == {}


def test_no_bus_socket_means_no_bus_address(run_user: Path) -> None:
    """If the runtime directory holds no bus socket (no user bus), or a regular file by that name, then no bus
    address is made up: the keyring error then says what to do."""
    assert paths.session_environment({}) == {"XDG_RUNTIME_DIR": str(run_user)}
    (run_user / "bus").write_text("not a socket")
    assert paths.session_environment({}) == {"XDG_RUNTIME_DIR": str(run_user)}


def test_no_runtime_directory_means_nothing_added(run_user: Path) -> None:
    """If there is no XDG_RUNTIME_DIR and no /run/user/UID (a container), then nothing is added."""
    run_user.rmdir()
    assert paths.session_environment({}) == {}


@pytest.fixture
def autostarted(env: dict[str, str]) -> Iterator[dict[str, str]]:
    """``env`` with autostart allowed; the daemon a client started is stopped (SIGTERM) afterwards."""
    allowed = {key: value for key, value in env.items() if key != "AADHELPER_NO_AUTOSTART"}
    yield allowed
    try:
        pid = client.ping(socket_path=allowed["AADHELPER_SOCKET"])["pid"]
    except DaemonNotRunning:
        return
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not os.path.exists(allowed["AADHELPER_SOCKET"]), timeout=30)


@pytest.mark.requires("secret-service")
def test_a_daemon_autostarted_without_a_bus_address_reads_the_keyring_on_the_user_bus(
        autostarted: dict[str, str], authority: SimulatedAuthority) -> None:
    """If a client without DBUS_SESSION_BUS_ADDRESS (cron) autostarts the daemon while the user bus runs in the
    runtime directory, then the daemon reads the client secret from the keyring on that bus and serves a token."""
    bus_address = autostarted.pop("DBUS_SESSION_BUS_ADDRESS")
    assert bus_address.startswith("unix:path=")
    Path(autostarted["XDG_RUNTIME_DIR"], "bus").symlink_to(bus_address.removeprefix("unix:path=").split(",")[0])
    result = cli(autostarted, "header", "graph")
    assert result.returncode == 0, result.stderr
    assert authority.validate(result.stdout.strip())["appid"] == APP
    assert authority.count(grant_type="client_credentials") == 1


# -- the recipe for machines without systemd: scripts/keyring-session ------------------------------------------

@pytest.fixture
def no_desktop(isolated_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """An environment as over SSH or in a container: no session bus, no test keyring, no autostart (so only the
    one daemon under test can answer), this installation's aadhelper on PATH, a fresh keyring folder."""
    env = {key: value for key, value in isolated_env.items()
           if key != "DBUS_SESSION_BUS_ADDRESS" and not key.startswith("AADHELPER_TEST_")}
    env.update(AADHELPER_NO_AUTOSTART="1", PATH=f"{BIN}:{env['PATH']}", TMPDIR=str(tmp_path))
    return env


def keyring_session(env: dict[str, str], *command: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KEYRING_SESSION, *command], env=env, input=stdin, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.requires("dbus-daemon", "dbus-send", "gnome-keyring-daemon")
def test_keyring_session_runs_the_daemon_with_no_desktop_session(
        no_desktop: dict[str, str], authority: SimulatedAuthority, ca_pem_file: Path, app_secrets: dict[str, str],
        tmp_path: Path) -> None:
    """If the secret is stored and the daemon started through scripts/keyring-session with no desktop session
    (password on stdin), then a client with no session bus gets a token made from that secret; SIGTERM stops the
    daemon, the keyring and the bus, and the script exits 0 leaving nothing behind."""
    env = no_desktop
    add_profile(env, "graph", authority.url, ca_pem_file)
    password = "keyring-password-" + os.urandom(8).hex()
    sensitive(password)
    stored = keyring_session(env, "aadhelper", "secret", "set", "graph", stdin=f"{password}\n{app_secrets[APP]}\n")
    assert stored.returncode == 0, stored.stderr
    assert list(Path(env["XDG_DATA_HOME"], "keyrings").glob("*.keyring")), "no keyring file was written"

    session = subprocess.Popen([KEYRING_SESSION], env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert session.stdin is not None
        session.stdin.write(password + "\n")
        session.stdin.close()

        def answers() -> bool:
            try:
                client.ping(socket_path=env["AADHELPER_SOCKET"], timeout=1.0)
            except DaemonNotRunning:
                assert session.poll() is None, "keyring-session ended before the daemon answered"
                return False
            return True

        wait_until(answers, timeout=30)
        result = cli(env, "header", "graph")
        assert result.returncode == 0, result.stderr
        assert authority.validate(result.stdout.strip())["appid"] == APP
        assert authority.count(grant_type="client_credentials") == 1
        session.send_signal(signal.SIGTERM)
        assert session.wait(timeout=30) == 0
    finally:
        if session.poll() is None:
            os.killpg(session.pid, signal.SIGKILL)
            session.wait()
    assert session.stderr is not None
    errors = session.stderr.read()
    assert not os.path.exists(env["AADHELPER_SOCKET"]), errors
    assert not list(tmp_path.glob("aadhelper-keyring-session.*")), "keyring-session left its folder behind"


@pytest.mark.requires("dbus-daemon", "dbus-send", "gnome-keyring-daemon")
def test_keyring_session_refuses_a_wrong_password_before_running_the_command(no_desktop: dict[str, str]) -> None:
    """If the keyring exists and the password is wrong, then keyring-session says so in one line and exits 1
    without running the command (gnome-keyring itself would exit 0 and leave the keyring locked)."""
    assert keyring_session(no_desktop, "true", stdin="right-password\n").returncode == 0
    wrong = keyring_session(no_desktop, "echo", "ran", stdin="wrong-password\n")
    assert wrong.returncode == 1
    assert wrong.stdout == ""
    assert wrong.stderr.strip().endswith("did not unlock with this password")

