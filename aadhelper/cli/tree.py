"""The argparse tree as data, walked in one place: everything that must cover every subcommand (those of other
modules too, whenever they are added) derives from the parser rather than from a hand-kept list.

- :func:`walk` and :func:`subcommands`/:func:`options` read the tree (did-you-mean, shell completion);
- :func:`finish` gives every subcommand ``-v/--verbose`` (unless it has its own), its examples epilog
  (:data:`EXAMPLES`), a ``_parser`` default naming itself, so a usage error can suggest that parser's options, and
  ``_root``, the whole tree (for ``completion``, without importing the application back).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from . import az_format

#: Examples shown at the end of each subcommand's --help, by command path. A subcommand without an entry here
#: can carry its own ``epilog`` (tests/test_cli_help.py checks that every one has examples).
EXAMPLES: dict[str, tuple[str, ...]] = {
    "header": ('curl -H "$(aadhelper header graph)" https://graph.microsoft.com/v1.0/me',
               "aadhelper header graph --scope 499b84ac-1321-427f-aa17-267ca6975798/.default --min-valid 600"),
    "token": ("aadhelper token graph", "aadhelper token graph --json | jq -r .expires_on"),
    "profile": ("aadhelper profile list", "aadhelper profile show graph"),
    "profile add": ("aadhelper profile add graph --tenant contoso.onmicrosoft.com --client-id APP_ID "
                    "--scope https://graph.microsoft.com/.default",
                    "aadhelper profile add me --tenant organizations --client-id PUBLIC_APP_ID --user "
                    "--scope https://graph.microsoft.com/.default"),
    "profile set": ("aadhelper profile set graph --min-valid 600", "aadhelper profile set graph --authority usgov",
                    "aadhelper profile set graph --unset authority"),
    "profile list": ("aadhelper profile list", "aadhelper profile list --json"),
    "profile show": ("aadhelper profile show graph", "aadhelper profile show --json"),
    "profile remove": ("aadhelper profile remove graph",),
    "profile default": ("aadhelper profile default graph",),
    "profile git-url": ("aadhelper profile git-url add ado https://dev.azure.com/contoso/",),
    "profile git-url add": ("aadhelper profile git-url add ado https://dev.azure.com/contoso/",
                            "aadhelper profile git-url add ado https://dev.azure.com/contoso/ --username me@contoso.com"
                            ),
    "profile git-url remove": ("aadhelper profile git-url remove ado https://dev.azure.com/contoso/",),
    "secret": ("printf '%s' \"$SECRET\" | aadhelper secret set graph", "aadhelper secret delete graph"),
    "secret set": ("aadhelper secret set graph            # prompts without echo",
                   "printf '%s' \"$SECRET\" | aadhelper secret set graph"),
    "secret delete": ("aadhelper secret delete graph",),
    "daemon": ("aadhelper daemon -v                  # in the foreground, debug log on stderr",
               "aadhelper daemon restart"),
    "daemon start": ("aadhelper daemon start",),
    "daemon stop": ("aadhelper daemon stop", "aadhelper daemon stop --timeout 30"),
    "daemon restart": ("AADHELPER_LOG_LEVEL=debug aadhelper daemon restart",),
    "status": ("aadhelper status", "aadhelper status --json | jq '.profiles[].tokens[].state'"),
    "login": ("aadhelper login me                  # device code", "aadhelper login me --browser",
              "aadhelper login me --timeout 120"),
    "logout": ("aadhelper logout me",),
    "git-credential": ("git config --global credential.https://dev.azure.com.helper aadhelper",
                       "printf 'protocol=https\\nhost=dev.azure.com\\n\\n' | aadhelper git-credential get"),
    "service": ("aadhelper service install", "aadhelper service uninstall"),
    "service install": ("aadhelper service install && systemctl --user daemon-reload && "
                        "systemctl --user enable --now aadhelper.socket", "aadhelper service install --dry-run"),
    "service uninstall": ("aadhelper service uninstall", "aadhelper service uninstall --dry-run"),
    "service print": ("aadhelper service print",),
    "demo": ("aadhelper demo",),
    "logs": ("aadhelper logs", "aadhelper logs -f", "aadhelper logs -n 200 | grep WARNING"),
    "completion": ("aadhelper completion bash > ~/.local/share/bash-completion/completions/aadhelper",
                   "aadhelper completion zsh > ~/.zfunc/_aadhelper",
                   "aadhelper completion fish > ~/.config/fish/completions/aadhelper.fish"),
    "exec": ("aadhelper exec arm -- python deploy.py    # DefaultAzureCredential in deploy.py gets arm's tokens",
             "aadhelper exec --scope https://management.azure.com/.default arm -- terraform plan",
             "aadhelper exec --az-shim arm -- ./deploy.sh    # its `az account get-access-token` too"),
    "kubectl-credential": ("aadhelper kubeconfig aks --kubeconfig ~/.kube/config --context my-aks    # kubectl "
                           "then runs it",
                           "KUBERNETES_EXEC_INFO='{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":"
                           "\"ExecCredential\",\"spec\":{\"interactive\":false}}' aadhelper kubectl-credential aks"),
    "kubeconfig": ("aadhelper kubeconfig aks    # prints the users: entry",
                   "aadhelper kubeconfig aks --kubeconfig ~/.kube/config --context my-aks",
                   "aadhelper kubeconfig aks --server-id SERVER_APP_ID --kubeconfig ./kubeconfig --context dev"),
    "az": az_format.EXAMPLES,  # also in `aadhelper az --help`, which az's own parser answers
    "man": ("aadhelper man | man -l -",
            "aadhelper man > ~/.local/share/man/man1/aadhelper.1"),
}

VERBOSE_HELP = "say on stderr what was asked, of whom, and how long it took"


class HelpFormatter(argparse.HelpFormatter):
    """argparse's wrapping for descriptions, but an ``examples:`` epilog keeps its lines (one command each)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommands directly under ``parser`` (name -> parser), in the order they were added."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def options(parser: argparse.ArgumentParser) -> list[str]:
    """Every option string of ``parser`` (``--scope``, ``-v``...), help included."""
    return [string for action in parser._actions for string in action.option_strings]


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser of the tree with its command path (``()`` for the top, ``("profile", "add")``...)."""
    yield path, parser
    for name, child in subcommands(parser).items():
        yield from walk(child, (*path, name))


def finish(parser: argparse.ArgumentParser) -> None:
    """Give every subcommand ``-v/--verbose``, its examples and ``_parser`` (see the module docstring)."""
    for path, node in walk(parser):
        if not path:
            continue
        if "-v" not in node._option_string_actions and "--verbose" not in node._option_string_actions:
            node.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
        examples = EXAMPLES.get(" ".join(path))
        if examples and not node.epilog:
            node.epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples)
        if node.formatter_class is argparse.HelpFormatter:
            node.formatter_class = HelpFormatter
        node.set_defaults(_parser=node, _root=parser)
