"""``aadhelper man``: the manual page generated from the argparse parser (issue 14 §4)."""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator

import pytest

from aadhelper.cli.app import build_parser
from aadhelper.cli.man import render
from aadhelper.errors import EXIT_CODES
from tests.harness import AADHELPER


def commands(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every subcommand parser at every depth (walked here independently of the module under test)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                yield command
                yield from commands(command)


def roff(text: str) -> str:
    return text.replace("-", "\\-")


@pytest.fixture(scope="module")
def page() -> str:
    result = subprocess.run([AADHELPER, "man"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def test_every_subcommand_and_option_is_in_the_page(page: str) -> None:
    """If a subcommand or option exists in the parser (at any depth), then the page has a section for the
    subcommand and names every one of its options, and lists every exit code."""
    parser = build_parser()
    found = list(commands(parser))
    assert len(found) > 10
    for command in found:
        name = command.prog.removeprefix("aadhelper").strip()
        assert f'.SS "{roff(name)}"' in page, f"no section for {name}"
        section = page.split(f'.SS "{roff(name)}"', 1)[1].split(".SS ", 1)[0]
        for action in command._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"\\fB{roff(option)}\\fR" in section, f"{name}: {option} missing"
    for code, _ in EXIT_CODES:
        assert f".TP\n\\fB{code}\\fR\n" in page


def test_the_page_renders_without_warnings(page: str, require: Callable[[str], None]) -> None:
    """If man is installed, then `man -l` renders the page with every subcommand and no warning on stderr (else
    groff with all warnings on checks it)."""
    if shutil.which("man"):
        result = subprocess.run(["man", "-l", "-"], input=page, capture_output=True, text=True, timeout=60,
                                env=dict(os.environ, MANWIDTH="80", MANPAGER="cat", PAGER="cat"))
    else:
        require("groff")
        result = subprocess.run(["groff", "-man", "-Tutf8", "-ww"], input=page, capture_output=True, text=True,
                                timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "aadhelper profile git-url add" in " ".join(result.stdout.split())
    assert "EXIT STATUS" in result.stdout


def test_roff_control_characters_in_help_are_escaped() -> None:
    """If a help text starts with a dot or holds a backslash, then it is printed as text, not read as a roff
    request or escape."""
    parser = argparse.ArgumentParser(prog="aadhelper", description="Tokens.")
    sub = parser.add_subparsers()
    command = sub.add_parser("x", description=".TH injected", help="'quote")
    command.add_argument("--path", help=r"C:\new \fB bold")
    text = render(parser, date=datetime.date(2026, 1, 1))
    assert "\n.TH injected" not in text and "\\&.TH injected" in text
    assert "\\&'quote" in text
    assert r"C:\enew \efB bold" in text
    assert '"2026-01-01"' in text
