"""What a new user's walk through the CLI found (issue 14 §2), each pinned by the bug's name: a secret "stored" in
a memory store that dies with the command, units removed before they were disabled, exit codes that did not match
the failure (0 for an unknown profile, 9 for an empty scope), an ignored --timeout, a username the helper never
sends, messages that did not name the socket or the cause of a failed connect, and keyring's own advice cut off
inside ours."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from aadhelper.cli import main
from aadhelper.cli import service as service_cli
from aadhelper.errors import ConfigError
from aadhelper.grants.http import _transport_error
from aadhelper.secret_store import MemorySecretStore
from aadhelper.testing import FakeDaemon, SimulatedAuthority
from aadhelper.tokens import Secret
from tests.harness import (  # noqa: F401 -- user_app_authority, user_profile_env: fixtures
    ADO_PROFILE,
    GRAPH_PROFILE,
    cli,
    cli_env,
    one_error_line,
    run,
    run_in_process,
    user_app_authority,
    user_profile_env,
)

SECRET = "Zq8~fake.client-secret_0123456789abcdefXYZ"


@pytest.fixture
def memory_env(isolated_env: dict[str, str]) -> dict[str, str]:
    """Client-secret profile 'graph' and user profile 'ado' in tmp_path; AADHELPER_SECRET_STORE=memory."""
    env = cli_env(isolated_env)
    assert run(env, *GRAPH_PROFILE).returncode == 0
    assert run(env, *ADO_PROFILE).returncode == 0
    return env


@pytest.fixture
def store(memory_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> MemorySecretStore:
    return run_in_process(memory_env, monkeypatch)


# -- AADHELPER_SECRET_STORE=memory ------------------------------------------------------------------------------


@pytest.mark.parametrize("args, what", [(["secret", "set", "graph"], "the client secret"),
                                        (["login", "ado"], "the sign-in")])
def test_memory_store_refuses_to_store_what_it_would_lose(memory_env: dict[str, str], args: list[str],
                                                          what: str) -> None:
    """If AADHELPER_SECRET_STORE=memory, then `secret set` and `login` refuse (exit 3, one line saying why and how
    to use the keyring) instead of reporting a secret stored that dies with the command."""
    result = run(memory_env, *args, stdin=SECRET + "\n")
    assert result.returncode == 3
    line = one_error_line(result)
    assert "AADHELPER_SECRET_STORE=memory" in line and what in line and "unset AADHELPER_SECRET_STORE" in line
    assert "stored" not in line.split(":", 2)[1] and SECRET not in line


# -- logout / secret delete of an unknown or wrong-kind profile ----------------------------------------------------


@pytest.mark.parametrize("args, words", [
    (["logout", "nobody"], "profile 'nobody' is not configured"),
    (["logout", "graph"], "key 'credential' is 'client_secret'"),
    (["secret", "delete", "nobody"], "profile 'nobody' is not configured"),
    (["secret", "delete", "ado"], "key 'credential' is 'user'"),
])
def test_deleting_for_an_unknown_or_wrong_kind_profile_exits_3(store: MemorySecretStore,
                                                               capsys: pytest.CaptureFixture[str],
                                                               args: list[str], words: str) -> None:
    """If `logout` or `secret delete` names a profile that is not configured or does not use that credential, and
    nothing is stored for it, then it fails with exit 3 and one line, like every other command."""
    assert main(args) == 3
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1


def test_a_leftover_secret_of_a_removed_profile_is_still_deleted(store: MemorySecretStore,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """If a profile was removed from the file by hand but its secret is still stored, then `secret delete` deletes
    it (exit 0) and notes that the profile is not configured."""
    store.set("gone", "client_secret", Secret(SECRET))
    assert main(["secret", "delete", "gone"]) == 0
    assert store.get("gone", "client_secret") is None
    assert "profile 'gone' is not configured" in capsys.readouterr().err


# -- empty values are usage errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["header", "--scope", ""], ["token", "--scope="], ["header", ""],
                                  ["token", "graph", "--scope", "a b"], ["login", "ado", "--scope", ""]])
def test_an_empty_scope_or_profile_is_a_usage_error(memory_env: dict[str, str], args: list[str]) -> None:
    """If a scope or profile name on the command line is empty (or has a space), then the command exits 2 with one
    usage line, before asking any daemon (which answered it with a protocol error, exit 9)."""
    with FakeDaemon(memory_env["AADHELPER_SOCKET"]) as daemon:
        result = run(memory_env, *args)
    assert result.returncode == 2, result.stderr
    assert "non-empty" in one_error_line(result)
    assert daemon.requests == []


# -- exit 9 names the socket -------------------------------------------------------------------------------------


def test_a_protocol_error_names_the_socket(memory_env: dict[str, str]) -> None:
    """If the process on the socket speaks another protocol version, then the exit-9 line names that socket."""
    path = memory_env["AADHELPER_SOCKET"]
    with FakeDaemon(path, lambda request: {"v": 99, "ok": True}):
        result = run(memory_env, "header", "graph")
    assert result.returncode == 9
    line = one_error_line(result)
    assert f"the daemon on {path}" in line and "protocol version 99" in line


# -- the git username of a user profile ------------------------------------------------------------------------


def test_help_and_show_name_the_signed_in_account_as_git_username(memory_env: dict[str, str]) -> None:
    """If a user profile maps a git URL without a username, then `profile show` (text and JSON) and the help say
    git gets the signed-in account, as the helper sends, not the placeholder 'aadhelper'."""
    assert run(memory_env, "profile", "git-url", "add", "ado", "https://dev.azure.com/fabrikam/").returncode == 0
    shown = run(memory_env, "profile", "show", "ado")
    assert "https://dev.azure.com/fabrikam/ (username the signed-in account)" in shown.stdout
    assert "(username me@contoso.com)" in shown.stdout  # an explicit username stays
    as_json = run(memory_env, "profile", "show", "ado", "--json")
    assert '"username": null' in as_json.stdout and '"aadhelper"' not in as_json.stdout
    for args in (["profile", "add", "--help"], ["profile", "git-url", "add", "--help"]):
        text = " ".join(run(memory_env, *args).stdout.split())
        assert "'aadhelper'" not in text and "signed-in account" in text


# -- service uninstall disables first ------------------------------------------------------------------------------


@pytest.fixture
def fake_systemctl(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A `systemctl` on PATH that logs its arguments and whether the socket unit file existed at that moment;
    it fails `show-environment` when the file `down` exists (no user manager)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "systemctl.log"
    bin_dir.mkdir()
    script = bin_dir / "systemctl"
    units = tmp_path / "env" / "config" / "systemd" / "user"
    script.write_text(f"""#!/bin/sh
[ "$2" = show-environment ] && [ -e {tmp_path}/down ] && exit 1
if [ -e {units}/aadhelper.socket ]; then unit=present; else unit=absent; fi
echo "$* ($unit)" >> {log}
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    yield bin_dir, log


def test_uninstall_disables_the_units_before_removing_them(isolated_env: dict[str, str],
                                                           fake_systemctl: tuple[Path, Path]) -> None:
    """If the user manager answers, then `service uninstall` runs `systemctl --user disable --now` while the unit
    files still exist, then removes them, then reloads the manager."""
    bin_dir, log = fake_systemctl
    env = dict(isolated_env, PATH=f"{bin_dir}:{os.environ['PATH']}")
    assert cli(env, "service", "install").returncode == 0
    result = cli(env, "service", "uninstall")
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == [
        "--user show-environment (present)",
        "--user disable --now aadhelper.socket aadhelper.service (present)",
        "--user daemon-reload (absent)",
    ]
    assert "Stopped and disabled" in result.stdout


def test_uninstall_without_a_user_manager_removes_the_enablement_links(isolated_env: dict[str, str],
                                                                       fake_systemctl: tuple[Path, Path],
                                                                       tmp_path: Path) -> None:
    """If no user manager answers, then `service uninstall` removes the sockets.target.wants link (what disable
    would change on disk) with the units, and says nothing could be stopped from here."""
    bin_dir, log = fake_systemctl
    (tmp_path / "down").touch()
    env = dict(isolated_env, PATH=f"{bin_dir}:{os.environ['PATH']}")
    assert cli(env, "service", "install").returncode == 0
    units = Path(env["XDG_CONFIG_HOME"]) / "systemd" / "user"
    (units / "sockets.target.wants").mkdir()
    link = units / "sockets.target.wants" / "aadhelper.socket"
    link.symlink_to(units / "aadhelper.socket")
    result = cli(env, "service", "uninstall")
    assert result.returncode == 0, result.stderr
    assert not link.is_symlink() and not (units / "aadhelper.socket").exists()
    assert "nothing was stopped" in result.stdout
    assert "disable" not in log.read_text() if log.exists() else True


def test_uninstall_stops_when_disable_fails(tmp_path: Path) -> None:
    """If `systemctl --user disable` fails, then uninstall removes nothing and says what systemctl said."""
    units = tmp_path / "units"
    service_cli.install(str(units), ["/usr/bin/aadhelper"])

    def systemctl(*args: str) -> subprocess.CompletedProcess[str]:
        code = 1 if "disable" in args else 0
        return subprocess.CompletedProcess(["systemctl", *args], code, "", "Failed to disable: Access denied\n")

    with pytest.raises(ConfigError, match="Access denied; nothing was removed"):
        service_cli.uninstall(str(units), systemctl=systemctl)
    assert (units / service_cli.SOCKET_UNIT).exists()


# -- login --timeout applies to the device code ------------------------------------------------------------------


@pytest.mark.requires("secret-service")
def test_login_timeout_ends_a_device_code_sign_in(env: dict[str, str], authority: SimulatedAuthority) -> None:
    """If `login --timeout 1` runs without --browser and nobody signs in, then the device code flow ends after that
    time (exit 6, one line naming --timeout) instead of waiting for the code to expire."""
    result = cli(env, "login", "me", "--timeout", "1")
    assert result.returncode == 6, result.stderr
    assert "no sign-in within 1 s (--timeout)" in result.stderr.splitlines()[-1]


# -- why a connect failed ----------------------------------------------------------------------------------------


async def _connect_error(url: str) -> httpx.HTTPError:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        try:
            await client.post(url, data={})
        except httpx.HTTPError as exc:
            return exc
    raise AssertionError(f"{url} answered")


async def test_a_failed_connect_says_refused_or_dns_or_timed_out() -> None:
    """If connecting to the authority fails, then the message tells a refused connection from a name that does not
    resolve and from a connect timeout."""
    with socket.socket() as probe:  # a port nothing listens on: bound, never listening
        probe.bind(("127.0.0.1", 0))
        refused = await _connect_error(f"https://127.0.0.1:{probe.getsockname()[1]}/t")
    with trio.fail_after(30):
        dns = await _connect_error("https://no-such-host.invalid/t")
    messages = {kind: _transport_error(exc, "https://login.example/t", "graph", replied=False).one_line()
                for kind, exc in (("refused", refused), ("dns", dns), ("timeout", httpx.ConnectTimeout("")))}
    assert "cannot reach the authority" in messages["refused"] and "connection refused" in messages["refused"]
    assert "does not resolve (DNS" in messages["dns"]
    assert "connecting timed out" in messages["timeout"]


# -- keyring's advice stays out of our line ---------------------------------------------------------------------


def test_no_keyring_is_one_clean_line(memory_env: dict[str, str]) -> None:
    """If keyring has no usable backend, then the error is our one line with our fix, without keyring's own advice
    cut off in the middle."""
    env = {k: v for k, v in memory_env.items() if k != "AADHELPER_SECRET_STORE"}
    env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
    result = run(env, "secret", "set", "graph", stdin=SECRET)
    assert result.returncode == 4
    line = one_error_line(result)
    assert "keyrings.alt" not in line and "..." not in line
    assert "no usable OS keyring" in line and "PYTHON_KEYRING_BACKEND" in line


# -- SOCKS proxies ---------------------------------------------------------------------------------------------------


def test_a_socks_proxy_in_the_environment_is_one_config_line(memory_env: dict[str, str]) -> None:
    """If the daemon takes its proxy from the environment and ALL_PROXY is socks5://, then commands fail with one
    configuration line naming the variable (exit 3), not an internal error."""
    config = Path(memory_env["AADHELPER_CONFIG"])
    config.write_text(config.read_text() + "\n[daemon]\nproxy_from_environment = true\n")
    env = dict(memory_env, ALL_PROXY="socks5://127.0.0.1:1080")
    for args in (["login", "ado"], ["profile", "show", "graph"]):
        result = run(env, *args)
        assert result.returncode == 3, result.stderr
        line = one_error_line(result)
        assert "ALL_PROXY is a SOCKS proxy" in line

