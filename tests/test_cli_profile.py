"""`aadhelper profile ...` as a user runs it: the installed console script in a subprocess, config in tmp_path."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from aadhelper import secret_store
from aadhelper.cli import main
from aadhelper.errors import KeyringUnavailable
from aadhelper.testing import FakeDaemon
from aadhelper.tokens import Secret
from tests.harness import ADO_PROFILE as ADO
from tests.harness import GRAPH_PROFILE as GRAPH
from tests.harness import cli_env, one_error_line, run, run_in_process


@pytest.fixture
def env(isolated_env: dict[str, str]) -> dict[str, str]:
    return cli_env(isolated_env)


@pytest.fixture
def daemon(env: dict[str, str]) -> Iterator[FakeDaemon]:
    """A fake daemon on the profile's socket that answers every request with ok and records it: shows what the
    CLI told a daemon."""
    with FakeDaemon(env["AADHELPER_SOCKET"]) as stub:
        yield stub


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


def test_changes_tell_a_running_daemon_to_reload(env: dict[str, str], daemon: FakeDaemon) -> None:
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
