"""`aadhelper secret set|delete`: the secret comes from stdin or a no-echo prompt, never argv, and never shows."""

from __future__ import annotations

import io
import os
import pty
import select
from pathlib import Path

import pytest

from aadhelper import secret_store
from aadhelper.cli import main
from aadhelper.errors import KeyringLocked
from aadhelper.secret_store import KeyringSecretStore
from aadhelper.testing import FakeDaemon
from aadhelper.tokens import Secret
from tests.harness import AADHELPER, cli_env, one_error_line, run, run_in_process
from tests.harness import ADO_PROFILE as ADO
from tests.harness import GRAPH_PROFILE as GRAPH

SECRET = "Zq8~fake.client-secret_0123456789abcdefXYZ"


@pytest.fixture
def env(isolated_env: dict[str, str]) -> dict[str, str]:
    """Config in tmp_path with a client-secret profile 'graph' and a user profile 'ado'; memory secret store."""
    clean = cli_env(isolated_env)
    assert run(clean, *GRAPH).returncode == 0
    assert run(clean, *ADO).returncode == 0
    return clean


@pytest.fixture
def keyring_env(env: dict[str, str], secret_service: KeyringSecretStore) -> dict[str, str]:
    """``env`` with the real Secret Service: `secret set` refuses the memory store, whose secret dies with it."""
    return {k: v for k, v in env.items() if k != "AADHELPER_SECRET_STORE"}


@pytest.fixture
def store(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> secret_store.MemorySecretStore:
    return run_in_process(env, monkeypatch)


def test_set_from_a_pipe_confirms_without_showing_the_secret(keyring_env: dict[str, str]) -> None:
    """If the secret is piped in, then the command confirms in one stderr line and prints the secret nowhere."""
    result = run(keyring_env, "secret", "set", "graph", stdin=SECRET + "\n")
    assert (result.returncode, result.stdout) == (0, "")
    assert one_error_line(result) == "aadhelper: stored the client secret of profile 'graph' in the OS keyring"
    assert SECRET not in result.stderr
    assert SECRET not in Path(keyring_env["AADHELPER_CONFIG"]).read_text()


@pytest.mark.parametrize("piped, stored", [
    (SECRET + "\n", SECRET),
    (SECRET, SECRET),
    (SECRET + "\r\n", SECRET),
    (" padded ", " padded "),
])
def test_set_stores_exactly_the_piped_line(store: secret_store.MemorySecretStore, monkeypatch: pytest.MonkeyPatch,
                                           piped: str, stored: str) -> None:
    """If a line is piped in, then exactly that line, minus one trailing newline, is stored for the profile."""
    monkeypatch.setattr("sys.stdin", io.StringIO(piped))
    assert main(["secret", "set", "graph"]) == 0
    assert store.get("graph", "client_secret") == Secret(stored)


@pytest.mark.parametrize("piped, words", [
    ("", "the secret is empty"),
    ("\n", "the secret is empty"),
    (SECRET + "\n\n", "line break"),
    ("one\ntwo\n", "line break"),
    ("tab\there", "control characters"),
    ("x" * 20000, "longer than"),
])
def test_bad_input_stores_nothing(store: secret_store.MemorySecretStore, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str], piped: str, words: str) -> None:
    """If the piped input is empty, several lines or junk, then nothing is stored and exit code 2 explains why."""
    monkeypatch.setattr("sys.stdin", io.StringIO(piped))
    assert main(["secret", "set", "graph"]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1
    assert store.get("graph", "client_secret") is None


def test_secret_on_the_command_line_is_refused_without_echo(env: dict[str, str]) -> None:
    """If someone passes the secret as an argument, then it is refused and not repeated in the error."""
    result = run(env, "secret", "set", "graph", SECRET, stdin=SECRET)
    assert result.returncode == 2
    line = one_error_line(result)
    assert "never taken from the command line" in line
    assert SECRET not in line


@pytest.mark.parametrize("name, code, words", [
    ("ado", 3, "key 'credential' is 'user', which signs in as a user"),
    ("nope", 3, "profile 'nope' is not configured"),
])
def test_profiles_without_a_client_secret_are_refused(env: dict[str, str], name: str, code: int,
                                                      words: str) -> None:
    """If the profile is unknown or signs in as a user, then `secret set` fails before storing anything."""
    result = run(env, "secret", "set", name, stdin=SECRET)
    assert result.returncode == code
    line = one_error_line(result)
    assert words in line and env["AADHELPER_CONFIG"] in line
    assert SECRET not in line


def test_set_and_delete_tell_the_daemon_to_drop_the_profile(keyring_env: dict[str, str]) -> None:
    """If a daemon runs, then `secret set` and `secret delete` each ask it to reload that one profile."""
    stub = FakeDaemon(keyring_env["AADHELPER_SOCKET"]).start()
    try:
        stored = run(keyring_env, "secret", "set", "graph", stdin=SECRET)
        assert stored.returncode == 0
        assert "the running daemon reloaded" in stored.stderr
    finally:
        stub.close()
    assert stub.requests == [{"v": 1, "op": "reload", "profile": "graph"}]
    assert SECRET not in repr(stub.requests)


def test_delete_removes_the_stored_secret(store: secret_store.MemorySecretStore,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """If a secret is deleted, then it is gone; deleting again says nothing was stored and still succeeds."""
    store.set("graph", "client_secret", Secret(SECRET))
    store.set("graph", "refresh_token", Secret("rt"))
    assert main(["secret", "delete", "graph"]) == 0
    assert store.get("graph", "client_secret") is None
    assert store.get("graph", "refresh_token") == Secret("rt")
    assert "deleted the client secret of profile 'graph'" in capsys.readouterr().err
    assert main(["secret", "delete", "graph"]) == 0
    assert "no client secret was stored for profile 'graph'" in capsys.readouterr().err


def test_keyring_failure_is_one_line_with_exit_code_4(env: dict[str, str], store: secret_store.MemorySecretStore,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """If the keyring is locked, then `secret set` fails with one line and exit code 4."""
    def locked(profile: str, kind: str, value: Secret) -> None:
        raise KeyringLocked("the keyring collection is locked", profile=profile)

    monkeypatch.setattr(store, "set", locked)
    monkeypatch.setattr("sys.stdin", io.StringIO(SECRET))
    assert main(["secret", "set", "graph"]) == 4
    err = capsys.readouterr().err
    assert err == "aadhelper: the keyring collection is locked (profile 'graph')\n"


def test_terminal_prompt_does_not_echo(keyring_env: dict[str, str]) -> None:
    """If stdin is a terminal, then the user is prompted and what they type is not echoed back."""
    pid, master = pty.fork()
    if pid == 0:  # the child: exec at once, so nothing of pytest runs here
        try:
            os.execve(str(AADHELPER), [str(AADHELPER), "secret", "set", "graph"], keyring_env)
        finally:
            os._exit(127)
    seen = b""
    try:
        seen += _read_until(master, b"(input hidden): ")
        os.write(master, SECRET.encode() + b"\n")
        seen += _read_until(master, None)
    finally:
        os.close(master)
        _, status = os.waitpid(pid, 0)
    text = seen.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "Client secret for profile 'graph' (input hidden): " in text
    assert "stored the client secret of profile 'graph'" in text
    assert SECRET not in text


def _read_until(fd: int, marker: bytes | None) -> bytes:
    """Read the pty until ``marker`` appears, or until the child closes it (None); bounded, never asserted on time."""
    data = b""
    while marker is None or marker not in data:
        ready, _, _ = select.select([fd], [], [], 30)
        if not ready:
            raise AssertionError(f"no output from the child; so far: {data!r}")
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            chunk = b""
        if not chunk:
            if marker is None:
                return data
            raise AssertionError(f"the child ended before {marker!r}; output: {data!r}")
        data += chunk
    return data



@pytest.mark.keyring
def test_real_keyring_holds_what_set_stored_until_profile_remove(env: dict[str, str],
                                                                 secret_service: KeyringSecretStore) -> None:
    """If the real Secret Service is used, then another process reads what `secret set` stored, and
    `profile remove` deletes the profile's client secret and refresh token from it."""
    real = {k: v for k, v in env.items() if k != "AADHELPER_SECRET_STORE"}
    stored = run(real, "secret", "set", "graph", stdin=SECRET + "\n")
    assert stored.returncode == 0, stored.stderr
    assert secret_service.get("graph", "client_secret") == Secret(SECRET)
    secret_service.set("graph", "refresh_token", Secret("a-refresh-token"))
    removed = run(real, "profile", "remove", "graph")
    assert removed.returncode == 0, removed.stderr
    assert "deleted its client secret and refresh token from the OS keyring" in removed.stderr
    assert secret_service.get("graph", "client_secret") is None
    assert secret_service.get("graph", "refresh_token") is None
