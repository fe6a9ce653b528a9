"""When clients may start the daemon themselves, when they must not, and what they say when it fails.

The happy path (two racing clients, one daemon) is in tests/test_integration.py.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from aadhelper import autostart, client
from aadhelper.errors import DaemonNotRunning
from tests.harness import cli, wait_until


@pytest.fixture
def autostarted_daemons(isolated_env: dict[str, str]) -> Iterator[None]:
    """Stops (SIGTERM) whatever daemon a test's client started on the isolated socket, even when the test fails."""
    yield
    try:
        pid = client.ping(socket_path=isolated_env["AADHELPER_SOCKET"])["pid"]
    except DaemonNotRunning:
        return
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not os.path.exists(isolated_env["AADHELPER_SOCKET"]), timeout=30)


def test_config_can_turn_autostart_off(isolated_env: dict[str, str]) -> None:
    """If the config says `autostart = false`, then a client with no daemon exits 8 and starts none."""
    config = Path(isolated_env["AADHELPER_CONFIG"])
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text('[daemon]\nautostart = false\n\n[profiles.p]\ntenant = "t.example.com"\nclient_id = "c"\n'
                      'scopes = ["https://graph.microsoft.com/.default"]\n')
    result = cli(isolated_env, "header", "p")
    assert result.returncode == 8, result.stderr
    assert "aadhelper daemon" in result.stderr
    assert not os.path.exists(isolated_env["AADHELPER_SOCKET"])


def test_environment_can_turn_autostart_off(isolated_env: dict[str, str]) -> None:
    """If AADHELPER_NO_AUTOSTART=1, then a client with no daemon exits 8 and starts none."""
    env = dict(isolated_env, AADHELPER_NO_AUTOSTART="1")
    assert cli(env, "token").returncode == 8
    assert not os.path.exists(env["AADHELPER_SOCKET"])


def test_systemd_managed_socket_is_left_to_systemd(isolated_env: dict[str, str]) -> None:
    """If the user enabled the systemd socket unit, then a client does not race systemd: it exits 8 and says how to
    start the unit."""
    wants = Path(isolated_env["XDG_CONFIG_HOME"], "systemd", "user", "sockets.target.wants")
    wants.mkdir(parents=True)
    (wants / "aadhelper.socket").symlink_to("/dev/null")
    result = cli(isolated_env, "header")
    assert result.returncode == 8
    assert "systemctl --user start aadhelper.socket" in result.stderr
    assert not os.path.exists(isolated_env["AADHELPER_SOCKET"])


def test_a_daemon_that_cannot_start_is_reported_with_its_last_log_line(isolated_env: dict[str, str],
                                                                      autostarted_daemons: None) -> None:
    """If the client starts a daemon that fails at once (a regular file sits at the socket path), then the client
    exits 8 with one line carrying the daemon's own last log line and the log's path, and the file is kept."""
    sock = Path(isolated_env["AADHELPER_SOCKET"])
    sock.parent.mkdir(mode=0o700)
    sock.write_text("not a socket")
    result = cli(isolated_env, "token")
    assert result.returncode == 8, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert "did not answer" in result.stderr and "is not a socket" in result.stderr, result.stderr
    log = Path(isolated_env["AADHELPER_STATE_DIR"], "daemon.log")
    assert f"see {log}" in result.stderr
    assert sock.read_text() == "not a socket"


def test_a_broken_config_still_autostarts_and_the_daemon_reports_it(isolated_env: dict[str, str],
                                                                    autostarted_daemons: None) -> None:
    """If the config file cannot be parsed, then the client still starts a daemon (the client cannot read the
    autostart setting), and the daemon's answer names the config error and the file (exit 3), not "no daemon"."""
    config = Path(isolated_env["AADHELPER_CONFIG"])
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("[daemon\nautostart = ")
    result = cli(isolated_env, "token", "p")
    assert result.returncode == 3, result.stderr
    assert result.stderr.count("\n") == 1 and str(config) in result.stderr
    assert client.ping(socket_path=isolated_env["AADHELPER_SOCKET"])["ok"] is True


@pytest.mark.parametrize(("content", "expected"), [
    (None, "no log"),
    ("", "no log output"),
    ("  \nfirst\nthe last line\n\n", "the last line"),
])
def test_failure_message_quotes_the_last_line_of_the_log(tmp_path: Path, content: str | None,
                                                         expected: str) -> None:
    """If a started daemon did not answer, then the message quotes the last non-blank line of its log, or says
    there is no log (output)."""
    log = tmp_path / "daemon.log"
    if content is not None:
        log.write_text(content)
    assert autostart._last_line(str(log)) == expected
