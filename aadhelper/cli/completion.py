"""``aadhelper completion bash|zsh|fish``: a shell completion script for subcommands, options, option values and
profile names.

The subcommands and options are taken from the argparse tree when the script is generated (:mod:`.tree`), so
every subcommand is covered, those added later too (regenerate after an upgrade). Profile names change while the
shell runs: the script asks ``aadhelper __complete profiles`` for them at each completion, a hidden fast path
(:func:`complete_fast`) that reads only the names out of the config file, without argparse, tomllib or anything
of the daemon (tests/test_import_rules.py).

zsh uses the bash script through zsh's ``bashcompinit`` (as the Azure CLI does); fish gets its own functions
with the same data.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # the fast path below must not load typing
if TYPE_CHECKING:
    import argparse
    from collections.abc import Mapping, Sequence

SHELLS = ("bash", "zsh", "fish")
#: Positional arguments that name a profile (their dest in the verbs' parsers).
PROFILE_DESTS = ("profile", "name")
#: The hidden verb the scripts call; never shown in --help.
FAST_VERB = "__complete"


# -- the fast path: `aadhelper __complete profiles` -------------------------------------------------------------


def complete_fast(args: Sequence[str]) -> int:
    """``__complete profiles``: the configured profile names, one a line; nothing (exit 0) when there are none or
    the file cannot be read, so a completion never prints an error into the user's command line."""
    if list(args) != ["profiles"]:
        return 2
    from .. import paths

    try:
        with open(paths.config_file(), "rb") as file:
            text = file.read(1024 * 1024).decode("utf-8", "replace")
    except (OSError, ValueError):
        return 0
    names = profile_names(text)
    if names:
        sys.stdout.write("\n".join(names) + "\n")
    return 0


def profile_names(text: str) -> list[str]:
    """The names of the ``[profiles.NAME]`` tables of a config file's text, in order, without parsing the TOML (the
    one question a completion asks; names are letters, digits, '-', '_' and '.', optionally quoted)."""
    names: list[str] = []
    for line in text.splitlines():
        header = line.strip()
        if not header.startswith("[profiles.") or header.startswith("[["):
            continue
        key = header[len("[profiles."):].split("]", 1)[0].strip()
        if key[:1] in ('"', "'"):  # (not `in "\"'"`: an empty key is "in" any string)
            quote = key[0]
            key = key[1:].split(quote, 1)[0]
        elif "." in key:
            continue  # [profiles.NAME.sub]: not a profile header
        if key and key not in names and all(c.isalnum() or c in "._-" for c in key) and key.isascii():
            names.append(key)
    return names


# -- the generated scripts --------------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "completion", help="print a shell completion script (bash, zsh or fish)",
        description="Print a completion script for SHELL: subcommands, options, their values and profile names. "
                    "Load it from your shell's start-up file, or save it where the shell looks for completions.")
    parser.add_argument("shell", choices=SHELLS, metavar="SHELL", help=f"one of {', '.join(SHELLS)}")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sys.stdout.write(script(args.shell, args._root))  # the whole tree, set by tree.finish
    return 0


class Node:
    """What a completion needs of one command path: its subcommands, options, the options that take a value (with
    their choices), and what its positional argument is (a profile name, or choices)."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        import argparse

        from .tree import options, subcommands

        self.subcommands = [name for name in subcommands(parser) if not name.startswith("_")]
        self.options = [option for option in options(parser) if option.startswith("--") or len(option) == 2]
        self.valued: dict[str, list[str]] = {}
        self.positional: list[str] | None = None  # None: nothing to offer; []: profile names
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            choices = [str(choice) for choice in action.choices] if action.choices else []
            if action.option_strings:
                if action.nargs != 0:
                    for option in action.option_strings:
                        self.valued[option] = choices
            elif action.dest in PROFILE_DESTS:
                self.positional = []
            elif choices and self.positional is None:
                self.positional = choices


def nodes(parser: argparse.ArgumentParser) -> dict[str, Node]:
    """Every command path ("" for the top, "profile add"...) and its :class:`Node`."""
    from .tree import walk

    return {" ".join(path): Node(node) for path, node in walk(parser)}


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    tree = nodes(parser)
    if shell == "fish":
        return _fish(tree)
    body = _bash(tree)
    if shell == "zsh":
        return ("#compdef aadhelper\n# aadhelper completion for zsh, through zsh's bash completion support.\n"
                "(( $+functions[compdef] )) || { autoload -U +X compinit && compinit -i }\n"
                "autoload -U +X bashcompinit && bashcompinit\n" + body)
    return body


def _words(items: Sequence[str]) -> str:
    return " ".join(items)


def _bash(tree: dict[str, Node]) -> str:
    subs = "".join(f'        "{path}") echo "{_words(node.subcommands)}" ;;\n'
                   for path, node in tree.items() if node.subcommands)
    opts = "".join(f'        "{path}") echo "{_words(node.options)}" ;;\n' for path, node in tree.items())
    valued = "".join(f'        "{path}") echo "{_words(list(node.valued))}" ;;\n'
                     for path, node in tree.items() if node.valued)
    choices = "".join(f'        "{path} {option}") echo "{_words(values)}" ;;\n'
                      for path, node in tree.items() for option, values in node.valued.items() if values)
    positional = "".join(
        f'        "{path}") echo "{"@profiles" if node.positional == [] else _words(node.positional or [])}" ;;\n'
        for path, node in tree.items() if node.positional is not None)
    return f"""# aadhelper completion for bash (generated by `aadhelper completion bash`; regenerate after upgrading).
_aadhelper_subcommands() {{
    case "$1" in
{subs}    esac
}}
_aadhelper_options() {{
    case "$1" in
{opts}    esac
}}
_aadhelper_valued() {{
    case "$1" in
{valued}    esac
}}
_aadhelper_choices() {{
    case "$1" in
{choices}    esac
}}
_aadhelper_positional() {{
    case "$1" in
{positional}    esac
}}
_aadhelper() {{
    # (not `path`: zsh ties that name to $PATH)
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="" cmdpath="" word i skip=0 given=0 candidates
    (( COMP_CWORD > 0 )) && prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    for (( i = 1; i < COMP_CWORD; i++ )); do
        word="${{COMP_WORDS[i]}}"
        if (( skip )); then skip=0; continue; fi
        if [[ $word == -* ]]; then
            [[ $word != *=* && " $(_aadhelper_valued "$cmdpath") " == *" $word "* ]] && skip=1
            continue
        fi
        if [[ " $(_aadhelper_subcommands "$cmdpath") " == *" $word "* ]]; then
            cmdpath="${{cmdpath:+$cmdpath }}$word"
            given=0
        else
            given=$(( given + 1 ))  # a positional argument already typed
        fi
    done
    if (( skip )); then
        candidates=$(_aadhelper_choices "$cmdpath $prev")
        if [[ -n $candidates ]]; then
            COMPREPLY=( $(compgen -W "$candidates" -- "$cur") )
        else
            COMPREPLY=( $(compgen -f -- "$cur") )
        fi
        return 0
    fi
    if [[ $cur == -* ]]; then
        COMPREPLY=( $(compgen -W "$(_aadhelper_options "$cmdpath")" -- "$cur") )
        return 0
    fi
    candidates=$(_aadhelper_subcommands "$cmdpath")
    if [[ -z $candidates ]] && (( given == 0 )); then
        candidates=$(_aadhelper_positional "$cmdpath")
        [[ $candidates == "@profiles" ]] && candidates=$("${{COMP_WORDS[0]}}" {FAST_VERB} profiles 2>/dev/null)
    fi
    COMPREPLY=( $(compgen -W "$candidates" -- "$cur") )
    return 0
}}
complete -F _aadhelper aadhelper
"""


def _fish(tree: dict[str, Node]) -> str:
    def switch(name: str, cases: Mapping[str, Sequence[str]]) -> str:
        body = "".join(f"        case '{key}'\n            printf '%s\\n' {_words(values)}\n"
                       for key, values in cases.items() if values)
        return f"function {name}\n    switch \"$argv[1]\"\n{body}    end\nend\n"

    positional = {path: (["@profiles"] if node.positional == [] else node.positional or [])
                  for path, node in tree.items() if node.positional is not None}
    return "\n".join([
        "# aadhelper completion for fish (generated by `aadhelper completion fish`; regenerate after upgrading).",
        switch("__aadhelper_subcommands", {path: node.subcommands for path, node in tree.items()}),
        switch("__aadhelper_options", {path: node.options for path, node in tree.items()}),
        switch("__aadhelper_valued", {path: list(node.valued) for path, node in tree.items()}),
        switch("__aadhelper_choices", {f"{path} {option}": values for path, node in tree.items()
                                       for option, values in node.valued.items()}),
        switch("__aadhelper_positional", positional),
        f"""function __aadhelper_complete
    set -l tokens (commandline -opc)
    set -l cur (commandline -ct)
    set -l cmdpath ''
    set -l skip 0
    set -l given 0
    set -l prev ''
    for word in $tokens[2..-1]
        set prev $word
        if test $skip = 1
            set skip 0
            continue
        end
        if string match -q -- '-*' $word
            if not string match -q -- '*=*' $word; and contains -- $word (__aadhelper_valued "$cmdpath")
                set skip 1
            end
            continue
        end
        if contains -- $word (__aadhelper_subcommands "$cmdpath")
            set cmdpath (string trim -- "$cmdpath $word")
            set given 0
        else
            set given (math $given + 1)
        end
    end
    if test $skip = 1
        set -l values (__aadhelper_choices "$cmdpath $prev")
        if test (count $values) -gt 0
            printf '%s\\n' $values
        else
            __fish_complete_path $cur
        end
        return
    end
    if string match -q -- '-*' $cur
        __aadhelper_options "$cmdpath"
        return
    end
    set -l subs (__aadhelper_subcommands "$cmdpath")
    if test (count $subs) -gt 0
        printf '%s\\n' $subs
        return
    end
    test $given = 0; or return
    set -l values (__aadhelper_positional "$cmdpath")
    if test "$values" = '@profiles'
        {"$tokens[1]"} {FAST_VERB} profiles 2>/dev/null
    else if test (count $values) -gt 0
        printf '%s\\n' $values
    end
end
""",
        "complete -c aadhelper -f -a '(__aadhelper_complete)'",
        "",
    ])
