"""The config file broken while the real daemon runs (issue 9, "config file faults"): the daemon process keeps
serving from the last good configuration, cached tokens stay cached (the simulated authority sees no new request),
`aadhelper status` shows the error, and fixing the file clears it. Real parts as in test_integration: daemon
subprocess, HTTPS authority, secrets in the real Secret Service, the CLI as the user runs it."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from aadhelper.testing.authority import SimulatedAuthority

# The fixtures `app_secrets`, `authority` and `env`: two working profiles, `graph` and `other`, against the
# simulated authority (as in test_integration).
from tests.harness import (  # noqa: F401 -- two_app_*, two_profile_env: fixtures
    DaemonProcess,
    cli,
    in_order,
    token_of,
    two_app_authority,
    two_app_secrets,
    two_profile_env,
    wait_until,
)

pytestmark = pytest.mark.requires("secret-service")

#: Seconds a CLI call may take before the test calls the daemon stuck (a client's own limit is 60 s).
PROMPT = 20


def replace(path: Path) -> None:
    """Remove whatever is at ``path`` (file, symlink, FIFO or directory)."""
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    else:
        path.unlink()


def restore(path: Path, text: str) -> None:
    if path.exists() or path.is_symlink():
        replace(path)
    path.write_text(text)
    path.chmod(0o600)


#: name -> (break the file, words of the error, fix it or None to write the good text back).
BREAKS: dict[str, tuple[Callable[[Path], object], str, Callable[[Path], object] | None]] = {
    "garbage": (lambda p: p.write_text("[profiles.graph\ntenant = "), "not valid TOML", None),
    "invalid value": (lambda p: p.write_text(p.read_text() + "min_valid = -5\n"), "'min_valid'", None),
    # The daemon's own hint is `chmod o-w`: it must be all it takes (regression: the error stayed cached).
    "world-writable": (lambda p: p.chmod(0o666), "writable by everyone", lambda p: p.chmod(0o600)),
    "huge": (lambda p: os.truncate(p, 64 * 1024**2), "over the limit", None),
    "unreadable": (in_order(replace, lambda p: p.symlink_to(p)), "cannot read the config file", None),
    "deleted": (replace, "the config file is missing", None),
    "dangling symlink": (in_order(replace, lambda p: p.symlink_to(p.parent / "gone.toml")), "is a symlink to", None),
    "FIFO": (in_order(replace, lambda p: os.mkfifo(p, 0o600)), "is a FIFO", None),
    "directory": (in_order(replace, lambda p: p.mkdir()), "is a directory", None),
}


def status(env: dict[str, str]) -> tuple[int, str]:
    result = cli(env, "status", timeout=PROMPT)
    return result.returncode, result.stdout


@pytest.mark.parametrize("how", list(BREAKS))
def test_broken_config_keeps_serving_the_last_good_one(env: dict[str, str],
                                                       authority: SimulatedAuthority,
                                                       how: str) -> None:
    """If the config file breaks (in each of these ways) while a token is cached, then the daemon still serves that
    token without asking the authority, serves the other configured profile, shows the error in `status`, answers
    an unknown profile with exit 3 naming the file's error; and once the file is fixed the error is gone and the
    cached token is still the one served."""
    config = Path(env["AADHELPER_CONFIG"])
    good_text = config.read_text()
    breaker, words, fixer = BREAKS[how]
    with DaemonProcess(env):
        cached = token_of(env, "graph")
        requests = authority.count(grant_type="client_credentials")
        try:
            breaker(config)
            assert cli(env, "token", "graph", timeout=PROMPT, check=True).stdout.strip() == cached
            assert authority.count(grant_type="client_credentials") == requests
            code, shown = status(env)
            config_line = next(line for line in shown.splitlines() if line.startswith("config: "))
            assert code == 3 and words in config_line and str(config) in config_line
            assert "still serving the last good configuration" in shown
            assert "graph (default)" in shown and "other" in shown
            unknown = cli(env, "token", "nosuch", timeout=PROMPT)
            assert unknown.returncode == 3 and words in unknown.stderr
            assert unknown.stdout == "" and len(unknown.stderr.strip().splitlines()) == 1
            # A profile of the last good configuration that had no token yet is served too.
            assert token_of(env, "other") != cached
            assert authority.count(grant_type="client_credentials") == requests + 1
        finally:
            # A daemon stuck opening the FIFO (the defect) is released, so the test ends instead of hanging.
            with contextlib.suppress(OSError):
                os.close(os.open(config, os.O_WRONLY | os.O_NONBLOCK))
        if fixer is None:
            restore(config, good_text)
        else:
            fixer(config)
        code, shown = status(env)
        assert code == 0 and "config:" not in shown, shown
        assert token_of(env, "graph") == cached
        assert authority.count(grant_type="client_credentials") == requests + 1


def test_config_broken_from_the_start_fails_requests_with_one_line(env: dict[str, str]) -> None:
    """If the config file is broken before the daemon ever read a good one, then token requests fail with exit 3
    and one line naming the file, and `status` shows the error without a last good configuration."""
    config = Path(env["AADHELPER_CONFIG"])
    config.write_text("[profiles.graph\n")
    with DaemonProcess(env):
        result = cli(env, "token", "graph", timeout=PROMPT)
        assert result.returncode == 3 and len(result.stderr.strip().splitlines()) == 1
        assert str(config) in result.stderr and "not valid TOML" in result.stderr
        code, shown = status(env)
        assert code == 3 and "config: " in shown and "still serving" not in shown


def test_deleted_config_is_dropped_by_a_reload(env: dict[str, str]) -> None:
    """If the config file is deleted on purpose and the daemon is told to reload (SIGHUP, as `systemctl --user
    reload` sends), then its profiles are gone (exit 3, unknown profile) and status shows no error."""
    config = Path(env["AADHELPER_CONFIG"])
    with DaemonProcess(env) as daemon:
        token_of(env, "graph")
        config.unlink()
        assert status(env)[0] == 3
        os.kill(daemon.pid, signal.SIGHUP)
        wait_until(lambda: status(env)[0] == 0)
        result = cli(env, "token", "graph", timeout=PROMPT)
        assert result.returncode == 3 and "profile 'graph' is not configured" in result.stderr
        assert "no profiles configured" in status(env)[1]


def test_a_profile_reload_while_the_config_is_broken_drops_its_tokens(env: dict[str, str],
                                                                      authority: SimulatedAuthority) -> None:
    """If the config file is broken and a profile is reloaded by name (what `secret set` and `login` send after
    storing a new credential), then the daemon drops that profile's tokens all the same, though the reload reports
    the file's error: the next request asks the authority afresh."""
    from aadhelper import client
    from aadhelper.errors import ConfigError

    config = Path(env["AADHELPER_CONFIG"])
    with DaemonProcess(env) as daemon:
        first = token_of(env, "graph")
        config.write_text("[profiles.graph\ntenant = ")
        with pytest.raises(ConfigError):
            client.reload("graph", socket_path=daemon.socket_path)
        assert token_of(env, "graph") != first
        assert authority.count(grant_type="client_credentials") == 2
