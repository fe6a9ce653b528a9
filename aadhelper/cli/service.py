"""`aadhelper service install|uninstall|print`: the systemd user units that socket-activate the daemon.

The units' text lives here, rendered with the ``ExecStart=`` of this installation's console script, so a pipx or
venv install needs no data files. The copies checked in under ``systemd/`` are the same rendering with the portable
``/usr/bin/env aadhelper`` command (regenerate them with
``aadhelper service install --portable --unit-dir systemd --force``; a test compares them).

The first line of every rendered unit is a marker with a checksum of the rest. A unit whose checksum still matches
is ours to replace or remove; one the user edited (or wrote) is left alone unless ``--force`` is given, and the
message points at ``systemctl --user edit`` drop-ins, which survive reinstalls. Installing runs no ``systemctl``:
the commands to run are printed, so installing never starts anything behind the user's back. Uninstalling stops and
disables the units first (through ``systemctl --user`` when the user manager answers), then removes them.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Literal

from .. import paths
from ..errors import ConfigError
from .common import SERVICE_UNIT as SERVICE_UNIT  # re-exported: the unit names belong with the units
from .common import SOCKET_UNIT as SOCKET_UNIT
from .common import systemctl as run_systemctl
from .common import systemctl_failure, user_manager_answers

#: The command checked-in units run: whatever ``aadhelper`` the user manager's PATH finds.
PORTABLE_COMMAND = ("/usr/bin/env", "aadhelper")

_MARKER = "# Managed by `aadhelper service install` (sha256:{digest})."
_MARKER_RE = re.compile(r"# Managed by `aadhelper service install` \(sha256:(?P<digest>[0-9a-f]{16})\)\.")
_PREAMBLE = """\
# Customize it with a drop-in (`systemctl --user edit {name}`): `aadhelper service install`
# replaces this file on upgrades and refuses to overwrite it once edited (unless --force).
"""

# Modelled on gpg-agent's user units: the user manager owns the socket, so clients can connect before the daemon
# runs and across its restarts; the daemon starts on the first connection.
# No Documentation=: the project has no web page, and the manual page (`aadhelper man`) is not installed where
# man(1) finds it unless the user puts it there (systemd-analyze verify then warns of a man: link that fails).
_SOCKET_TEMPLATE = """\
[Unit]
Description=aadhelper credential daemon socket (Entra ID access tokens)

[Socket]
# %t is $XDG_RUNTIME_DIR: the same path `aadhelper` clients compute (aadhelper.paths.socket_path).
ListenStream=%t/aadhelper/daemon.sock
SocketMode=0600
DirectoryMode=0700
# Without a leftover socket file, clients report "not running" rather than "connection refused".
RemoveOnStop=yes

[Install]
WantedBy=sockets.target
"""

_SERVICE_TEMPLATE = """\
[Unit]
Description=aadhelper credential daemon (Entra ID access tokens)
Requires={socket}
After={socket}

[Service]
Type=notify
ExecStart={exec_start} daemon
# The daemon re-reads its configuration on SIGHUP and tells systemd with RELOADING=1 ... READY=1.
ExecReload=kill -HUP $MAINPID
Restart=on-failure
Environment=PYTHONUNBUFFERED=1
UMask=0077
# Lets the daemon and its token fetcher lock their memory against swap (aadhelper/process_setup.py): the limit is
# per process and must cover its whole address space (~110-125 MiB measured; resident ~30-40 MiB) and room to
# grow. A user manager cannot go above its own hard limit (often 8M): systemd then uses that, and the daemon logs
# that its memory is not locked.
LimitMEMLOCK=512M

# Hardening: only options enforced with seccomp or prctl, which a user manager applies without privileges.
# Namespace options (PrivateTmp=, ProtectSystem=, ProtectHome=, PrivateDevices=, ...) are left out on purpose:
# in a user unit they need unprivileged user namespaces (systemd >= 254 implies PrivateUsers= for them), which
# many systems disable, and the service would then fail to start.
NoNewPrivileges=yes
LockPersonality=yes
# CPython without a JIT never needs writable+executable memory; libffi (ctypes, cffi) uses static trampolines,
# keyring reaches the Secret Service through jeepney (pure Python), and cryptography is Rust.
MemoryDenyWriteExecute=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
RestrictNamespaces=yes
# AF_UNIX: the client socket and D-Bus (Secret Service); AF_INET/AF_INET6: HTTPS to the authority.
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
SystemCallArchitectures=native
SystemCallFilter=@system-service
# A refused system call becomes a Python OSError instead of killing the daemon with SIGSYS.
SystemCallErrorNumber=EPERM

[Install]
Also={socket}
"""

# Characters that need no quoting in an ExecStart= word (no specifier %, no variable $, no quote or space).
_PLAIN_WORD = re.compile(r"[A-Za-z0-9_@+=:,./$-]+")

State = Literal["absent", "current", "ours", "edited"]


def default_unit_dir() -> str:
    """Where systemd looks for a user's own units: ``${XDG_CONFIG_HOME:-~/.config}/systemd/user``."""
    config_home = os.environ.get("XDG_CONFIG_HOME", "")
    # The XDG spec says a relative XDG_CONFIG_HOME is invalid and must be ignored; systemd does the same.
    if not os.path.isabs(config_home):
        home = os.environ.get("HOME", "")
        if not os.path.isabs(home):
            raise ConfigError("neither XDG_CONFIG_HOME nor HOME is an absolute path",
                              hint="set HOME, or pass --unit-dir")
        config_home = os.path.join(home, ".config")
    return os.path.join(config_home, "systemd", "user")


def exec_start(command: Sequence[str]) -> str:
    """``command`` as the words of an ``ExecStart=`` line, quoted and escaped as systemd.service(5) reads them.

    ``%`` (specifiers) is doubled everywhere, ``$`` (variables) only in arguments: systemd does not substitute
    variables in the executable's path, and refuses quotes, backslashes and control characters there.
    """
    words = []
    for index, word in enumerate(command):
        if any(ord(char) < 32 or ord(char) == 127 for char in word):
            raise ConfigError(f"cannot put {word!r} in a unit file: it contains a newline or control character")
        if index == 0 and not os.path.isabs(word):
            # A relative name would be looked up in systemd's own search path, not this installation's.
            raise ConfigError(f"the unit needs the absolute path of the executable, not {word!r}")
        if index == 0 and any(char in word for char in "\"'\\"):
            raise ConfigError(f"systemd cannot run an executable whose path holds quotes or backslashes: {word}",
                              hint="install aadhelper under a plainer path, or use --portable")
        if index > 0:
            word = word.replace("$", "$$")
        if not _PLAIN_WORD.fullmatch(word):
            word = '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
        words.append(word.replace("%", "%%"))
    return " ".join(words)


def render_units(command: Sequence[str]) -> dict[str, str]:
    """The unit files (name -> text) whose service runs ``command daemon``."""
    bodies = {
        SOCKET_UNIT: _SOCKET_TEMPLATE,
        SERVICE_UNIT: _SERVICE_TEMPLATE.format(socket=SOCKET_UNIT,
                                               exec_start=exec_start(command)),
    }
    return {name: _with_marker(_PREAMBLE.format(name=name) + "\n" + body) for name, body in bodies.items()}


def _digest(rest: str) -> str:
    return hashlib.sha256(rest.encode()).hexdigest()[:16]


def _with_marker(rest: str) -> str:
    return _MARKER.format(digest=_digest(rest)) + "\n" + rest


def unit_state(path: str, wanted: str | None = None) -> State:
    """``absent``; ``current`` (already ``wanted``); ``ours`` (unedited output of this command); else ``edited``."""
    try:
        with open(path, encoding="utf-8", newline="") as file:
            text = file.read()
    except FileNotFoundError:
        return "absent"
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if text == wanted:
        return "current"
    first, _, rest = text.partition("\n")
    match = _MARKER_RE.fullmatch(first)
    return "ours" if match and match["digest"] == _digest(rest) else "edited"


def _refuse_edited(unit_dir: str, states: dict[str, State], action: str) -> None:
    edited = [name for name, state in states.items() if state == "edited"]
    if edited:
        where = ", ".join(os.path.join(unit_dir, name) for name in edited)
        raise ConfigError(
            f"not {action} {where}: edited, or not written by `aadhelper service install`",
            hint=f"keep changes in a drop-in (`systemctl --user edit {edited[0]}`), then rerun with --force")


def _write(path: str, text: str) -> None:
    """Replace ``path`` atomically, so the user manager never reads half a unit."""
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".aadhelper-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as file:
            file.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def install(unit_dir: str, command: Sequence[str], *, force: bool = False, dry_run: bool = False) -> None:
    """Write both units into ``unit_dir`` and print the systemctl commands that activate them."""
    units = render_units(command)
    states = {name: unit_state(os.path.join(unit_dir, name), text) for name, text in units.items()}
    if not force:
        _refuse_edited(unit_dir, states, "overwriting")
    for name, text in units.items():
        path = os.path.join(unit_dir, name)
        if dry_run:
            _show(path, text, "would write" if states[name] != "current" else "unchanged")
        elif states[name] == "current":
            print(f"Unchanged {path}")
        else:
            try:
                os.makedirs(unit_dir, exist_ok=True)
                _write(path, text)
            except OSError as exc:
                raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
            print(f"Installed {path}")
    _print_next(dry_run, "systemctl --user daemon-reload", f"systemctl --user enable --now {SOCKET_UNIT}")


def uninstall(unit_dir: str, *, force: bool = False, dry_run: bool = False,
              systemctl: Callable[..., subprocess.CompletedProcess[str]] | None = None) -> None:
    """Stop and disable both units, then remove them from ``unit_dir``.

    Disabling comes first, while the unit files still exist (systemctl needs them to know what to stop): through
    ``systemctl --user`` when the user manager answers; otherwise the enablement links in ``unit_dir``'s
    ``*.wants`` directories, which is all ``disable`` would change on disk, are removed here.
    """
    run = systemctl or run_systemctl
    names = (SOCKET_UNIT, SERVICE_UNIT)
    states = {name: unit_state(os.path.join(unit_dir, name)) for name in names}
    if not force:
        _refuse_edited(unit_dir, states, "removing")
    installed = [name for name in names if states[name] != "absent"]
    reachable = bool(installed) and user_manager_answers(run)
    disable = ("--user", "disable", "--now", *names)
    if installed and reachable:
        if dry_run:
            print(f"Would run systemctl {' '.join(disable)}")
        else:
            result = run(*disable)
            if result.returncode != 0:
                raise ConfigError(f"`systemctl {' '.join(disable)}` failed: {systemctl_failure(result)}; "
                                  "nothing was removed",
                                  hint="fix that, then run `aadhelper service uninstall` again")
            print(f"Stopped and disabled {' and '.join(names)}")
    elif installed:
        _remove_links(unit_dir, names, dry_run)
    for name in names:
        path = os.path.join(unit_dir, name)
        if states[name] == "absent":
            print(f"Not installed: {path}")
        elif dry_run:
            print(f"Would remove {path}")
        else:
            _unlink(path)
            print(f"Removed {path}")
    if not installed:
        return
    if reachable:
        if dry_run:
            print("Would run systemctl --user daemon-reload")
        else:
            run("--user", "daemon-reload")
            print("Reloaded the systemd user manager")
        return
    print("systemd's user manager does not answer here (`systemctl --user`), so nothing was stopped; where it runs:")
    print(f"  systemctl --user stop {' '.join(names)}")
    print("  systemctl --user daemon-reload")


def _remove_links(unit_dir: str, names: Sequence[str], dry_run: bool) -> None:
    """What ``systemctl --user disable`` changes on disk: the symlinks to our units in ``*.wants`` directories."""
    try:
        wants = [entry.path for entry in os.scandir(unit_dir) if entry.name.endswith((".wants", ".requires"))
                 and entry.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return
    for directory in sorted(wants):
        for name in names:
            link = os.path.join(directory, name)
            if os.path.islink(link):
                if dry_run:
                    print(f"Would remove the link {link}")
                else:
                    _unlink(link)
                    print(f"Disabled: removed the link {link}")


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot remove {path}: {exc.strerror or exc}") from None


def _show(path: str, text: str, note: str) -> None:
    print(f"==> {path} ({note}) <==")
    sys.stdout.write(text)
    print()


def _print_next(dry_run: bool, *commands: str) -> None:
    print("Then run:" if dry_run else "Now run:")
    for command in commands:
        print(f"  {command}")


def _command(args: argparse.Namespace) -> list[str]:
    return list(PORTABLE_COMMAND) if args.portable else paths.console_script()


def _unit_dir(args: argparse.Namespace) -> str:
    return os.path.abspath(args.unit_dir) if args.unit_dir else default_unit_dir()


def _install(args: argparse.Namespace) -> int:
    install(_unit_dir(args), _command(args), force=args.force, dry_run=args.dry_run)
    return 0


def _uninstall(args: argparse.Namespace) -> int:
    uninstall(_unit_dir(args), force=args.force, dry_run=args.dry_run)
    return 0


def _print(args: argparse.Namespace) -> int:
    for name, text in render_units(_command(args)).items():
        _show(name, text, "rendered")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``service install``, ``service uninstall`` and ``service print``."""
    parser = sub.add_parser("service", help="install the systemd user units (socket activation)",
                            description="Manage the systemd user units that start the daemon on first use.")
    verbs = parser.add_subparsers(dest="service_command", metavar="ACTION", required=True)

    def add(name: str, help_text: str, handler: Callable[[argparse.Namespace], int], *, portable: bool = True,
            writes: bool = True) -> argparse.ArgumentParser:
        verb = verbs.add_parser(name, help=help_text, description=help_text)
        if portable:
            verb.add_argument("--portable", action="store_true",
                              help=f"run `{' '.join(PORTABLE_COMMAND)}` (found on PATH) instead of this "
                                   "installation's absolute path")
        if writes:
            verb.add_argument("--unit-dir", metavar="DIR",
                              help="unit directory (default: ${XDG_CONFIG_HOME:-~/.config}/systemd/user)")
            verb.add_argument("--force", action="store_true", help="replace or remove units even if edited")
            verb.add_argument("--dry-run", action="store_true", help="show what would change; change nothing")
        verb.set_defaults(func=handler)
        return verb

    add("install", f"write {SOCKET_UNIT} and {SERVICE_UNIT} for this installation", _install)
    add("uninstall", "remove the units `install` wrote", _uninstall, portable=False)
    add("print", "show the units `install` would write", _print, writes=False)
