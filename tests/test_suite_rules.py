"""Rules about the test suite itself, checked on its source.

A test that needs a real component must fail, not skip, when ``CI=true``: every skip goes through
:func:`tests.conftest.require` (or the ``requires`` marker), which fails in CI. A bare ``pytest.skip``,
``skipif`` or ``importorskip`` anywhere else would let CI pass without running the test.
"""

from __future__ import annotations

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
