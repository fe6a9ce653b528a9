"""Values read from command-line arguments, shared by the hand-written fast parser and the argparse types.

Stdlib-free and import-free: the fast path of ``header``/``token`` loads it on every call.
"""

from __future__ import annotations


def whole_seconds(text: str, low: int, high: int) -> int | None:
    """``text`` as a whole number of seconds from ``low`` to ``high``; None otherwise.

    ASCII digits only: ``str.isdigit()`` also accepts "²" and other digits ``int()`` refuses (a crash, once).
    """
    if not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if low <= value <= high else None
