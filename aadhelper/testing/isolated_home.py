"""A throwaway home for daemons run by a harness (the benchmark, the fault suite): folders and environment.

What is kept of the caller's environment is what a private D-Bus session and the locale need; everything
aadhelper reads (config, state, socket) points under ``root``, and no git or terminal prompt can block.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: This installation's scripts (``aadhelper``, ``git-credential-aadhelper``).
VENV_BIN = Path(sys.executable).parent
#: What a harness keeps of the caller's environment.
KEPT = ("DBUS_SESSION_BUS_ADDRESS", "XDG_RUNTIME_DIR", "XDG_DATA_HOME", "LANG", "LC_ALL", "TERM", "TMPDIR")


def isolated_home(root: Path) -> dict[str, str]:
    """Make ``root``'s home, config, state and run folders (0700) and return the environment that uses them."""
    home = root / "home"
    for folder in (home, root / "config", root / "state", root / "run"):
        folder.mkdir(mode=0o700)
    env = {key: os.environ[key] for key in KEPT if key in os.environ}
    env.update(
        HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), XDG_STATE_HOME=str(home / ".local/state"),
        XDG_CACHE_HOME=str(home / ".cache"), PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        AADHELPER_STATE_DIR=str(root / "state"), AADHELPER_NO_AUTOSTART="1",
        GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0")
    return env
