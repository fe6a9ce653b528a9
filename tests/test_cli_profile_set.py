"""`aadhelper profile set` and `profile add --replace` (issue 14 §2): single settings change in place, and neither
drops a profile's git URL mappings or the user's comments."""

from __future__ import annotations

from pathlib import Path

import pytest

from aadhelper.config import load_config
from aadhelper.testing import FakeDaemon
from tests.harness import ADO_PROFILE, GRAPH_PROFILE, cli_env, one_error_line, run


@pytest.fixture
def env(isolated_env: dict[str, str]) -> dict[str, str]:
    """Profiles 'graph' (client secret) and 'ado' (user, two git URL mappings); a comment in the file."""
    clean = cli_env(isolated_env)
    assert run(clean, *GRAPH_PROFILE).returncode == 0
    assert run(clean, *ADO_PROFILE).returncode == 0
    config = Path(clean["AADHELPER_CONFIG"])
    config.write_text(config.read_text().replace("[profiles.ado]", "# the team's DevOps\n[profiles.ado]"))
    return clean


def _config(env: dict[str, str]) -> str:
    return Path(env["AADHELPER_CONFIG"]).read_text()


def test_set_changes_single_settings_and_keeps_the_rest(env: dict[str, str]) -> None:
    """If `profile set` changes the authority, min_valid and scopes of a profile with git mappings, then exactly those
    change (old -> new said in one line), the mappings and the comment stay, and a running daemon reloads."""
    before = load_config(env["AADHELPER_CONFIG"], env).profile("ado")
    with FakeDaemon(env["AADHELPER_SOCKET"]) as daemon:
        result = run(env, "profile", "set", "ado", "--authority", "usgov", "--min-valid", "900",
                     "--scope", "https://graph.microsoft.com/.default", "--scope", "offline_access")
    assert result.returncode == 0, result.stderr
    assert "min_valid 300 -> 900" in result.stderr and "login.microsoftonline.us" in result.stderr
    assert {"v": 1, "op": "reload"} in daemon.requests
    after = load_config(env["AADHELPER_CONFIG"], env).profile("ado")
    assert (after.min_valid, after.scopes) == (900, ("https://graph.microsoft.com/.default", "offline_access"))
    assert after.authority == "https://login.microsoftonline.us"
    assert after.git_urls == before.git_urls and len(after.git_urls) == 2
    assert (after.tenant, after.client_id, after.credential) == (before.tenant, before.client_id, before.credential)
    assert "# the team's DevOps" in _config(env)


def test_unset_returns_a_setting_to_its_default(env: dict[str, str]) -> None:
    """If `profile set --unset min_valid` runs, then the key leaves the file and the default (300) applies."""
    assert run(env, "profile", "set", "graph", "--min-valid", "60").returncode == 0
    assert "min_valid = 60" in _config(env)
    result = run(env, "profile", "set", "graph", "--unset", "min_valid")
    assert result.returncode == 0, result.stderr
    assert "min_valid" not in _config(env).split("[profiles.graph]")[1].split("[profiles.ado]")[0]
    assert load_config(env["AADHELPER_CONFIG"], env).profile("graph").min_valid == 300


@pytest.mark.parametrize("args, code, words", [
    (["profile", "set", "graph"], 2, "nothing to change"),
    (["profile", "set", "graph", "--min-valid", "5", "--unset", "min_valid"], 2, "--unset min_valid and a new value"),
    (["profile", "set", "graph", "--min-valid", "999999"], 2, "whole number of seconds"),
    (["profile", "set", "graph", "--scope", ""], 2, "non-empty"),
    (["profile", "set", "graph", "--authority", "ftp://x"], 3, "authority"),
    (["profile", "set", "nobody", "--min-valid", "5"], 3, "profile 'nobody' is not configured"),
])
def test_bad_changes_are_refused_and_change_nothing(env: dict[str, str], args: list[str], code: int,
                                                    words: str) -> None:
    """If `profile set` is given nothing, a clash, a bad value or an unknown profile, then it fails with one line
    and its exit code, and the file is unchanged."""
    before = _config(env)
    result = run(env, *args)
    assert result.returncode == code
    assert words in one_error_line(result)
    assert _config(env) == before


def test_replace_keeps_the_git_mappings_and_says_so(env: dict[str, str]) -> None:
    """If `profile add --replace` re-adds a profile without --git-url, then its git mappings are kept and the
    message says 'replaced' and that they were kept; with --git-url they are replaced by the given ones."""
    args = ["profile", "add", "ado", "--tenant", "common", "--client-id", "33333333-2222-3333-4444-555555555555",
            "--scope", "499b84ac-1321-427f-aa17-267ca6975798/.default", "--user", "--replace"]
    kept = run(env, *args)
    assert kept.returncode == 0, kept.stderr
    assert "replaced profile 'ado'" in kept.stderr and "git URL mappings were kept (2)" in kept.stderr
    profile = load_config(env["AADHELPER_CONFIG"], env).profile("ado")
    assert profile.client_id == "33333333-2222-3333-4444-555555555555"
    assert [g.url for g in profile.git_urls] == ["https://dev.azure.com/contoso/", "https://contoso.visualstudio.com/"]
    assert profile.git_urls[0].username == "me@contoso.com"

    replaced = run(env, *args, "--git-url", "https://dev.azure.com/fabrikam/")
    assert replaced.returncode == 0, replaced.stderr
    assert "git URL mappings were replaced (1)" in replaced.stderr
    assert [g.url for g in load_config(env["AADHELPER_CONFIG"], env).profile("ado").git_urls] == [
        "https://dev.azure.com/fabrikam/"]
