"""When clients may start the daemon themselves, and when they must not."""

from __future__ import annotations

import os
from pathlib import Path

from tests.harness import cli


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
