"""The layering contract as a test (issue 11 §3): every aadhelper module belongs to a layer and imports only its own
layer or lower ones, at the top or inside a function; the product never imports the test kit (except the demo,
whose point is the simulated authority), and the kit never imports the CLI.

    errors, tokens, ... (leaves) <- protocol, paths, ... <- config, secrets <- grants, login <- cache, fetcher,
    client <- daemon <- cli
"""

from __future__ import annotations

import ast
from pathlib import Path

import aadhelper

ROOT = Path(aadhelper.__file__).parent

#: Layer of each module (a package's modules share its entry unless listed). Lower layers know nothing above.
LAYERS: dict[str, int] = {
    "errors": 0, "tokens": 0, "proxy": 0, "refresh_policy": 0, "cli.values": 0,
    "protocol": 1, "paths": 1, "systemd": 1, "urls": 1, "process_setup": 1, "secret_chunks": 1,
    "secret_service": 1, "token_request": 1, "git_helper": 1,
    "config": 2, "config_edit": 2, "config_watch": 2, "secret_store": 2, "certificates": 2,
    "grants": 3, "login": 3,
    "cache": 4, "fetcher": 4, "listener": 4, "autostart": 4, "client": 4,
    "mi_endpoint": 4, "loopback_http": 1,
    "daemon": 5, "demo": 5, "daemon_start": 5,
    "cli": 6, "__main__": 6,
    "doctor": 6,  # its systemd check reads the units cli.service renders
    "": 0,  # the package itself: __version__
    "accounts": 1, "suggest": 0,
}
#: Imports across the rule that are the design: the demo runs the simulated authority.
ALLOWED = {("demo", "testing.authority"), ("demo", "testing.resource")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> int | None:
    """The layer of ``module`` (its own entry, else its package's); None for the test kit."""
    if module == "testing" or module.startswith("testing."):
        return None
    while True:
        if module in LAYERS:
            return LAYERS[module]
        if "." not in module:
            raise AssertionError(f"aadhelper.{module} has no layer in tests/test_layers.py: give it one")
        module = module.rsplit(".", 1)[0]


def imports(path: Path) -> set[str]:
    """The aadhelper modules ``path`` imports anywhere (relative names resolved, ``aadhelper.`` dropped)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[:len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            elif node.module and (node.module == "aadhelper" or node.module.startswith("aadhelper.")):
                target = node.module.removeprefix("aadhelper").lstrip(".")
            else:
                continue
            if node.module is None or target == "":
                # `from . import x`: x is a module of that package (or a name defined there; then its package counts)
                found.update(f"{target}.{alias.name}".lstrip(".") for alias in node.names)
            else:
                found.add(target)
        elif isinstance(node, ast.Import):
            found.update(alias.name.removeprefix("aadhelper").lstrip(".") for alias in node.names
                         if alias.name.startswith("aadhelper"))
    return found


def known(module: str) -> str:
    """``module``, or its package when ``module`` names an attribute (``__version__``, ``SecretAccess``)."""
    while module and not ((ROOT / module.replace(".", "/")).with_suffix(".py").exists()
                          or (ROOT / module.replace(".", "/") / "__init__.py").exists()):
        module = module.rpartition(".")[0]
    return module


def test_every_import_goes_down_the_layers() -> None:
    """If a module imports another aadhelper module, then that module is in the same or a lower layer (so a new
    feature cannot make the client load the cache, or the cache load httpx), and the kit and the product stay
    apart."""
    wrong: list[str] = []
    for path in sorted(ROOT.rglob("*.py")):
        source = module_name(path)
        for target in map(known, imports(path)):
            if target == source or (source, target) in ALLOWED:
                continue
            mine, theirs = layer(source), layer(target)
            if mine is None:  # the test kit: anything but the CLI
                if target == "cli" or target.startswith("cli."):
                    wrong.append(f"aadhelper.{source} (test kit) imports aadhelper.{target}")
            elif theirs is None:
                wrong.append(f"aadhelper.{source} imports the test kit aadhelper.{target}")
            elif theirs > mine:
                wrong.append(f"aadhelper.{source} (layer {mine}) imports aadhelper.{target} (layer {theirs})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles_between_modules() -> None:
    """If the modules' imports (lazy ones too) are followed, then no module reaches itself again (a part of a package
    importing its own package's __init__ does not count: the package imports its parts)."""
    graph = {module_name(path): {target for target in map(known, imports(path))
                                 if not module_name(path).startswith(f"{target}.") and target}
             for path in ROOT.rglob("*.py")}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal:
                return True
            if nxt not in seen:
                seen.add(nxt)
                if reaches(nxt, goal, seen):
                    return True
        return False

    cycles = [module for module in graph if module and reaches(module, module, set())]
    assert not cycles, f"modules that import themselves back: {sorted(cycles)}"


def test_no_module_imports_another_modules_private_names() -> None:
    """If a module imports a name from another aadhelper module, then that name is public (no leading underscore):
    what two modules share has one documented home, not a private helper reached into from outside."""
    wrong = [f"aadhelper.{module_name(path)} imports {alias.name} from {'.' * node.level}{node.module or ''}"
             for path in sorted(ROOT.rglob("*.py")) for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("aadhelper"))
             for alias in node.names if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert not wrong, "\n".join(wrong)
