"""`aadhelper daemon start|stop|restart` and `aadhelper logs` (issue 14 §2): the real daemon stopped through its
socket, systemd's daemon through `systemctl --user` (a recording stand-in: no user manager runs here), an older
daemon through SIGTERM, the log read and followed where the daemon writes it, and its level raised by
AADHELPER_LOG_LEVEL or `[daemon] log_level`."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aadhelper.config import parse_config
from aadhelper.errors import ConfigError
from aadhelper.testing import FakeDaemon
from tests.harness import AADHELPER, DaemonProcess, cli, cli_env, one_error_line, wait_until


@pytest.fixture
def env(isolated_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """No profiles, the memory store, no autostart; any daemon a test started through the CLI is stopped after it."""
    clean = cli_env(isolated_env)
    yield clean
    cli(clean, "daemon", "stop")


def _log_file(env: dict[str, str]) -> Path:
    return Path(env["AADHELPER_STATE_DIR"]) / "daemon.log"


def test_stop_ends_the_daemon_through_its_socket(env: dict[str, str]) -> None:
    """If a daemon runs, then `daemon stop` asks it through the socket, waits until its process ended (exit 0),
    and says so; the daemon logs who asked; a second stop finds nothing to stop."""
    daemon = DaemonProcess(env).start()
    try:
        result = cli(env, "daemon", "stop")
        assert result.returncode == 0, result.stderr
        socket_path = env["AADHELPER_SOCKET"]
        assert one_error_line(result) == f"aadhelper: stopped the daemon (pid {daemon.pid}) on {socket_path}"
        assert daemon.process is not None and daemon.process.wait(timeout=30) == 0
        assert "a client asked the daemon to stop" in daemon.log()
    finally:
        daemon.stop()
    again = cli(env, "daemon", "stop")
    assert again.returncode == 0 and "nothing to stop" in again.stderr


def test_start_and_restart_run_a_detached_daemon_logging_to_the_file(env: dict[str, str]) -> None:
    """If `daemon start` runs with AADHELPER_LOG_LEVEL=debug, then a detached daemon answers, logs DEBUG lines to the
    autostart file that `aadhelper logs` shows; `daemon restart` replaces it with another process."""
    started = cli(dict(env, AADHELPER_LOG_LEVEL="debug"), "daemon", "start")
    assert started.returncode == 0, started.stderr
    assert str(_log_file(env)) in started.stderr
    first = cli(env, "status", "--json")
    logs = cli(env, "logs", "-n", "1000")
    assert logs.returncode == 0 and " DEBUG " in logs.stdout and "listening on" in logs.stdout
    restarted = cli(env, "daemon", "restart")
    assert restarted.returncode == 0, restarted.stderr
    assert "stopped the daemon" in restarted.stderr and "started the daemon" in restarted.stderr
    assert cli(env, "status", "--json").stdout != first.stdout
    assert '"kind": "file"' in cli(env, "status", "--json").stdout


@pytest.mark.parametrize("setting, env_level, shown, hidden", [
    ('log_level = "warning"', None, None, " INFO "),
    ('log_level = "debug"', None, " DEBUG ", None),
    ('log_level = "debug"', "error", None, " INFO "),
])
def test_log_level_from_config_or_environment(env: dict[str, str], setting: str, env_level: str | None,
                                              shown: str | None, hidden: str | None) -> None:
    """If `[daemon] log_level` or AADHELPER_LOG_LEVEL (which wins) is set, then the started daemon logs at that
    level."""
    Path(env["AADHELPER_CONFIG"]).parent.mkdir(parents=True, exist_ok=True)
    Path(env["AADHELPER_CONFIG"]).write_text(f"[daemon]\n{setting}\n")
    start_env = dict(env, AADHELPER_LOG_LEVEL=env_level) if env_level else env
    assert cli(start_env, "daemon", "start").returncode == 0
    assert cli(env, "daemon", "stop").returncode == 0
    text = _log_file(env).read_text()
    assert shown is None or shown in text
    assert hidden is None or hidden not in text


def test_a_bad_log_level_is_one_config_error() -> None:
    """If the log level in the file or the environment is not a level, then parsing fails naming the key or
    variable and the levels."""
    with pytest.raises(ConfigError, match="key 'log_level' must be one of error, warning, info, debug"):
        parse_config('[daemon]\nlog_level = "loud"\n', "c.toml", {})
    with pytest.raises(ConfigError, match="AADHELPER_LOG_LEVEL must be one of"):
        parse_config("", "c.toml", {"AADHELPER_LOG_LEVEL": "trace"})


def test_logs_follows_the_file(env: dict[str, str]) -> None:
    """If `logs -f` runs, then it prints the last lines, then each line appended later, until interrupted."""
    log = _log_file(env)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("one\ntwo\nthree\n")
    shown = cli(env, "logs", "-n", "2")
    assert (shown.returncode, shown.stdout) == (0, "two\nthree\n")
    follower = subprocess.Popen([AADHELPER, "logs", "-f", "-n", "1"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        assert follower.stdout is not None
        assert follower.stdout.readline() == "three\n"
        with log.open("a") as file:
            file.write("four\n")
        assert follower.stdout.readline() == "four\n"
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(timeout=30)


# -- systemd and older daemons ------------------------------------------------------------------------------------


@pytest.fixture
def systemctl_log(tmp_path: Path, env: dict[str, str]) -> Path:
    """A `systemctl` first on env's PATH that records its arguments and succeeds."""
    bin_dir, log = tmp_path / "bin", tmp_path / "systemctl.log"
    bin_dir.mkdir()
    script = bin_dir / "systemctl"
    script.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    env["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
    return log


def _status(socket_activated: bool, pid: int) -> Any:
    def answer(request: dict[str, Any]) -> dict[str, Any]:
        if request["op"] == "ping":
            return {"v": 1, "ok": True, "pid": pid, "socket_activated": socket_activated}
        return {"v": 1, "ok": False, "error": {"code": "protocol", "message": f"unknown operation {request['op']!r}"}}

    return answer


@pytest.mark.parametrize("verb, expected", [("stop", "--user stop aadhelper.service"),
                                            ("restart", "--user restart aadhelper.service")])
def test_a_socket_activated_daemon_is_managed_through_systemctl(env: dict[str, str], systemctl_log: Path,
                                                               verb: str, expected: str) -> None:
    """If the daemon was socket-activated by systemd, then `daemon stop`/`restart` act through `systemctl --user`
    and say so in systemctl's words, without asking the daemon itself (its socket would start it again)."""
    with FakeDaemon(env["AADHELPER_SOCKET"], _status(True, 4242)) as daemon:
        result = cli(env, "daemon", verb)
    assert result.returncode == 0, result.stderr
    assert systemctl_log.read_text().splitlines() == ["--user show-environment", expected]
    assert f"`systemctl {expected}`" in result.stderr
    assert [r["op"] for r in daemon.requests] == ["ping"]


def test_a_daemon_without_the_stop_operation_gets_sigterm(env: dict[str, str]) -> None:
    """If the daemon on the socket predates the stop operation, then `daemon stop` sends its pid SIGTERM and waits
    until that process is gone."""
    older = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        with FakeDaemon(env["AADHELPER_SOCKET"], _status(False, older.pid)):
            result = cli(env, "daemon", "stop")
        assert result.returncode == 0, result.stderr
        assert older.wait(timeout=30) == -signal.SIGTERM
    finally:
        older.kill()
        older.wait()


def test_a_broken_daemon_connection_points_at_the_log(env: dict[str, str]) -> None:
    """If the process on the socket closes the connection without a reply, then the error names where the daemon's
    log is (`aadhelper logs` and the autostart file) and how to restart it."""
    path = env["AADHELPER_SOCKET"]
    Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()

    def close_each() -> None:
        for _ in range(10):
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.close()

    thread = threading.Thread(target=close_each, daemon=True)
    thread.start()
    try:
        result = cli(env, "header", "graph")
    finally:
        server.close()
    assert result.returncode == 8
    line = one_error_line(result)
    assert "`aadhelper logs`" in line and str(_log_file(env)) in line and "`aadhelper daemon restart`" in line


def test_stop_waits_at_most_its_timeout(env: dict[str, str]) -> None:
    """If the daemon accepts stop but its process does not end, then `daemon stop --timeout 1` fails with one line
    naming the pid, the log and `kill PID`."""
    stuck = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        def answer(request: dict[str, Any]) -> dict[str, Any]:
            return {"v": 1, "ok": True, "pid": stuck.pid}  # ping and stop alike

        with FakeDaemon(env["AADHELPER_SOCKET"], answer):
            result = cli(env, "daemon", "stop", "--timeout", "1")
        assert result.returncode == 1
        line = one_error_line(result)
        assert f"(pid {stuck.pid})" in line and f"`kill {stuck.pid}`" in line and "aadhelper logs" in line
    finally:
        stuck.kill()
        stuck.wait()
    wait_until(lambda: stuck.poll() is not None)
