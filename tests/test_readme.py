"""The README keeps up with the code: its command table names every subcommand and option of the argparse parser,
its exit-code table every exit code, and its links lead somewhere (files exist, anchors name a heading)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

from aadhelper.cli.app import build_parser
from aadhelper.errors import EXIT_CODES

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def leaf_commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[
        tuple[str, argparse.ArgumentParser]]:
    """Each command a user runs ("profile git-url add"), with its parser; groups of subcommands are not one."""
    groups = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    if path and not groups:
        yield " ".join(path), parser
    for group in groups:
        for name, command in group.choices.items():
            yield from leaf_commands(command, (*path, name))


def table_after(marker: str) -> list[str]:
    """The rows of the Markdown table that follows ``marker`` in the README."""
    text = README.read_text()
    start = text.index(marker)
    rows = []
    for line in text[start:].splitlines()[1:]:
        if line.startswith("|"):
            rows.append(line)
        elif rows:
            break
    return rows[2:]  # header and separator


def named_options(parser: argparse.ArgumentParser) -> list[str]:
    """The options of a command the README must name: each long option, and a short one that has no long form."""
    return [option for action in parser._actions if not isinstance(action, argparse._HelpAction)
            for option in action.option_strings
            if option.startswith("--") or not any(o.startswith("--") for o in action.option_strings)]


def names(text: str, option: str) -> bool:
    """Whether ``text`` names ``option`` (as `--opt ...`, `-v/--verbose` or `... --opt`)."""
    return f"`{option}" in text or f"/{option}`" in text or f" {option}" in text


def test_the_command_table_names_every_subcommand_and_option() -> None:
    """If the parser has a subcommand or an option, then the README's command table has a row for the subcommand
    that names the option (add the row when you add a command); an option every command has (-v/--verbose) is
    named once, in the text above the table, instead of in every row."""
    leaves = list(leaf_commands(build_parser()))
    everywhere = set.intersection(*(set(named_options(parser)) for _, parser in leaves))
    text = README.read_text()
    intro = text[text.index("### Commands"):text.index("<!-- commands table")]
    for option in sorted(everywhere):
        assert names(intro, option), f"the text above the README's command table does not name {option}"
    rows = table_after("<!-- commands table")
    for command, parser in leaves:
        matching = [row for row in rows if re.match(rf"\| `aadhelper {re.escape(command)}(`| )", row)]
        assert matching, f"the README's command table has no row for `aadhelper {command}`"
        (row,) = matching
        for option in named_options(parser):
            if option not in everywhere:
                assert names(row, option), f"the README's row for `aadhelper {command}` does not name {option}"


def test_the_exit_code_table_lists_every_exit_code() -> None:
    """If aadhelper has an exit code, then the README's exit-code table explains it."""
    codes = {row.split("|")[1].strip() for row in table_after("### Exit codes")}
    assert codes == {str(code) for code, _ in EXIT_CODES}


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_lead_somewhere() -> None:
    """If the README or a page in docs/ links to a file or an anchor, then the file exists and the anchor names a
    heading of the page it points into."""
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            file, _, anchor = target.partition("#")
            linked = (page.parent / file).resolve() if file else page
            assert linked.exists(), f"{page.name}: link to missing {file}"
            if anchor:
                headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.M)
                assert anchor in {slug(heading) for heading in headings}, f"{page.name}: no heading for #{anchor}"


ARCHITECTURE = ROOT / "docs" / "architecture.md"


def module_table_rows() -> list[str]:
    """The rows of docs/architecture.md's module table."""
    rows, inside = [], False
    for line in ARCHITECTURE.read_text().splitlines():
        if line.startswith("| module | responsibility |"):
            inside = True
        elif inside and line.startswith("|"):
            rows.append(line)
        elif inside:
            break
    return rows[1:]  # the separator


def test_the_module_table_names_every_module() -> None:
    """If aadhelper has a module or a package, then docs/architecture.md's module table names it: by its path
    (`grants/federated.py`, `doctor/`), or by its bare name in a row whose first cell names its package
    (`federated` in the `grants/` row)."""
    rows = module_table_rows()
    assert rows, "docs/architecture.md has no module table"
    table = "\n".join(rows)
    package_root = ROOT / "aadhelper"
    missing = []
    for path in sorted(package_root.rglob("*.py")):
        relative = path.relative_to(package_root)
        package = "".join(f"{part}/" for part in relative.parts[:-1])
        if path.name == "__init__.py":
            if not package:
                continue  # aadhelper itself
            named = f"`{package}`" in table
        else:
            named = f"`{relative.as_posix()}`" in table or any(
                f"`{package}`" in row.split("|")[1] and (f"`{path.stem}`" in row or f"`{path.name}`" in row)
                for row in rows)
        if not named:
            missing.append(relative.as_posix())
    assert not missing, f"docs/architecture.md's module table does not name: {', '.join(missing)}"
