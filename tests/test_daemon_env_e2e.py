"""End to end: the daemon does not inherit the environment or working directory of whoever started it, and its
fetches use a proxy only from the configuration or the opted-in start environment (issue 10 §2).

Real daemon processes, the simulated authority over real HTTPS, secrets in the real Secret Service, and a
loopback "proxy" that records what reaches it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aadhelper import client
from aadhelper.testing.authority import SimulatedAuthority

# The fixtures these tests share with the integration tests (`app_secrets`, `authority`, `env`): two client-secret
# profiles against the simulated authority, secrets in the real Secret Service; and the loopback proxy that records
# what reaches it (`counting_proxy`).
from tests.harness import (  # noqa: F401 -- counting_proxy_server, two_app_*, two_profile_env: fixtures
    AADHELPER,
    CountingProxy,
    DaemonProcess,
    cli,
    counting_proxy_server,
    sensitive,
    two_app_authority,
    two_app_secrets,
    two_profile_env,
    wait_until,
)

pytestmark = pytest.mark.requires("secret-service")


def with_daemon_config(env: dict[str, str], lines: str) -> None:
    """Append a [daemon] table to the test's config file."""
    with open(env["AADHELPER_CONFIG"], "a") as config:
        config.write(f"\n[daemon]\n{lines}\n")


def authority_port(authority: SimulatedAuthority) -> int:
    return int(authority.url.rsplit(":", 1)[1].split("/")[0])


def status_json(env: dict[str, str]) -> dict[str, Any]:
    """`aadhelper status --json` (its exit code reflects the profiles' last errors: not checked)."""
    status: dict[str, Any] = json.loads(cli(env, "status", "--json").stdout)
    return status


def test_autostarted_daemon_ignores_the_first_clients_proxy_variables_and_directory(
        env: dict[str, str], authority: SimulatedAuthority, counting_proxy: CountingProxy,
        tmp_path: Path, require: Callable[[str], None]) -> None:
    """If the first client autostarts the daemon from a directory it then deletes, with HTTPS_PROXY/HTTP_PROXY
    naming a proxy and FOO=bar, then the daemon's fetches go straight to the authority (the proxy sees nothing),
    status says "proxy: none", the daemon's cwd is / (not the deleted directory), and the environment it hands its
    processes (a restarted fetcher's /proc/PID/environ) has no proxy variable and no FOO."""
    require("root")  # /proc/PID/environ of a non-dumpable process
    starter = {k: v for k, v in env.items() if k != "AADHELPER_NO_AUTOSTART"}
    starter.update(HTTPS_PROXY=counting_proxy.url, HTTP_PROXY=counting_proxy.url, https_proxy=counting_proxy.url,
                   ALL_PROXY=counting_proxy.url, FOO="bar")
    workdir = tmp_path / "first-client-cwd"
    workdir.mkdir()
    first = subprocess.run([AADHELPER, "header", "graph"], env=starter, cwd=workdir, capture_output=True, text=True,
                           timeout=60)
    pid = client.ping(socket_path=env["AADHELPER_SOCKET"])["pid"]
    try:
        assert first.returncode == 0, first.stderr
        sensitive(first.stdout.split()[-1])
        shutil.rmtree(workdir)
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        assert counting_proxy.lines == []
        assert authority.count(grant_type="client_credentials") == 1
        assert status_json(env)["daemon"]["proxy"]["source"] == "none"
        assert "proxy: none" in cli(env, "status", check=True).stdout.splitlines()
        # The forked fetcher shares the daemon's kernel copy of its start environment; one started afresh shows the
        # environment the daemon hands on.
        log_path = Path(env["AADHELPER_STATE_DIR"], "daemon.log")
        forked = int(re.findall(r"token fetcher forked \(pid (\d+)\)", log_path.read_text())[-1])
        os.kill(forked, signal.SIGKILL)
        wait_until(lambda: f"token fetcher (pid {forked}) stopped" in log_path.read_text())
        second = cli(env, "header", "other", check=True)
        sensitive(second.stdout.split()[-1])
        started = int(re.findall(r"token fetcher started \(pid (\d+)\)", log_path.read_text())[-1])
        names = {entry.split(b"=", 1)[0].decode() for entry in
                 Path(f"/proc/{started}/environ").read_bytes().split(b"\0") if entry}
        assert {"HOME", "PATH", "AADHELPER_SOCKET"} <= names
        assert not names & {"FOO", "HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "ALL_PROXY"}, names
        assert os.readlink(f"/proc/{started}/cwd") == "/"
        assert counting_proxy.lines == []
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not os.path.exists(env["AADHELPER_SOCKET"]))


def test_proxy_from_environment_opt_in_uses_the_daemons_start_environment(
        env: dict[str, str], authority: SimulatedAuthority, counting_proxy: CountingProxy) -> None:
    """If `proxy_from_environment = true` and the daemon started with HTTPS_PROXY, then its fetch goes to that proxy
    (a CONNECT to the authority's host:port) even for a client without the variable, the failure is one exit-7 line
    naming the proxy, and status says where the proxy came from."""
    with_daemon_config(env, "proxy_from_environment = true")
    with DaemonProcess(dict(env, HTTPS_PROXY=counting_proxy.url)):
        result = cli(env, "header", "graph")
        assert result.returncode == 7, result.stderr
        assert f"through the proxy {counting_proxy.url} (HTTPS_PROXY of the daemon's start environment)" \
            in result.stderr
        assert counting_proxy.lines[:1] == [f"CONNECT 127.0.0.1:{authority_port(authority)} HTTP/1.1"]
        assert authority.count(grant_type="client_credentials") == 0
        assert status_json(env)["daemon"]["proxy"] == {
            "source": "environment", "variable": "HTTPS_PROXY", "url": counting_proxy.url, "no_proxy": []}


def test_config_proxy_is_used_and_its_password_never_shown(env: dict[str, str], authority: SimulatedAuthority,
                                                           counting_proxy: CountingProxy) -> None:
    """If `[daemon] proxy` names a proxy with user:password, then the daemon (started without any proxy variable)
    sends its fetch there, and neither the client's error, `status` nor the daemon's log shows the password."""
    password = "proxy-pw-" + os.urandom(6).hex()
    sensitive(password)  # the harness fails the test if it shows up in a daemon log or a CLI's stderr
    url = counting_proxy.url.replace("http://", f"http://me:{password}@")
    with_daemon_config(env, f'proxy = "{url}"\nno_proxy = "login.example.com"')
    with DaemonProcess(env):
        result = cli(env, "header", "graph")
        assert result.returncode == 7, result.stderr
        assert f"through the proxy http://***@127.0.0.1:{counting_proxy.port} (config [daemon] proxy)" \
            in result.stderr
        assert counting_proxy.lines[:1] == [f"CONNECT 127.0.0.1:{authority_port(authority)} HTTP/1.1"]
        status = cli(env, "status").stdout + json.dumps(status_json(env))
        assert f"proxy: from config: http://***@127.0.0.1:{counting_proxy.port} (not for login.example.com)" \
            in status
        assert password not in status


def test_a_daemon_started_with_sigterm_blocked_still_stops_on_sigterm(isolated_env: dict[str, str]) -> None:
    """If the daemon is started by a thread that blocks SIGTERM, SIGINT and SIGHUP (as `aadhelper exec`'s endpoint
    threads do when they autostart one; the mask is inherited), then SIGTERM still stops it cleanly (exit 0, not
    the SIGKILL the harness falls back to)."""
    env = dict(isolated_env, AADHELPER_NO_AUTOSTART="1")
    blocked = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        daemon = DaemonProcess(env).spawn()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    client.wait_for_daemon(daemon.socket_path, 20.0, exited=lambda: not daemon.alive(), grace=0.0)
    assert daemon.stop(timeout=10.0) == 0, daemon.log()[-2000:]
