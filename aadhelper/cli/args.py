"""Argument types shared by the verbs' argparse parsers (imported only when argparse is in use)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ..protocol import MAX_MIN_VALID
from .values import whole_seconds


def seconds(low: int = 0, high: int = MAX_MIN_VALID) -> Callable[[str], int]:
    """An argparse type: a whole number of seconds from ``low`` to ``high``."""
    def parse(value: str) -> int:
        number = whole_seconds(value, low, high)
        if number is None:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of seconds from {low} to {high}")
        return number

    return parse
