"""systemd integration: socket activation, sd_notify, and the user units `aadhelper service` installs.

Real tools throughout: units are checked by ``systemd-analyze verify --user``, sockets are passed by
``systemd-socket-activate`` (which, like systemd, binds, waits for the first connection, then execs the daemon with
``LISTEN_*`` set), notifications are read from a real datagram socket, and the daemon is the installed console script.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from aadhelper import client, paths, systemd
from aadhelper.cli import service
from aadhelper.errors import ConfigError, DaemonNotRunning

from .conftest import MDWE, PR_MDWE_REFUSE_EXEC_GAIN, PR_SET_MDWE, coverage_environ, require

REPO = Path(__file__).resolve().parent.parent
CHECKED_IN = REPO / "systemd"
UNITS = (service.SOCKET_UNIT, service.SERVICE_UNIT)
AADHELPER = Path(sys.executable).parent / "aadhelper"
#: Bound on waiting for a process to do something; never asserted as a duration.
PATIENCE = 30.0


# Skipped locally without the tool, failed when CI=true (tests/conftest.py).
needs_analyze = pytest.mark.requires("systemd-analyze")
needs_activate = pytest.mark.requires("systemd-socket-activate")


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """An environment whose HOME and XDG directories are all under tmp_path, so nothing real is touched."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "XDG_RUNTIME_DIR": str(runtime),
        "LANG": "C.UTF-8",
        **coverage_environ(),
    }
    Path(env["HOME"]).mkdir()
    return env


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=PATIENCE, check=False)


def verify(unit_files: list[Path], env: dict[str, str]) -> None:
    """systemd-analyze verify exits 0 even on unknown keys and unparsable values: require silence too."""
    result = run(["systemd-analyze", "verify", "--user", *map(str, unit_files)], env)
    assert (result.returncode, result.stderr, result.stdout) == (0, "", ""), result


def install(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run([str(AADHELPER), "service", *args], env)


def unit_dir(env: dict[str, str]) -> Path:
    return Path(env["XDG_CONFIG_HOME"]) / "systemd" / "user"


# -- the unit files ------------------------------------------------------------------------------------


@needs_analyze
def test_checked_in_units_verify(home: dict[str, str]) -> None:
    """If systemd-analyze verifies the checked-in units, then it reports no error or warning."""
    verify([CHECKED_IN / name for name in UNITS], home)


def test_checked_in_units_are_the_portable_rendering(home: dict[str, str], tmp_path: Path) -> None:
    """If `service install --portable` renders the units, then they equal the checked-in copies byte for byte."""
    out = tmp_path / "rendered"
    result = install(home, "install", "--portable", "--unit-dir", str(out))
    assert result.returncode == 0, result.stderr
    for name in UNITS:
        assert (out / name).read_bytes() == (CHECKED_IN / name).read_bytes(), (
            f"systemd/{name} is stale: run `aadhelper service install --portable --unit-dir systemd --force`")
    assert "ExecStart=/usr/bin/env aadhelper daemon\n" in (CHECKED_IN / service.SERVICE_UNIT).read_text()


def test_units_point_at_no_documentation_that_does_not_exist(home: dict[str, str], tmp_path: Path) -> None:
    """If the units are rendered, then they name no Documentation= (the project has no web page, and the man page
    is only where man(1) finds it once the user installs it), so `systemctl status` shows no dead link."""
    result = install(home, "install", "--portable", "--unit-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    for name in UNITS:
        assert "Documentation=" not in (tmp_path / name).read_text()


@needs_analyze
@pytest.mark.parametrize("xdg_config_home", [True, False], ids=["XDG_CONFIG_HOME", "HOME-only"])
def test_install_writes_verifiable_units_for_this_installation(home: dict[str, str], xdg_config_home: bool) -> None:
    """If `service install` runs, then both units land in the user unit dir, run this installation's console
    script, pass systemd-analyze verify, and the systemctl commands to run are printed (not run)."""
    if not xdg_config_home:
        del home["XDG_CONFIG_HOME"]
    expected_dir = (Path(home["XDG_CONFIG_HOME"]) if xdg_config_home else Path(home["HOME"]) / ".config") / \
        "systemd" / "user"
    result = install(home, "install")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in expected_dir.iterdir()) == sorted(UNITS)
    service_text = (expected_dir / service.SERVICE_UNIT).read_text()
    assert f"\nExecStart={AADHELPER} daemon\n" in service_text
    verify([expected_dir / name for name in UNITS], home)
    assert "systemctl --user daemon-reload\n" in result.stdout
    assert "systemctl --user enable --now aadhelper.socket\n" in result.stdout
    assert result.stderr == ""


def test_socket_unit_listens_where_clients_connect(home: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """If %t is the user's XDG_RUNTIME_DIR, then the socket unit's ListenStream= is the path clients connect to."""
    listen = re.search(r"^ListenStream=(.*)$", (CHECKED_IN / service.SOCKET_UNIT).read_text(), re.M)
    assert listen is not None
    monkeypatch.setenv("XDG_RUNTIME_DIR", home["XDG_RUNTIME_DIR"])
    monkeypatch.delenv("AADHELPER_SOCKET", raising=False)
    assert listen[1].replace("%t", home["XDG_RUNTIME_DIR"]) == paths.socket_path()


@needs_analyze
def test_exec_start_quotes_awkward_paths(home: dict[str, str], tmp_path: Path) -> None:
    """If the console script's path holds spaces, % and $, then systemd reads back that exact executable
    (verify fails on a command it cannot find, as the second half shows)."""
    odd_dir = tmp_path / "my venv 100% $HOME"
    odd_dir.mkdir()
    script = odd_dir / "aadhelper"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    out = tmp_path / "units"
    out.mkdir()
    for name, text in service.render_units([str(script)]).items():
        (out / name).write_text(text)
    verify([out / name for name in UNITS], home)
    script.unlink()
    result = run(["systemd-analyze", "verify", "--user", *(str(out / name) for name in UNITS)], home)
    assert result.returncode != 0 and "is not executable" in result.stderr


@pytest.mark.parametrize(("command", "message"), [
    (["/opt/a\nb/aadhelper"], "newline"),
    (['/opt/"odd"/aadhelper'], "quotes or backslashes"),
    (["/opt/back\\slash/aadhelper"], "quotes or backslashes"),
    (["aadhelper"], "absolute path"),
])
def test_exec_start_refuses_what_systemd_cannot_run(command: list[str], message: str) -> None:
    """If the executable's path is one systemd would refuse or misread, then rendering says so in one line
    instead of writing a unit that fails to load."""
    with pytest.raises(ConfigError, match=message):
        service.render_units(command)


def test_install_replaces_unedited_units_but_refuses_edited_ones(home: dict[str, str]) -> None:
    """If an installed unit is unedited, then install replaces it; if the user edited it, then install refuses
    with one line naming the file, leaves it untouched, and replaces it only with --force."""
    assert install(home, "install", "--portable").returncode == 0
    service_file = unit_dir(home) / service.SERVICE_UNIT
    assert "ExecStart=/usr/bin/env aadhelper daemon" in service_file.read_text()

    upgraded = install(home, "install")
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"ExecStart={AADHELPER} daemon" in service_file.read_text()

    again = install(home, "install")
    assert again.returncode == 0 and f"Unchanged {service_file}" in again.stdout

    edited = service_file.read_text().replace("Restart=on-failure", "Restart=always")
    service_file.write_text(edited)
    refused = install(home, "install")
    assert refused.returncode == ConfigError.exit_code
    assert refused.stderr.count("\n") == 1 and str(service_file) in refused.stderr and "--force" in refused.stderr
    assert service_file.read_text() == edited
    assert "Traceback" not in refused.stderr

    forced = install(home, "install", "--force")
    assert forced.returncode == 0, forced.stderr
    assert service_file.read_text() == service.render_units([str(AADHELPER)])[service.SERVICE_UNIT]


def test_install_refuses_a_unit_the_user_wrote(home: dict[str, str]) -> None:
    """If a hand-written aadhelper.socket (no marker) is in the unit dir, then install leaves both units alone."""
    own = unit_dir(home)
    own.mkdir(parents=True)
    (own / service.SOCKET_UNIT).write_text("[Socket]\nListenStream=/tmp/mine.sock\n")
    result = install(home, "install")
    assert result.returncode == ConfigError.exit_code
    assert (own / service.SOCKET_UNIT).read_text() == "[Socket]\nListenStream=/tmp/mine.sock\n"
    assert not (own / service.SERVICE_UNIT).exists()


def test_dry_run_and_print_write_nothing(home: dict[str, str]) -> None:
    """If install runs with --dry-run or `service print` runs, then the rendered units are shown and no file or
    directory is created."""
    dry = install(home, "install", "--dry-run")
    shown = install(home, "print")
    for result in (dry, shown):
        assert result.returncode == 0, result.stderr
        assert f"ExecStart={AADHELPER} daemon" in result.stdout
        assert "ListenStream=%t/aadhelper/daemon.sock" in result.stdout
    assert "systemctl --user enable --now aadhelper.socket" in dry.stdout
    assert not Path(home["XDG_CONFIG_HOME"]).exists()


def test_uninstall_removes_units_and_prints_disable(home: dict[str, str]) -> None:
    """If uninstall runs after install (no user manager answers), then both units are gone and the stop command is
    printed; an edited unit is kept unless --force."""
    assert install(home, "install").returncode == 0
    socket_file = unit_dir(home) / service.SOCKET_UNIT
    socket_file.write_text(socket_file.read_text() + "Backlog=64\n")

    refused = install(home, "uninstall")
    assert refused.returncode == ConfigError.exit_code and str(socket_file) in refused.stderr
    assert all((unit_dir(home) / name).exists() for name in UNITS)

    dry = install(home, "uninstall", "--force", "--dry-run")
    assert dry.returncode == 0 and all((unit_dir(home) / name).exists() for name in UNITS)

    removed = install(home, "uninstall", "--force")
    assert removed.returncode == 0, removed.stderr
    assert list(unit_dir(home).iterdir()) == []
    # No user manager answers here: nothing could be stopped, and the command says how to do it where one runs.
    assert "systemctl --user stop aadhelper.socket aadhelper.service\n" in removed.stdout

    nothing = install(home, "uninstall")
    assert nothing.returncode == 0 and "Not installed" in nothing.stdout


def test_install_user_service_script(home: dict[str, str]) -> None:
    """If scripts/install-user-service runs, then it installs units for this checkout's .venv aadhelper (or says
    none is found), and with $AADHELPER it runs that one with the options given (here --dry-run)."""
    script = str(REPO / "scripts" / "install-user-service")
    bare = {**home, "PATH": "/usr/bin:/bin"}
    venv_aadhelper = REPO / ".venv" / "bin" / "aadhelper"
    result = run([script], bare)
    if venv_aadhelper.exists():
        assert result.returncode == 0, result.stderr
        assert f"ExecStart={venv_aadhelper} daemon" in (unit_dir(home) / service.SERVICE_UNIT).read_text()
    else:
        assert result.returncode == 3 and "no aadhelper found" in result.stderr

    other = Path(home["HOME"]) / "units"
    chosen = run([script, "--dry-run", "--unit-dir", str(other)], {**bare, "AADHELPER": str(AADHELPER)})
    assert chosen.returncode == 0, chosen.stderr
    assert f"ExecStart={AADHELPER} daemon" in chosen.stdout and not other.exists()


# -- socket activation -----------------------------------------------------------------------------------


@contextlib.contextmanager
def running(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process with output in ``log``; stopped (TERM, then KILL) even when the test fails."""
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=PATIENCE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def socket_activate(sock_path: Path, command: list[str], env: dict[str, str], *extra: str) -> list[str]:
    """systemd-socket-activate passes only PATH/HOME/USER/TERM on: forward the rest with -E like a unit would."""
    forwarded = [f"--setenv={key}={value}" for key, value in env.items() if key not in ("PATH", "HOME")]
    return ["systemd-socket-activate", f"--listen={sock_path}", *extra, *forwarded, *command]


def connect_when_bound(path: Path, proc: subprocess.Popen[bytes], log: Path) -> socket.socket:
    deadline = time.monotonic() + PATIENCE
    while True:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            conn.close()
            assert proc.poll() is None, f"exited {proc.returncode}: {log.read_text()}"
            assert time.monotonic() < deadline, f"{path} never appeared: {log.read_text()}"
            time.sleep(0.01)
            continue
        conn.settimeout(PATIENCE)
        return conn


def read_line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


ACTIVATED_CHILD = r"""
import fcntl, json, os, subprocess, sys
from aadhelper import systemd
listen_pid = os.environ.get("LISTEN_PID")
named = systemd.listen_fds_with_names()
(name, server), = named
grandchild = subprocess.run([sys.executable, "-c", '''
import json, os, stat
try:
    fd3 = "socket" if stat.S_ISSOCK(os.fstat(3).st_mode) else "other"
except OSError:
    fd3 = "closed"
print(json.dumps({"fd3": fd3, "env": sorted(k for k in os.environ if k.startswith("LISTEN_"))}))
'''], close_fds=False, capture_output=True, text=True, check=True)
report = {
    "listen_pid_was_mine": listen_pid == str(os.getpid()),
    "names": [n for n, _ in named],
    "kind": [server.family.name, server.type.name],
    "cloexec": bool(fcntl.fcntl(server.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC),
    "env_left": sorted(k for k in os.environ if k.startswith("LISTEN_")),
    "grandchild": json.loads(grandchild.stdout),
}
conn, _ = server.accept()
conn.sendall(json.dumps(report).encode() + b"\n")
conn.close()
"""


@needs_activate
def test_listen_fds_under_systemd_socket_activate(home: dict[str, str], tmp_path: Path) -> None:
    """If systemd-socket-activate passes a socket, then listen_fds returns it as a listening AF_UNIX stream socket
    with its name, CLOEXEC set, the LISTEN_* variables unset, and a child process inherits neither."""
    sock_path = tmp_path / "activated.sock"
    log = tmp_path / "child.log"
    args = socket_activate(sock_path, [sys.executable, "-c", ACTIVATED_CHILD], home, "--fdname=aadhelper")
    with running(args, home, log) as proc:
        conn = connect_when_bound(sock_path, proc, log)
        with conn:
            line = read_line(conn)
        assert line, log.read_text()
        assert proc.wait(timeout=PATIENCE) == 0, log.read_text()
    assert json.loads(line) == {
        "listen_pid_was_mine": True,
        "names": ["aadhelper"],
        "kind": ["AF_UNIX", "SOCK_STREAM"],
        "cloexec": True,
        "env_left": [],
        "grandchild": {"fd3": "closed", "env": []},
    }


FD3_HARNESS = r"""
import json, os, socket, sys
from aadhelper import systemd
from aadhelper.errors import ConfigError, DaemonNotRunning
kind, pid_rule, count, names, path = json.loads(sys.argv[1])
placeholder = os.open(os.devnull, os.O_RDONLY)  # keeps the object below off fd 3, so dup2 makes a distinct fd
if kind == "unix":
    thing = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); thing.bind(path); thing.listen()
elif kind == "unix-not-listening":
    thing = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
elif kind == "unix-dgram":
    thing = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
elif kind == "tcp":
    thing = socket.socket(socket.AF_INET, socket.SOCK_STREAM); thing.bind(("127.0.0.1", 0)); thing.listen()
else:
    thing = open(os.devnull)
os.dup2(thing.fileno(), 3)
thing.close()
os.environ["LISTEN_PID"] = str(os.getpid() if pid_rule == "self" else os.getppid())
os.environ["LISTEN_FDS"] = count
if names is not None:
    os.environ["LISTEN_FDNAMES"] = names
result = {}
try:
    kept = systemd.listen_fds_with_names()  # kept alive: a collected socket object closes its fd
    result["sockets"] = [[name, sock.fileno()] for name, sock in kept]
except ConfigError as exc:
    result["error"] = exc.one_line()
result["env_left"] = sorted(k for k in os.environ if k.startswith("LISTEN_"))
try:
    result["fd3_inheritable"] = os.get_inheritable(3)
except OSError:
    result["fd3_inheritable"] = None
print(json.dumps(result))
"""


def fd3_case(tmp_path: Path, kind: str, pid_rule: str = "self", count: str = "1",
             names: str | None = None) -> dict[str, object]:
    spec = json.dumps([kind, pid_rule, count, names, str(tmp_path / "fd3.sock")])
    result = subprocess.run([sys.executable, "-c", FD3_HARNESS, spec], capture_output=True, text=True,
                            timeout=PATIENCE, check=False)
    assert result.returncode == 0, result.stderr
    outcome: dict[str, object] = json.loads(result.stdout)
    assert outcome["env_left"] == [], "LISTEN_* must be unset in every case"
    return outcome


def test_listen_fds_takes_a_listening_unix_socket(tmp_path: Path) -> None:
    """If fd 3 is a listening Unix socket meant for us, then it is returned (name "unknown") and made CLOEXEC."""
    assert fd3_case(tmp_path, "unix") == {"sockets": [["unknown", 3]], "env_left": [], "fd3_inheritable": False}


def test_listen_fds_for_another_pid_returns_nothing(tmp_path: Path) -> None:
    """If LISTEN_PID names another process, then no fd is taken and fd 3 is left exactly as it was."""
    assert fd3_case(tmp_path, "unix", pid_rule="parent") == {"sockets": [], "env_left": [], "fd3_inheritable": True}


@pytest.mark.parametrize(("kind", "count", "names", "message"), [
    ("tcp", "1", None, "inherited fd 3 is a AF_INET SOCK_STREAM socket, not a listening AF_UNIX SOCK_STREAM"),
    ("unix-dgram", "1", None, "inherited fd 3 is a AF_UNIX SOCK_DGRAM"),
    ("unix-not-listening", "1", None, "AF_UNIX SOCK_STREAM (not listening) socket"),
    ("file", "1", None, "inherited fd 3 is not an open socket"),
    ("unix", "2", None, "inherited fd 4 is not an open socket"),
    ("unix", "1", "a:b", "LISTEN_FDNAMES names 2 sockets but LISTEN_FDS says 1"),
    ("unix", "x", None, "LISTEN_FDS='x' is not a positive number"),
    ("unix", "0", None, "LISTEN_FDS='0' is not a positive number"),
])
def test_listen_fds_rejects_what_the_unit_does_not_declare(tmp_path: Path, kind: str, count: str,
                                                            names: str | None, message: str) -> None:
    """If the inherited fds are not one listening Unix stream socket as described, then a one-line ConfigError
    says what is wrong and how the unit should look."""
    outcome = fd3_case(tmp_path, kind, count=count, names=names)
    assert "sockets" not in outcome
    error = str(outcome["error"])
    assert message in error and "ListenStream=" in error and "\n" not in error


def test_listen_fds_respects_unset_environment_false() -> None:
    """If unset_environment is False, then the variables stay (here meant for another pid, so no fd is touched)."""
    environ = {"LISTEN_PID": str(os.getppid()), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x"}
    assert systemd.listen_fds(unset_environment=False, environ=environ) == []
    assert environ == {"LISTEN_PID": str(os.getppid()), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x"}


def test_listen_fds_rejects_malformed_listen_pid_and_unsets_it() -> None:
    """If LISTEN_PID is not a number, then ConfigError names it, and the variables are unset all the same."""
    environ = {"LISTEN_PID": "12ab", "LISTEN_FDS": "1"}
    with pytest.raises(ConfigError, match="LISTEN_PID='12ab'"):
        systemd.listen_fds(environ=environ)
    assert environ == {}


@pytest.mark.parametrize(("environ", "expected"), [
    ({"LISTEN_PID": "SELF", "LISTEN_FDS": "1"}, True),
    ({"LISTEN_PID": "OTHER", "LISTEN_FDS": "1"}, False),
    ({"LISTEN_PID": "SELF"}, False),
    ({"LISTEN_PID": "SELF", "LISTEN_FDS": "zero"}, False),
    ({}, False),
])
def test_is_socket_activated(environ: dict[str, str], expected: bool) -> None:
    """If LISTEN_PID is ours and LISTEN_FDS positive, then we are socket-activated; the variables stay put."""
    pids = {"SELF": str(os.getpid()), "OTHER": str(os.getppid())}
    environ = {key: pids.get(value, value) for key, value in environ.items()}
    before = dict(environ)
    assert systemd.is_socket_activated(environ) is expected
    assert environ == before


# -- sd_notify -----------------------------------------------------------------------------------------


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[socket.socket, dict[str, str]]]:
    """A datagram socket standing in for systemd's notify socket, and the environment that names it."""
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
        receiver.bind(address)
    else:
        name = f"aadhelper-test-{uuid.uuid4().hex}"
        receiver.bind("\0" + name)
        address = "@" + name
    receiver.settimeout(PATIENCE)
    with receiver:
        yield receiver, {"NOTIFY_SOCKET": address}


def test_notify_sends_one_datagram(notify_socket: tuple[socket.socket, dict[str, str]]) -> None:
    """If notify gets several lines, then the notify socket receives them as one newline-separated datagram."""
    receiver, environ = notify_socket
    assert systemd.notify("READY=1", "STATUS=serving 2 profiles", environ=environ) is True
    assert receiver.recv(4096) == b"READY=1\nSTATUS=serving 2 profiles"


def test_notify_helpers(notify_socket: tuple[socket.socket, dict[str, str]]) -> None:
    """If the helpers are called, then systemd receives READY=1 with STATUS, STATUS, STOPPING=1, RELOADING=1 with
    MONOTONIC_USEC, and WATCHDOG=1; a newline in a status cannot inject another key."""
    receiver, environ = notify_socket
    assert systemd.ready("listening", environ=environ)
    assert receiver.recv(4096) == b"READY=1\nSTATUS=listening"
    assert systemd.ready(environ=environ)
    assert receiver.recv(4096) == b"READY=1"
    assert systemd.status("refresh failed\nREADY=1", environ=environ)
    assert receiver.recv(4096) == b"STATUS=refresh failed READY=1"
    assert systemd.stopping(environ=environ)
    assert receiver.recv(4096) == b"STOPPING=1"
    assert systemd.reloading(environ=environ)
    assert re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=[0-9]+", receiver.recv(4096))
    assert systemd.watchdog(environ=environ)
    assert receiver.recv(4096) == b"WATCHDOG=1"


@pytest.mark.parametrize("address", [None, "", "relative/notify.sock", "vsock:2:1234", "DEAD"])
def test_notify_without_a_listener_returns_false(tmp_path: Path, address: str | None) -> None:
    """If NOTIFY_SOCKET is unset, unusable or nobody listens there, then notify returns False and raises nothing."""
    environ = {} if address is None else {"NOTIFY_SOCKET": address}
    if address == "DEAD":
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        dead.bind(str(tmp_path / "dead.sock"))
        dead.close()  # the file stays, nobody reads: ECONNREFUSED
        environ["NOTIFY_SOCKET"] = str(tmp_path / "dead.sock")
    assert systemd.notify("READY=1", environ=environ) is False
    assert systemd.stopping(environ=environ) is False


@pytest.mark.parametrize(("environ", "expected"), [
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "SELF"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "OTHER"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    """If WatchdogSec= is set for this process, then pings are due every half interval; otherwise never."""
    pids = {"SELF": str(os.getpid()), "OTHER": str(os.getppid())}
    environ = {key: pids.get(value, value) for key, value in environ.items()}
    assert systemd.watchdog_interval(environ) == expected


# -- the real daemon -------------------------------------------------------------------------------------


def daemon_env(home: dict[str, str], tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "config.toml"
    config.write_text("")
    # A different path from the activated socket: a ping through the activated one proves the daemon used it.
    return {**home, "AADHELPER_CONFIG": str(config), "AADHELPER_SOCKET": str(tmp_path / "own.sock")}


def mdwe_wrapper() -> list[str]:
    """A command prefix that turns on MemoryDenyWriteExecute (prctl PR_SET_MDWE, what systemd >= 254 uses) and
    execs the rest, so the daemon runs under the hardening the unit asks for.

    The unit asks for it, so a kernel without it is a missing component: skipped on a developer's old kernel,
    failed in CI (whose kernel has it: Linux >= 6.3), never silently passed."""
    require(MDWE)
    code = ("import ctypes, os, sys\n"
            f"assert ctypes.CDLL(None).prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) == 0\n"
            "os.execv(sys.argv[1], sys.argv[1:])\n")
    return [sys.executable, "-c", code]


@needs_activate
@pytest.mark.parametrize("hardening", ["plain", "MemoryDenyWriteExecute"])
def test_socket_activated_daemon_answers_first_connection(home: dict[str, str], tmp_path: Path,
                                                          hardening: str) -> None:
    """If the daemon is started by socket activation on the first connection, then that very connection gets a
    ping reply from the exec'd daemon (also with MemoryDenyWriteExecute on), and SIGTERM stops it cleanly."""
    prefix = mdwe_wrapper() if hardening == "MemoryDenyWriteExecute" else []
    sock_path = tmp_path / "activated.sock"
    log = tmp_path / "daemon.log"
    env = daemon_env(home, tmp_path)
    with running(socket_activate(sock_path, [*prefix, str(AADHELPER), "daemon"], env), env, log) as proc:
        deadline = time.monotonic() + PATIENCE
        while True:
            try:
                reply = client.ping(socket_path=str(sock_path), timeout=PATIENCE)
                break
            except DaemonNotRunning:
                # Not bound or not listening yet: no connection was made, so the next try is still the first.
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.01)
        assert reply["pid"] == proc.pid, log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=PATIENCE) == 0, log.read_text()
    assert not Path(env["AADHELPER_SOCKET"]).exists()


@needs_activate
def test_socket_activated_daemon_exits_when_idle(home: dict[str, str], tmp_path: Path) -> None:
    """If a socket-activated daemon has `idle_exit` set and no client comes for that long, then it exits 0 by
    itself, says why in its log, and leaves the listening socket to systemd (the next client starts it again)."""
    sock_path = tmp_path / "activated.sock"
    log = tmp_path / "daemon.log"
    env = daemon_env(home, tmp_path)
    Path(env["AADHELPER_CONFIG"]).write_text("[daemon]\nidle_exit = 1\n")
    with running(socket_activate(sock_path, [str(AADHELPER), "daemon"], env), env, log) as proc:
        connect_when_bound(sock_path, proc, log).close()  # the first connection starts the daemon
        assert proc.wait(timeout=PATIENCE) == 0, log.read_text()
    assert "idle for" in log.read_text() and "exiting" in log.read_text(), log.read_text()
    assert sock_path.is_socket()  # systemd's socket, not the daemon's to remove
    assert not Path(env["AADHELPER_SOCKET"]).exists()


@needs_activate
def test_daemon_notifies_ready_reloading_and_stopping(home: dict[str, str], tmp_path: Path) -> None:
    """If the daemon runs with NOTIFY_SOCKET set (Type=notify), then systemd hears READY=1 once it listens,
    RELOADING=1 then READY=1 on SIGHUP (ExecReload=), and STOPPING=1 when SIGTERM stops it."""
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(tmp_path / "notify.sock"))
    sock_path = tmp_path / "activated.sock"
    log = tmp_path / "daemon.log"
    env = {**daemon_env(home, tmp_path), "NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
    with receiver, running(socket_activate(sock_path, [str(AADHELPER), "daemon"], env), env, log) as proc:
        # systemd-socket-activate execs the daemon on the first connection.
        connect_when_bound(sock_path, proc, log).close()
        before_stop = receive_until(receiver, "READY=1", proc, log)
        proc.send_signal(signal.SIGHUP)
        reload = receive_until(receiver, "RELOADING=1", proc, log)
        before_stop += reload + receive_until(receiver, "READY=1", proc, log)
        proc.send_signal(signal.SIGTERM)
        after_stop = receive_until(receiver, "STOPPING=1", proc, log)
        assert proc.wait(timeout=PATIENCE) == 0, log.read_text()
    assert not any("STOPPING=1" in message for message in before_stop)
    assert not any("READY=1" in message for message in after_stop)


def receive_until(receiver: socket.socket, line: str, proc: subprocess.Popen[bytes], log: Path) -> list[list[str]]:
    """Notify datagrams (as lines) up to and including the first that carries ``line``; fails fast if the
    daemon dies first (e.g. killed by a signal that arrived before it installed its handlers)."""
    messages: list[list[str]] = []
    receiver.settimeout(0.05)
    deadline = time.monotonic() + PATIENCE
    while not messages or line not in messages[-1]:
        try:
            messages.append(receiver.recv(4096).decode().split("\n"))
            continue
        except TimeoutError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            code = proc.returncode
            died = f"died ({signal.Signals(-code).name})" if code is not None and code < 0 else f"exit {code}"
            pytest.fail(f"no {line} after {messages}; daemon {died}; log:\n{log.read_text()}")
    return messages
