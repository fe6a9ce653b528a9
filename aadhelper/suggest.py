"""Did-you-mean: the one home of the close-match policy for mistyped names (config keys, profile names,
subcommands, options). Standard library only (difflib is loaded only when a name was wrong)."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

#: How alike a candidate must be (difflib's ratio): 0.6 is difflib's default and catches one or two wrong letters.
CUTOFF = 0.6


def close_match(word: str, choices: Iterable[str]) -> str | None:
    """The choice ``word`` most likely meant, or None when none is close."""
    import difflib

    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=CUTOFF)
    return matches[0] if matches else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for a message, or "" when nothing is close."""
    match = close_match(word, choices)
    return f" (did you mean {match!r}?)" if match else ""
