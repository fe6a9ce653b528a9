"""Who the daemon answers, tested from the outside (issue 10 §5): a client of another uid is refused even when
it can reach the socket, and what a client sends (a remote URL with credentials) never comes back in a message."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from aadhelper.testing.fault_suite.socket_cases import NOBODY, other_uid_client

from .harness import DaemonProcess, cli

#: A raw client of another uid (the thin client would refuse the directory first): the fault suite's.
OTHER_UID_CLIENT = other_uid_client()


@pytest.mark.requires("root")
def test_client_of_another_uid_is_refused_even_when_it_reaches_the_socket(isolated_env: dict[str, str]) -> None:
    """If the socket is made reachable to everyone and a process of another uid asks for a token, then the daemon
    answers only 'permission denied' (SO_PEERCRED), logs the refusal, and keeps serving its own user."""
    with DaemonProcess(isolated_env) as daemon:
        socket_path = daemon.socket_path
        os.chmod(os.path.dirname(socket_path), 0o711)
        os.chmod(socket_path, 0o666)
        parent = os.path.dirname(os.path.dirname(socket_path))
        while parent not in ("/", "/tmp"):
            os.chmod(parent, os.stat(parent).st_mode | 0o011)
            parent = os.path.dirname(parent)
        result = subprocess.run([sys.executable, "-c", OTHER_UID_CLIENT, socket_path], capture_output=True, text=True,
                                timeout=30)
        assert result.returncode == 0, result.stderr
        reply = json.loads(result.stdout)
        assert reply["ok"] is False and "permission denied" in reply["error"]["message"]
        assert f"refused a connection from uid {NOBODY}" in daemon.log()
        os.chmod(os.path.dirname(socket_path), 0o700)
        assert cli(isolated_env, "status").returncode == 0


def test_remote_url_credentials_never_appear_in_an_error(isolated_env: dict[str, str]) -> None:
    """If git asks for a remote URL carrying user:password that no profile maps, then the error names the URL without
    the user:password part."""
    from aadhelper import client
    from aadhelper.errors import NoProfileForUrl

    with DaemonProcess(isolated_env) as daemon, pytest.raises(NoProfileForUrl) as caught:
        client.get_token(url="https://alice:hunter2-secret@dev.azure.com/contoso/repo",
                         socket_path=daemon.socket_path)
    line = caught.value.one_line()
    assert "hunter2-secret" not in line and "alice" not in line
    assert "https://dev.azure.com/contoso/repo" in line
