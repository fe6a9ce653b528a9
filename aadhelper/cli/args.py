"""Argument types shared by the verbs' argparse parsers (imported only when argparse is in use)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def seconds(low: int = 0, high: int = 86400) -> Callable[[str], int]:
    """An argparse type: a whole number of seconds from ``low`` to ``high``."""
    def parse(value: str) -> int:
        if not value.isdigit() or not low <= int(value) <= high:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of seconds from {low} to {high}")
        return int(value)

    return parse
