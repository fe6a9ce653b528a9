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


def count(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high`` (lines, items)."""
    def parse(value: str) -> int:
        number = whole_seconds(value, low, high)  # the same digits-only reading, whatever the unit
        if number is None:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number from {low} to {high}")
        return number

    return parse


def word(what: str) -> Callable[[str], str]:
    """An argparse type: a non-empty value without spaces or control characters (a scope, a profile name): an empty
    ``--scope ''`` is a usage error here, not a malformed request for the daemon to refuse."""
    def parse(value: str) -> str:
        if not value or not value.isprintable() or any(char.isspace() for char in value):
            raise argparse.ArgumentTypeError(f"{value!r} is not a {what}: it must be non-empty, without spaces")
        return value

    return parse
