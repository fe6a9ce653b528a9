"""`aadhelper profile ...` as a user runs it: the installed console script in a subprocess, config in tmp_path."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from aadhelper import protocol, secret_store
from aadhelper.cli import main
from aadhelper.errors import KeyringUnavailable
from aadhelper.tokens import Secret

AADHELPER = Path(sys.executable).parent / "aadhelper"
GRAPH = ["profile", "add", "graph", "--tenant", "contoso.onmicrosoft.com",
         "--client-id", "11111111-2222-3333-4444-555555555555", "--scope", "https://graph.microsoft.com/.default"]
ADO = ["profile", "add", "ado", "--tenant", "common", "--client-id", "22222222-2222-3333-4444-555555555555",
       "--scope", "499b84ac-1321-427f-aa17-267ca6975798/.default", "--user",
       "--git-url", "https://dev.azure.com/contoso", "--git-url", "https://Contoso.VisualStudio.com/",
       "--git-username", "me@contoso.com"]


def cli_env(isolated_env: dict[str, str]) -> dict[str, str]:
    """conftest's isolated environment without AZURE_* settings, with the in-memory store and no autostart."""
    env = {k: v for k, v in isolated_env.items() if not k.startswith("AZURE_")}
    env.update(AADHELPER_SECRET_STORE="memory", AADHELPER_NO_AUTOSTART="1")
    return env


def run_in_process(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> secret_store.MemorySecretStore:
    """Prepare `main()` to run in this process with env's variables and one in-memory store the test can see."""
    for key in [k for k in os.environ if k.startswith(("AADHELPER_", "AZURE_"))]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("AADHELPER_"):
            monkeypatch.setenv(key, value)
    store = secret_store.MemorySecretStore()
    monkeypatch.setattr(secret_store, "open_secret_store", lambda kind=None: store)
    return store


@pytest.fixture
def env(isolated_env: dict[str, str]) -> dict[str, str]:
    return cli_env(isolated_env)


def run(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run the installed `aadhelper` with stdin from a pipe."""
    return subprocess.run([str(AADHELPER), *args], env=env, input=stdin, capture_output=True, text=True,
                          timeout=60, check=False)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("aadhelper: ")
    return lines[0]


class StubDaemon:
    """Answers every request on a Unix socket with ok and records it: shows what the CLI told a daemon."""

    def __init__(self, path: str) -> None:
        self.requests: list[dict[str, object]] = []
        self._stop = threading.Event()
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(path)
        self._sock.listen()
        self._sock.settimeout(0.05)  # lets the accept loop notice close()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(10)
                line = conn.makefile("rb").readline()
                self.requests.append(protocol.decode(line))
                conn.sendall(protocol.encode(protocol.ok_reply(profiles=[])))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._sock.close()


@pytest.fixture
def daemon(env: dict[str, str]) -> Iterator[StubDaemon]:
    stub = StubDaemon(env["AADHELPER_SOCKET"])
    try:
        yield stub
    finally:
        stub.close()


def test_add_list_show(env: dict[str, str]) -> None:
    """If a profile is added, then list and show print it (text and JSON) and stderr says what to do next."""
    added = run(env, *GRAPH)
    assert (added.returncode, added.stdout) == (0, "")
    assert f"added profile 'graph' to {env['AADHELPER_CONFIG']} as the default" in added.stderr
    assert "`aadhelper secret set graph`" in added.stderr

    listed = run(env, "profile", "list")
    assert listed.returncode == 0
    assert listed.stdout.splitlines() == [
        "   NAME   TENANT                   CLIENT ID                             CREDENTIAL",
        "*  graph  contoso.onmicrosoft.com  11111111-2222-3333-4444-555555555555  client_secret",
    ]
    as_json = json.loads(run(env, "profile", "list", "--json").stdout)
    assert [(p["name"], p["default"], p["credential"]) for p in as_json] == [("graph", True, "client_secret")]

    shown = run(env, "profile", "show")
    assert shown.returncode == 0
    assert ("token_endpoint  https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
            in shown.stdout.splitlines())
    assert "min_valid       300" in shown.stdout.splitlines()
    detail = json.loads(run(env, "profile", "show", "graph", "--json").stdout)
    assert detail["scopes"] == ["https://graph.microsoft.com/.default"]
    assert detail["authority"] == "https://login.microsoftonline.com"


def test_add_user_profile_with_git_urls(env: dict[str, str]) -> None:
    """If a --user profile is added with git URLs, then they are normalised and carry the given username."""
    run(env, *GRAPH)
    added = run(env, *ADO, "--min-valid", "600", "--authority", "usgov")
    assert added.returncode == 0, added.stderr
    assert "`aadhelper login ado`" in added.stderr
    assert "as the default" not in added.stderr  # the first profile stays the default
    detail = json.loads(run(env, "profile", "show", "ado", "--json").stdout)
    assert detail["git_urls"] == [{"url": "https://dev.azure.com/contoso/", "username": "me@contoso.com"},
                                  {"url": "https://contoso.visualstudio.com/", "username": "me@contoso.com"}]
    assert (detail["credential"], detail["min_valid"], detail["default"]) == ("user", 600, False)
    assert detail["authority"] == "https://login.microsoftonline.us"


def test_git_url_add_and_remove(env: dict[str, str]) -> None:
    """If a git URL is mapped and unmapped, then show reflects it and the default username is the client id."""
    run(env, *GRAPH)
    added = run(env, "profile", "git-url", "add", "graph", "HTTPS://Git.Example.com:443/team")
    assert added.returncode == 0
    assert ("git remotes under https://git.example.com/team/ now use profile 'graph' "
            "(username 11111111-2222-3333-4444-555555555555)") in added.stderr
    assert "git_url         https://git.example.com/team/ (username 11111111-2222-3333-4444-555555555555)" in (
        run(env, "profile", "show", "graph").stdout.splitlines())
    removed = run(env, "profile", "git-url", "remove", "graph", "https://git.example.com/team")
    assert removed.returncode == 0
    assert not any(line.startswith("git_url ") for line in run(env, "profile", "show", "graph").stdout.splitlines())
    again = run(env, "profile", "git-url", "remove", "graph", "https://git.example.com/team")
    assert again.returncode == 3
    assert "is not mapped" in one_error_line(again)


def test_default_and_remove(env: dict[str, str]) -> None:
    """If the default is switched and then removed, then list shows the marker moving and the user is told."""
    run(env, *GRAPH)
    run(env, *ADO)
    run(env, *GRAPH[:2], "third", *GRAPH[3:])
    switched = run(env, "profile", "default", "ado")
    assert switched.returncode == 0
    assert "the default profile in" in switched.stderr and "is now 'ado'" in switched.stderr
    assert [line.split()[:2] for line in run(env, "profile", "list").stdout.splitlines()[1:]] == [
        ["graph", "contoso.onmicrosoft.com"], ["*", "ado"], ["third", "contoso.onmicrosoft.com"]]
    removed = run(env, "profile", "remove", "ado")
    assert removed.returncode == 0
    assert "removed profile 'ado'" in removed.stderr
    assert "no default profile now" in removed.stderr
    assert [json.loads(run(env, "profile", "list", "--json").stdout)[i]["name"] for i in (0, 1)] == ["graph", "third"]
    no_default = run(env, "profile", "show")
    assert no_default.returncode == 3
    assert "'default_profile' is not set" in one_error_line(no_default)


@pytest.mark.parametrize("args, code, words", [
    (["profile", "add", "x", "--client-id", "c", "--scope", "s"], 2, "--tenant"),
    ([*GRAPH, "--min-valid", "soon"], 2, "invalid int value"),
    ([*GRAPH, "--min-valid", "100000"], 3, "key 'min_valid' must be an integer from 0 to 86400"),
    (["profile", "add", "x", "--tenant", "common", "--client-id", "c", "--scope", "s"], 3, "AADSTS9001023"),
    ([*GRAPH, "--authority", "http://login.example.com"], 3, "plain http:// only for a loopback host"),
    ([*GRAPH, "--ca-bundle", "/nonexistent/ca.pem"], 2, "no such file"),
    ([*GRAPH, "--git-username", "me"], 2, "--git-username needs at least one --git-url"),
    ([*GRAPH, "--git-url", "ssh://git@host/x"], 3, "key 'url' must be an http:// or https:// URL"),
    (["profile", "add", "bad name", "--tenant", "t", "--client-id", "c", "--scope", "s"], 3, "profile name"),
    (["profile", "show", "nope"], 3, "profile 'nope' is not configured"),
    (["profile", "remove", "nope"], 3, "profile 'nope' is not configured"),
    (["profile", "default", "nope"], 3, "profile 'nope' is not configured"),
    (["profile", "git-url", "add", "nope", "https://h/"], 3, "profile 'nope' is not configured"),
    (["profile", "frobnicate"], 2, "invalid choice"),
])
def test_mistakes_are_one_line_with_their_exit_code(env: dict[str, str], args: list[str], code: int,
                                                     words: str) -> None:
    """If the command line or the resulting config is wrong, then one stderr line explains it with its exit code."""
    result = run(env, *args)
    assert result.returncode == code
    assert words in one_error_line(result)
    assert result.stdout == ""


def test_adding_an_existing_profile_needs_replace(env: dict[str, str]) -> None:
    """If a profile exists, then adding it again fails unless --replace is given."""
    run(env, *GRAPH)
    again = run(env, *GRAPH)
    assert again.returncode == 3
    assert "profile 'graph' already exists" in one_error_line(again)
    replaced = run(env, *GRAPH, "--replace", "--min-valid", "30")
    assert replaced.returncode == 0
    assert json.loads(run(env, "profile", "show", "--json").stdout)["min_valid"] == 30


def test_broken_config_file_is_reported_in_one_line(env: dict[str, str]) -> None:
    """If the config file has a typo, then list fails with one line naming the file, profile and key."""
    path = Path(env["AADHELPER_CONFIG"])
    path.parent.mkdir()
    path.write_text('[profiles.p]\ntenant = "t"\nclient_id = "c"\nscopes = ["s"]\nmin_vaild = 3\n')
    result = run(env, "profile", "list")
    assert result.returncode == 3
    assert one_error_line(result) == (f"aadhelper: {path}: profile 'p': key 'min_vaild' is not a known setting "
                                      "(did you mean 'min_valid'?)")


def test_list_of_empty_config_says_how_to_add(env: dict[str, str]) -> None:
    """If there is no config file, then list prints nothing on stdout and a hint on stderr; --json prints []."""
    result = run(env, "profile", "list")
    assert (result.returncode, result.stdout) == (0, "")
    assert "aadhelper profile add" in result.stderr
    assert json.loads(run(env, "profile", "list", "--json").stdout) == []


def test_help_explains_the_options(env: dict[str, str]) -> None:
    """If --help is asked for, then each option of profile add is explained; bare `profile` prints help, exit 2."""
    helped = run(env, "profile", "add", "--help")
    assert helped.returncode == 0
    for words in ("--client-id", "--scope SCOPE", "sign in as a user", "--git-url URL", "--replace", "usgov"):
        assert words in helped.stdout
    bare = run(env, "profile")
    assert bare.returncode == 2
    assert "git-url" in bare.stderr


def test_changes_tell_a_running_daemon_to_reload(env: dict[str, str], daemon: StubDaemon) -> None:
    """If a daemon answers on the socket, then each change sends it a reload and the user is told."""
    added = run(env, *GRAPH)
    assert "the running daemon reloaded its configuration" in added.stderr
    run(env, "profile", "git-url", "add", "graph", "https://h/")
    run(env, "profile", "list")  # reads only: no reload
    assert [r["op"] for r in daemon.requests] == ["reload", "reload"]
    assert all("profile" not in r for r in daemon.requests)


def test_without_daemon_changes_still_succeed_quietly(env: dict[str, str]) -> None:
    """If no daemon runs (and autostart is off), then a change succeeds without mentioning one."""
    added = run(env, *GRAPH)
    assert added.returncode == 0
    assert "reload" not in added.stderr
    assert not os.path.exists(env["AADHELPER_SOCKET"])


# ---------------------------------------------------------------- in-process: the keyring side of `remove`

@pytest.fixture
def in_process(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> secret_store.MemorySecretStore:
    return run_in_process(env, monkeypatch)


def test_remove_deletes_the_profiles_secrets_only(in_process: secret_store.MemorySecretStore,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """If a profile is removed, then its client secret and refresh token leave the keyring; others' stay."""
    assert main(GRAPH) == 0
    assert main([*GRAPH[:2], "other", *GRAPH[3:]]) == 0
    in_process.set("graph", "client_secret", Secret("s1"))
    in_process.set("graph", "refresh_token", Secret("r1"))
    in_process.set("other", "client_secret", Secret("s2"))
    capsys.readouterr()
    assert main(["profile", "remove", "graph"]) == 0
    assert in_process.get("graph", "client_secret") is None
    assert in_process.get("graph", "refresh_token") is None
    assert in_process.get("other", "client_secret") == Secret("s2")
    assert "deleted its client secret and refresh token from the OS keyring" in capsys.readouterr().err


def test_remove_without_keyring_warns_and_still_removes(in_process: secret_store.MemorySecretStore,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """If the keyring is unavailable, then the profile is removed anyway and a warning says the secrets remain."""
    assert main(GRAPH) == 0

    def no_keyring(kind: str | None = None) -> secret_store.SecretStore:
        raise KeyringUnavailable("no keyring backend answers (no Secret Service on the session bus)")

    monkeypatch.setattr(secret_store, "open_secret_store", no_keyring)
    capsys.readouterr()
    assert main(["profile", "remove", "graph"]) == 0
    err = capsys.readouterr().err
    assert "warning: could not delete the stored secrets of profile 'graph'" in err
    assert "no keyring backend answers" in err
    assert main(["profile", "show", "graph"]) == 3
