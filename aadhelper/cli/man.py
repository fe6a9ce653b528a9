"""``aadhelper man``: the manual page, generated from the argparse parser and printed as roff (man(7) macros).

Generated, not written by hand, so it cannot drift from the command line: every subcommand at every depth gets a
section with its usage line, description, positional arguments and options (with their help text), and the exit
codes come from :data:`aadhelper.errors.EXIT_CODES`, as ``aadhelper --help`` prints them. Install it where man
finds it for a ``~/.local/bin`` installation::

    mkdir -p ~/.local/share/man/man1 && aadhelper man >~/.local/share/man/man1/aadhelper.1

argparse keeps the parts this needs in private attributes (``_actions``, ``_SubParsersAction.choices``,
``_choices_actions``); they have been stable since Python 3.2, and a test renders the page for every subcommand.
"""

from __future__ import annotations

import argparse
import datetime
import re
from collections.abc import Iterator

from .. import __version__
from ..errors import EXIT_CODES

#: The page's section: user commands.
SECTION = "1"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "man", help="print this manual page as roff (e.g. `aadhelper man | man -l -`)",
        description="Print aadhelper's manual page, generated from its command-line parser, in roff (man(7)). "
                    "Read it with `aadhelper man | man -l -`, or install it with "
                    "`aadhelper man >~/.local/share/man/man1/aadhelper.1`.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    parser: argparse.ArgumentParser = args.parser  # the whole command line (set by cli.app.build_parser)
    sys.stdout.write(render(parser))
    return 0


def render(parser: argparse.ArgumentParser, *, date: datetime.date | None = None) -> str:
    """The whole page for ``parser`` (the ``aadhelper`` parser and its subcommands)."""
    name = parser.prog
    day = (date or datetime.date.today()).isoformat()
    lines = [
        f'.TH {name.upper()} {SECTION} "{day}" "{name} {__version__}" "User Commands"',
        ".nh",  # no hyphenation and a ragged right edge: option names and URLs stay whole
        ".ad l",
        ".SH NAME",
        f"{_text(name)} \\- {_text(_first_sentence(parser.description or ''))}",
        ".SH SYNOPSIS",
        *_usage(parser),
        ".SH DESCRIPTION",
        _text(parser.description or ""),
        *_arguments(parser, top=True),
        ".SH COMMANDS",
    ]
    for command in _subcommands(parser):
        lines += [".SS " + _quoted(command.prog.removeprefix(name).strip()), *_usage(command)]
        if command.description:
            lines += [".PP", _text(command.description)]
        lines += _arguments(command)
        if command.epilog:  # examples: kept as laid out
            lines += [".PP", ".nf", *(_line(line) for line in command.epilog.splitlines()), ".fi"]
    lines += [".SH EXIT STATUS", *_exit_codes(), ".SH SEE ALSO",
              "\\fBgit-credential\\fR(1), \\fBsystemctl\\fR(1), \\fBkubectl\\fR(1)"]
    return "\n".join(lines) + "\n"


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every subcommand parser below ``parser``, depth first, in the order they were added."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                yield command
                yield from _subcommands(command)


def _usage(parser: argparse.ArgumentParser) -> list[str]:
    usage = " ".join(parser.format_usage().removeprefix("usage:").split())
    return [".PP", _text(usage)]


def _arguments(parser: argparse.ArgumentParser, *, top: bool = False) -> list[str]:
    """The parser's positional arguments and options, each an indented paragraph with its help (subparser
    actions are listed as commands instead)."""
    help_of = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            help_of = {choice.dest: choice.help for choice in action._choices_actions}
    lines: list[str] = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or (isinstance(action, argparse._HelpAction) and not top):
            continue  # every subcommand has -h/--help: said once, for the command itself
        if isinstance(action, argparse._SubParsersAction):
            for sub_name in dict.fromkeys(action.choices):
                lines += [".TP", f"\\fB{_text(sub_name)}\\fR", _text(help_of.get(sub_name) or "")]
            continue
        lines += [".TP", _invocation(action), _text(_expand(action))]
    return lines


def _invocation(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"\\fI{_text(_metavar(action))}\\fR"
    takes_value = action.nargs != 0
    forms = []
    for option in action.option_strings:
        form = f"\\fB{_text(option)}\\fR"
        if takes_value:
            form += f" \\fI{_text(_metavar(action))}\\fR"
        forms.append(form)
    return ", ".join(forms)


def _metavar(action: argparse.Action) -> str:
    if isinstance(action.metavar, tuple):
        return " ".join(action.metavar)
    if action.metavar:
        return action.metavar
    if action.choices is not None and not action.option_strings:
        return "{" + ",".join(map(str, action.choices)) + "}"
    return action.dest.upper() if action.option_strings else action.dest


def _expand(action: argparse.Action) -> str:
    """The help text with argparse's ``%(default)s``-style fields filled in, as ``--help`` shows it."""
    text = action.help or ""
    if "%" not in text:
        return text
    fields = {name: value.__name__ if callable(value) else value for name, value in vars(action).items()}
    fields["prog"] = "aadhelper"
    try:
        return text % fields
    except (KeyError, TypeError, ValueError):
        return text


def _exit_codes() -> list[str]:
    lines: list[str] = []
    for code, meaning in EXIT_CODES:
        lines += [".TP", f"\\fB{code}\\fR", _text(meaning)]
    return lines


def _first_sentence(text: str) -> str:
    return re.split(r"(?<=[.:])\s", text.strip(), maxsplit=1)[0].rstrip(".:")


def _quoted(text: str) -> str:
    return '"' + _text(text).replace('"', '\\(dq') + '"'


def _line(text: str) -> str:
    """``text`` as a roff line, its spacing kept: backslashes escaped, hyphens made the minus sign options need
    (copy-pasteable), and a line that would start with a control character (``.`` or ``'``) protected."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def _text(text: str) -> str:
    """``text`` as one roff paragraph: its whitespace (argparse's line breaks) collapsed, escaped as by _line."""
    return _line(" ".join(text.split()))
