"""The sign-in's output on stderr: instructions as plain lines and, on a terminal, one live status line (a spinner
and the time left) redrawn in place and erased when the flow ends.

Off a terminal (a pipe, a log, a test capturing stderr) only the plain lines are written: no control characters,
no redraws. Stdout stays empty, so ``aadhelper login`` can run inside scripts whose stdout is parsed.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import TextIO, TypeVar

import trio

from .common import unwrapped

T = TypeVar("T")

#: Seconds between redraws of the status line.
FRAME = 0.1
_SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
_ASCII_SPINNER = "|/-\\"
_ERASE_LINE = "\r\x1b[K"


class Console:
    """Where a sign-in talks to the user; ``live`` (default: stderr is a terminal) enables the status line."""

    def __init__(self, stream: TextIO | None = None, *, live: bool | None = None) -> None:
        self._stream = stream or sys.stderr
        self.live = _isatty(self._stream) if live is None else live
        self._showing = False
        self.spinner = _SPINNER if _can_encode(self._stream, _SPINNER) else _ASCII_SPINNER

    def say(self, text: str) -> None:
        """A permanent line (erasing the status line first)."""
        self.clear()
        self._stream.write(text + "\n")
        self._stream.flush()

    def status(self, text: str) -> None:
        """Replace the status line; nothing off a terminal."""
        if not self.live:
            return
        self._stream.write(_ERASE_LINE + text)
        self._stream.flush()
        self._showing = True

    def clear(self) -> None:
        if self._showing:
            self._stream.write(_ERASE_LINE)
            self._stream.flush()
            self._showing = False


def clock_text(seconds: float) -> str:
    """``14:05`` for a number of seconds left (rounded up, never negative)."""
    whole = max(0, int(-(-seconds // 1)))
    return f"{whole // 60}:{whole % 60:02d}"


async def show_countdown(console: Console, *, doing: str, until: str, deadline: float) -> None:
    """Redraw ``<spinner> <doing> (<until> m:ss)`` until cancelled, then erase it; idle off a terminal."""
    if not console.live:
        await trio.sleep_forever()
    try:
        for frame in itertools.cycle(console.spinner):
            console.status(f"{frame} {doing} ({until} {clock_text(deadline - trio.current_time())})")
            await trio.sleep(FRAME)
    finally:
        console.clear()


async def run_showing(console: Console, work: Callable[[], Awaitable[T]], *, doing: str, until: str,
                      deadline: float, background: Iterable[Callable[[], Awaitable[object]]] = ()) -> T:
    """Run ``work`` while the status line counts down to ``deadline`` (and ``background`` tasks run alongside);
    everything else stops when ``work`` ends. Its exception comes out as itself, not inside an exception group."""
    with unwrapped():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: show_countdown(console, doing=doing, until=until, deadline=deadline))
            for task in background:
                nursery.start_soon(task)
            try:
                result = await work()
            finally:
                nursery.cancel_scope.cancel()
    return result


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False


def _can_encode(stream: TextIO, text: str) -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True
