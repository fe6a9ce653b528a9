"""doctor's check of the systemd user units, where systemd's tools are."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

from .. import paths
from ..cli.service import SERVICE_UNIT, SOCKET_UNIT, default_unit_dir, render_units, unit_state
from ..errors import ConfigError
from .findings import COMMAND_TIMEOUT, Finding, from_error


def check_systemd() -> list[Finding]:
    """The user units: installed (and for this installation?), enabled, running; only where systemd's tools are."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return [Finding("systemd", "ok", "systemd is not installed here: clients start the daemon themselves")]
    try:
        unit_dir = default_unit_dir()
        wanted = render_units(paths.console_script())
        states = {name: unit_state(os.path.join(unit_dir, name), text) for name, text in wanted.items()}
    except ConfigError as exc:  # no usable HOME, a unit file that cannot be read: say why, as a warning
        return [from_error("systemd", exc, "warn")]
    installed = any(state != "absent" for state in states.values())
    details: dict[str, Any] = {"unit_dir": unit_dir, "units": states}
    try:
        result = subprocess.run([systemctl, "--user", "show", "--property=UnitFileState,ActiveState",
                                 SOCKET_UNIT, SERVICE_UNIT], capture_output=True, text=True,
                                timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return [Finding("systemd", "warn", f"`systemctl --user` did not answer within {COMMAND_TIMEOUT:g} s",
                        details=details)]
    if result.returncode != 0:
        reason = result.stderr.strip().partition("\n")[0] or f"exit {result.returncode}"
        if not installed:
            return [Finding("systemd", "ok", f"no systemd user manager answers ({reason}) and the units are not "
                                             "installed: clients start the daemon themselves", details=details)]
        return [Finding("systemd", "warn", f"the units are installed in {unit_dir}, but no systemd user manager "
                                           f"answers ({reason})",
                        "log in through a session that runs `systemd --user` (or `loginctl enable-linger`), then "
                        f"`systemctl --user enable --now {SOCKET_UNIT}`", details=details)]
    socket_state, service_state = _unit_properties(result.stdout)
    details.update(socket=socket_state, service=service_state)
    if not installed:
        return [Finding("systemd", "ok", "the user units are not installed (optional: `aadhelper service install`); "
                                         "clients start the daemon themselves", details=details)]
    if service_state.get("ActiveState") == "failed":
        return [Finding("systemd", "fail", f"{SERVICE_UNIT} failed",
                        f"see `journalctl --user -u {SERVICE_UNIT}`, then "
                        f"`systemctl --user restart {SERVICE_UNIT}`", details=details)]
    if socket_state.get("UnitFileState") != "enabled":
        return [Finding("systemd", "warn", f"{SOCKET_UNIT} is installed but not enabled "
                                           f"({socket_state.get('UnitFileState') or 'unknown'})",
                        f"`systemctl --user daemon-reload` then `systemctl --user enable --now {SOCKET_UNIT}`",
                        details=details)]
    if any(state == "ours" for state in states.values()):
        return [Finding("systemd", "warn", f"the units in {unit_dir} run another aadhelper installation than this "
                                           "one", "`aadhelper service install`, then `systemctl --user daemon-reload`",
                        details=details)]
    return [Finding("systemd", "ok", f"{SOCKET_UNIT} enabled ({socket_state.get('ActiveState')}), "
                                     f"{SERVICE_UNIT} {service_state.get('ActiveState')}", details=details)]


def _unit_properties(output: str) -> tuple[dict[str, str], dict[str, str]]:
    """``systemctl show`` prints one block of KEY=value lines per unit, blocks separated by a blank line."""
    blocks = [dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
              for block in output.strip().split("\n\n")]
    blocks += [{}] * (2 - len(blocks))
    return blocks[0], blocks[1]
