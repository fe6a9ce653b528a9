"""Rules about the test suite itself, checked on its source.

Test modules never import one another: a helper or fixture more than one module uses lives in tests/harness.py
or tests/conftest.py (or, when users need it too, in :mod:`aadhelper.testing`), so that running, moving or
deleting one test module never changes another's fixtures.

A test that needs a real component must fail, not skip, when ``CI=true``: every skip goes through
:func:`tests.conftest.require` (or the ``requires`` marker), which fails in CI. A bare ``pytest.skip``,
``skipif`` or ``importorskip`` anywhere else would let CI pass without running the test.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
#: Ways to skip a test that bypass the CI guard (this file names them, hence excluded below).
_BYPASS = re.compile(r"pytest\.skip\(|pytest\.importorskip\(|mark\.skip\b|mark\.skipif\b|mark\.xfail\b")
#: The one place allowed to skip: conftest's require(), which fails instead when CI=true.
_ALLOWED = {("conftest.py", '    pytest.skip(f"needs {component}: {reason}")')}


def test_every_skip_goes_through_the_ci_guard() -> None:
    """If any test module skips or xfails by itself, then this test names the line: route it through require()."""
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        if path.name == Path(__file__).name:
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if _BYPASS.search(line) and (path.name, line) not in _ALLOWED:
                offenders.append(f"{path.relative_to(TESTS)}:{number}: {line.strip()}")
    assert offenders == []


def _imported_test_modules(tree: ast.Module) -> list[str]:
    """The ``test_*`` modules of this directory an import statement anywhere in ``tree`` names."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("tests.test_")]
        elif isinstance(node, ast.ImportFrom):
            package = "." * node.level + (node.module or "")
            if package.rpartition(".")[2].startswith("test_"):  # from tests.test_x import ..., from .test_x import
                found.append(package)
            elif package in ("tests", "."):  # from tests import test_x, from . import test_x
                found += [f"{package}.{alias.name}".replace("..", ".") for alias in node.names
                          if alias.name.startswith("test_")]
    return found


def test_no_test_module_imports_another() -> None:
    """If a test module imports another test module (its helpers or its fixtures), then this test names the import:
    move what both need to tests/harness.py or tests/conftest.py."""
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        for name in _imported_test_modules(ast.parse(path.read_text(), str(path))):
            offenders.append(f"{path.relative_to(TESTS)} imports {name}")
    assert offenders == []


def test_the_import_rule_sees_every_spelling() -> None:
    """If an import names a test module in any of the four spellings, then the rule finds it; harness and conftest
    imports are not test modules."""
    source = ("from tests.test_a import x\nfrom .test_b import y\nfrom tests import test_c, harness\n"
              "from . import test_d\nimport tests.test_e\nfrom tests.harness import z\nfrom .conftest import w\n"
              "def f() -> None:\n    from tests.test_f import v\n")
    assert _imported_test_modules(ast.parse(source)) == [
        "tests.test_a", ".test_b", "tests.test_c", ".test_d", "tests.test_e", "tests.test_f"]
