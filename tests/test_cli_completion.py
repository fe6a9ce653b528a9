"""`aadhelper completion bash|zsh|fish` (issue 14 §2): the generated scripts run in the real shells and complete
subcommands, options, option values and the configured profile names (read by the hidden fast
`aadhelper __complete profiles`); what they know comes from the argparse tree, so a subcommand added later is
completed too."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from aadhelper.cli.app import build_parser
from aadhelper.cli.completion import profile_names, script
from tests.harness import AADHELPER, GRAPH_PROFILE, cli_env, run

#: Runs the completion function bash registered for `aadhelper` on the words given, as bash does on TAB.
BASH_DRIVER = """
source "$1"
function="$(complete -p aadhelper | sed -n 's/.*-F \\([^ ]*\\) .*/\\1/p')"
shift
COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMPREPLY=()
"$function" aadhelper "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\\n' "${COMPREPLY[@]}"
"""
#: The same in zsh, the way zsh's bashcompinit calls a bash completion function (sh emulation, ksh arrays).
ZSH_DRIVER = """
source "$1"
shift
[[ $_comps[aadhelper] == '_bash_complete -F _aadhelper' ]] || { print "not registered: $_comps[aadhelper]"; exit 1 }
drive() { emulate -L sh; setopt kshglob noshglob braceexpand
    COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMPREPLY=(); _aadhelper; printf '%s\\n' "${COMPREPLY[@]}"; }
drive "$@"
"""


@pytest.fixture
def env(isolated_env: dict[str, str]) -> dict[str, str]:
    """Profiles 'graph' and 'ado.team' configured; this aadhelper first on PATH (the scripts call it by name)."""
    clean = cli_env(isolated_env)
    assert run(clean, *GRAPH_PROFILE).returncode == 0
    assert run(clean, "profile", "add", "ado.team", "--tenant", "t.example", "--client-id", "c",
               "--scope", "s/.default").returncode == 0
    clean["PATH"] = f"{Path(AADHELPER).parent}:{os.environ['PATH']}"
    return clean


def _script(env: dict[str, str], shell: str, tmp_path: Path) -> Path:
    result = run(env, "completion", shell)
    assert result.returncode == 0, result.stderr
    path = tmp_path / f"aadhelper.{shell}"
    path.write_text(result.stdout)
    return path


CASES = [
    (["aadhelper", "sta"], ["status"]),
    (["aadhelper", "profile", "s"], ["set", "show"]),
    (["aadhelper", "daemon", "re"], ["restart"]),
    (["aadhelper", "header", "--mi"], ["--min-valid"]),
    (["aadhelper", "daemon", "--secret-store", "m"], ["memory"]),
    (["aadhelper", "profile", "set", "graph", "--unset", ""], ["authority", "min_valid", "ca_bundle"]),
    (["aadhelper", "completion", "z"], ["zsh"]),
    (["aadhelper", "header", ""], ["graph", "ado.team"]),
    (["aadhelper", "header", "--scope", "https://x/.default", "a"], ["ado.team"]),
    (["aadhelper", "login", "-v", "g"], ["graph"]),
    (["aadhelper", "header", "graph", ""], []),
]


@pytest.mark.requires("bash")
@pytest.mark.parametrize("words, expected", CASES)
def test_bash_completes(env: dict[str, str], tmp_path: Path, words: list[str], expected: list[str]) -> None:
    """If bash completes an aadhelper command line with the generated script, then it offers the subcommands,
    options, option values or configured profile names that fit the word being typed."""
    path = _script(env, "bash", tmp_path)
    result = subprocess.run(["bash", "-c", BASH_DRIVER, "driver", str(path), *words], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == expected


@pytest.mark.requires("zsh")
@pytest.mark.parametrize("words, expected", CASES)
def test_zsh_completes(env: dict[str, str], tmp_path: Path, words: list[str], expected: list[str]) -> None:
    """If zsh loads the generated script, then `aadhelper` is registered with zsh's bash completion support and the
    function offers the same candidates (zsh itself then narrows them to the typed prefix)."""
    path = _script(env, "zsh", tmp_path)
    result = subprocess.run(["zsh", "-f", "-c", ZSH_DRIVER, "driver", str(path), *words], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    prefix = words[-1]
    assert [word for word in result.stdout.split() if word.startswith(prefix)] == expected


@pytest.mark.requires("fish")
@pytest.mark.parametrize("words, expected", CASES)
def test_fish_completes(env: dict[str, str], tmp_path: Path, words: list[str], expected: list[str]) -> None:
    """If fish loads the generated script, then its own completion engine (`complete -C`) offers the same
    candidates."""
    path = _script(env, "fish", tmp_path)
    line = " ".join(words)
    result = subprocess.run(["fish", "--no-config", "-c", f"source {path}; complete -C {line!r}"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert sorted(entry.split("\t")[0] for entry in result.stdout.splitlines()) == sorted(expected)  # fish sorts


@pytest.mark.requires("bash")
def test_a_subcommand_added_later_is_completed(env: dict[str, str], tmp_path: Path) -> None:
    """If another module adds a subcommand to the parser, then the generated script completes it and its options
    without any list to update."""
    parser = build_parser()
    for action in parser._actions:
        if action.dest == "command":
            added = action.choices["zz-later"] = type(parser)(prog="aadhelper zz-later")  # type: ignore[index]
            added.add_argument("--context")
            added.add_argument("profile", nargs="?")
    path = tmp_path / "later.bash"
    path.write_text(script("bash", parser))
    for words, expected in ((["aadhelper", "zz-l"], ["zz-later"]),
                            (["aadhelper", "zz-later", "--co"], ["--context"]),
                            (["aadhelper", "zz-later", "gr"], ["graph"])):
        result = subprocess.run(["bash", "-c", BASH_DRIVER, "driver", str(path), *words], env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.stdout.split() == expected, words


def test_profile_names_are_read_without_parsing_the_toml() -> None:
    """If the config file has profile tables (quoted or not), git mapping tables, sub-tables and half-typed headers,
    then exactly the profile names come out, in order and once each (and never an exception)."""
    text = """
default_profile = "graph"
[daemon]
[profiles.graph]   # the app
tenant = "x"
[[profiles.graph.git]]
url = "https://dev.azure.com/x/"
  [profiles."ado.team"]
[profiles.graph]
[profiles.bad name]
[profiles.]
[profiles."]
"""
    assert profile_names(text) == ["graph", "ado.team"]


def test_complete_profiles_is_silent_without_a_config(isolated_env: dict[str, str]) -> None:
    """If no config file exists (or the request is unknown), then `__complete` prints nothing and never an error
    into the user's command line."""
    env = cli_env(isolated_env)
    none = run(env, "__complete", "profiles")
    assert (none.returncode, none.stdout, none.stderr) == (0, "", "")
    assert run(env, "__complete", "nonsense").stdout == ""
