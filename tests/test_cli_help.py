"""The CLI people expect (issue 14 §2): did-you-mean for mistyped subcommands, options and profile names; examples
in every subcommand's --help that really parse; -v/--verbose on every subcommand, saying what was asked, of whom
and how long it took. The lists come from the argparse tree, so subcommands added later are held to the same."""

from __future__ import annotations

import shlex

import pytest

from aadhelper.cli.app import build_parser
from aadhelper.cli.tree import walk
from aadhelper.testing import FakeDaemon
from tests.harness import GRAPH_PROFILE, DaemonProcess, cli_env, one_error_line, run

PARSER_PATHS = [" ".join(path) for path, _ in walk(build_parser()) if path]


@pytest.fixture
def env(isolated_env: dict[str, str]) -> dict[str, str]:
    clean = cli_env(isolated_env)
    assert run(clean, *GRAPH_PROFILE).returncode == 0
    return clean


@pytest.mark.parametrize("args, suggestion", [
    (["stauts"], "(did you mean 'status'?)"),
    (["profile", "shwo", "graph"], "(did you mean 'show'?)"),
    (["daemon", "stpo"], "(did you mean 'stop'?)"),
    (["header", "graph", "--sope", "x"], "(did you mean '--scope'?)"),
    (["profile", "set", "graph", "--min-vaild=5"], "(did you mean '--min-valid'?)"),
    (["profile", "show", "grpah"], "(did you mean 'graph'?)"),
    (["login", "grahp"], "(did you mean 'graph'?)"),
])
def test_a_mistyped_name_gets_a_suggestion(env: dict[str, str], args: list[str], suggestion: str) -> None:
    """If a subcommand, option or profile name is mistyped, then the one error line suggests the close one."""
    result = run(env, *args)
    assert result.returncode in (2, 3)
    assert suggestion in one_error_line(result)


def test_an_unknown_profile_from_the_daemon_gets_a_suggestion(env: dict[str, str]) -> None:
    """If the running daemon refuses an unknown profile, then the client's one line suggests the configured one."""
    with DaemonProcess(env):
        result = run(env, "header", "grahp")
    assert result.returncode == 3
    assert "profile 'grahp' is not configured (did you mean 'graph'?)" in one_error_line(result)


@pytest.mark.parametrize("path", PARSER_PATHS)
def test_every_subcommand_has_examples_that_parse(path: str) -> None:
    """If a subcommand's --help is shown, then it ends with examples, and every `aadhelper ...` example in it parses
    with the real parser."""
    node = dict((" ".join(p), n) for p, n in walk(build_parser()))[path]
    text = node.format_help()
    assert "\nexamples:\n" in text, f"`aadhelper {path} --help` has no examples (cli/tree.py EXAMPLES or an epilog)"
    for line in text.split("\nexamples:\n", 1)[1].splitlines():
        words = shlex.split(line.split(" | ")[0].split(" && ")[0].split(" > ")[0], comments=True)
        while words and "=" in words[0] and not words[0].startswith("-"):  # VAR=value before the command
            words.pop(0)
        if words and words[0] == "aadhelper":
            build_parser().parse_args(words[1:])


@pytest.mark.parametrize("path", PARSER_PATHS)
def test_every_subcommand_takes_verbose(path: str) -> None:
    """If any subcommand is given -v or --verbose, then the parser accepts it."""
    node = dict((" ".join(p), n) for p, n in walk(build_parser()))[path]
    assert "-v" in node._option_string_actions and "--verbose" in node._option_string_actions


def test_verbose_says_what_was_asked_of_whom_and_how_long(env: dict[str, str]) -> None:
    """If `header -v` runs, then stderr says which request went to which socket and how long it took, and stdout
    still carries only the header."""
    path = env["AADHELPER_SOCKET"]
    with FakeDaemon(path):
        result = run(env, "header", "graph", "--scope", "https://x/.default", "-v")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Authorization: Bearer ")
    line = result.stderr.strip()
    assert line.startswith(f"aadhelper: asked the daemon on {path} for token (profile graph, scopes https://x/.default)")
    assert line.endswith(" ms") and "answered in " in line


def test_az_help_shows_examples_that_az_parses(env: dict[str, str]) -> None:
    """If `aadhelper az --help` runs (answered by az's own parser, not argparse), then it ends with examples too, and
    each `aadhelper az ...` example parses with that parser."""
    from aadhelper.cli import az_format

    result = run(env, "az", "--help")
    assert result.returncode == 0 and "\nexamples:\n" in result.stdout
    examples = result.stdout.split("\nexamples:\n", 1)[1].splitlines()
    assert examples
    for line in examples:
        words = shlex.split(line.split(" && ")[0])
        assert words[:2] == ["aadhelper", "az"]
        assert az_format.parse(words[2:]).action in ("token", "install-shim")
