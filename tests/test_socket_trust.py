"""The thin client talks only to a daemon of its own user in a directory of its own (issue 10 §1).

Another local user who creates the socket directory first (the ``/tmp/aadhelper-UID`` fallback, used without
``XDG_RUNTIME_DIR``) must get neither our requests nor a chance to hand us their tokens. These tests play that
user with a real second uid (``nobody``), so they need root (CI runs as root).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from aadhelper import paths
from aadhelper.errors import UnsafeSocket

from .harness import cli

NOBODY = 65534

pytestmark = pytest.mark.requires("root")

#: A fake daemon run as another user: binds as root (in our directory), drops to NOBODY, then listens, so that
#: SO_PEERCRED names NOBODY; it answers every request with a token of its own.
FAKE_DAEMON = textwrap.dedent("""
    import os, socket, sys
    path = sys.argv[1]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o666)
    os.setgid(%(uid)d); os.setuid(%(uid)d)
    sock.listen(8)
    print("ready", flush=True)
    while True:
        conn, _ = sock.accept()
        conn.recv(65536)
        conn.sendall(b'{"v":1,"ok":true,"access_token":"attacker-token","token_type":"Bearer","expires_on":9999999999,'
                     b'"profile":"graph","scopes":["x"]}\\n')
        conn.close()
""") % {"uid": NOBODY}


@pytest.fixture
def fake_daemon(tmp_path: Path) -> Iterator[str]:
    """A server of another uid on a socket in a directory that is ours and private."""
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    path = str(directory / "daemon.sock")
    process = subprocess.Popen([sys.executable, "-c", FAKE_DAEMON, path], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        yield path
    finally:
        process.kill()
        process.wait()


def test_client_refuses_a_daemon_of_another_user(fake_daemon: str, isolated_env: dict[str, str]) -> None:
    """If the process on the socket runs as another uid, then `aadhelper header` prints one line naming the path and
    that uid, exits 10, and prints no token."""
    env = dict(isolated_env, AADHELPER_SOCKET=fake_daemon, AADHELPER_NO_AUTOSTART="1")
    result = cli(env, "header", "graph")
    assert result.returncode == 10
    assert result.stdout == "" and "attacker-token" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert fake_daemon in result.stderr and f"uid {NOBODY}" in result.stderr


def test_git_helper_refuses_a_daemon_of_another_user(fake_daemon: str, isolated_env: dict[str, str]) -> None:
    """If the process on the socket runs as another uid, then the git helper hands it nothing and gives git nothing:
    no password on stdout, one line on stderr."""
    env = dict(isolated_env, AADHELPER_SOCKET=fake_daemon, AADHELPER_NO_AUTOSTART="1")
    helper = str(Path(sys.executable).parent / "git-credential-aadhelper")
    result = subprocess.run([helper, "get"], input="protocol=https\nhost=dev.azure.com\npath=contoso/x\n\n",
                            capture_output=True, text=True, env=env, timeout=30)
    assert "password" not in result.stdout and "attacker-token" not in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("mode", [0o700, 0o755])
def test_squatted_socket_directory_is_refused_by_client_and_daemon(tmp_path: Path, isolated_env: dict[str, str],
                                                                   mode: int) -> None:
    """If another user created the socket directory first (or ours is open to others), then the client refuses it
    with one line naming the directory and its owner (exit 10), and the daemon refuses to bind there."""
    squatted = tmp_path / "aadhelper-squatted"
    squatted.mkdir()
    os.chmod(squatted, mode)
    owner = NOBODY if mode == 0o700 else os.getuid()
    os.chown(squatted, owner, owner)
    path = str(squatted / "daemon.sock")
    env = dict(isolated_env, AADHELPER_SOCKET=path, AADHELPER_NO_AUTOSTART="1")
    result = cli(env, "header", "graph")
    assert result.returncode == 10, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and str(squatted) in result.stderr
    assert (f"uid {NOBODY}" if owner == NOBODY else "open to other users") in result.stderr
    if owner == NOBODY:
        daemon = subprocess.run([str(Path(sys.executable).parent / "aadhelper"), "daemon"], env=env,
                                capture_output=True, text=True, timeout=30)
        assert daemon.returncode == 3 and f"belongs to uid {NOBODY}" in daemon.stderr
        assert not os.path.exists(path)


def test_fallback_directory_is_private_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If there is no XDG_RUNTIME_DIR and no /run/user/UID, then the socket goes in TMPDIR/aadhelper-UID, made 0700
    and refused when it is a symlink or not ours."""
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(paths, "_RUN_USER", str(tmp_path / "no-run-user" / "{uid}"))
    expected = tmp_path / f"aadhelper-{os.getuid()}"
    assert paths.runtime_dir() == str(expected)
    paths.ensure_private_dir(str(expected))
    assert expected.stat().st_mode & 0o777 == 0o700
    expected.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    expected.symlink_to(elsewhere)
    with pytest.raises(Exception, match="is not a directory"):
        paths.ensure_private_dir(str(expected))


def test_client_check_is_silent_for_our_own_private_directory(tmp_path: Path) -> None:
    """If the socket directory is ours and 0700 (or missing), then the client's check passes."""
    from aadhelper.client import check_socket_dir

    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    check_socket_dir(str(private / "daemon.sock"))
    check_socket_dir(str(tmp_path / "missing" / "daemon.sock"))
    os.chmod(private, 0o750)
    with pytest.raises(UnsafeSocket, match="open to other users"):
        check_socket_dir(str(private / "daemon.sock"))

