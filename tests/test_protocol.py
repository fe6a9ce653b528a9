"""The thin client's JSON without the json package: protocol's _loads/_dumps against json itself.

``aadhelper.protocol`` parses and writes lines with the C accelerator behind json directly, to keep ``import
json`` (and with it ``re``) off the thin client's path. Whatever it does must be what json does: the same value
for every JSON text, the same text for every value, and an error wherever json raises one.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from aadhelper import protocol

# Every JSON value: what json.loads can return (floats include infinities and NaN, which json writes and
# reads as Infinity and NaN), nested.
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=30,
)
# Texts close to JSON, so that the bytes are not only garbage: values written with odd spacing and escapes,
# cut short, or with something appended.
NEAR_JSON = st.builds(
    lambda value, indent, ascii_only, cut, tail: json.dumps(value, indent=indent,
                                                            ensure_ascii=ascii_only)[:cut] + tail,
    JSON_VALUES, st.none() | st.integers(0, 2), st.booleans(), st.none() | st.integers(0, 40),
    st.sampled_from(["", " ", "\n", "\r\n\t ", "\f", "x", ",", "]", "}", "\u00a0", "\x00"]),
)


def same(left: Any, right: Any) -> bool:
    """Equal as JSON values, with NaN equal to NaN and the types the same all the way down (1 is not 1.0)."""
    if type(left) is not type(right):
        return False
    if isinstance(left, float):
        return left == right or (math.isnan(left) and math.isnan(right))
    if isinstance(left, list):
        return len(left) == len(right) and all(same(a, b) for a, b in zip(left, right, strict=True))
    if isinstance(left, dict):
        return list(left) == list(right) and all(same(left[key], right[key]) for key in left)
    return bool(left == right)


def json_outcome(call: Any, *args: Any) -> tuple[str, Any]:
    """("ok", result) or ("error", exception type) for one call."""
    try:
        return "ok", call(*args)
    except (ValueError, TypeError, RecursionError, UnicodeDecodeError) as exc:
        return "error", type(exc)


def assert_same_outcome(ours: tuple[str, Any], theirs: tuple[str, Any]) -> None:
    assert ours[0] == theirs[0], (ours, theirs)
    if ours[0] == "ok":
        assert same(ours[1], theirs[1]), (ours, theirs)
    else:
        # json's own error: the thin client reports json's message, so the exception type must match too.
        assert issubclass(ours[1], ValueError) == issubclass(theirs[1], ValueError), (ours, theirs)


@given(JSON_VALUES)
def test_dumps_writes_what_json_writes(value: Any) -> None:
    """If any JSON value is written, then _dumps gives exactly json.dumps's compact, non-ASCII-escaping text."""
    message = {"v": 1, "value": value}
    assert protocol._dumps(message) == json.dumps(message, separators=(",", ":"), ensure_ascii=False)


@given(st.one_of(st.sets(st.integers(), min_size=1), st.builds(object), st.complex_numbers(), st.binary()))
def test_dumps_refuses_what_json_refuses(bad: Any) -> None:
    """If a value json cannot write is nested in a message, then _dumps raises json's TypeError too."""
    message = {"v": 1, "nested": [bad]}
    ours = json_outcome(protocol._dumps, message)
    theirs = json_outcome(lambda m: json.dumps(m, separators=(",", ":"), ensure_ascii=False), message)
    assert ours[0] == theirs[0] == "error" and ours[1] is theirs[1] is TypeError


@given(JSON_VALUES, st.sampled_from(["", " ", "\n", "\r\n", " \t\n"]))
def test_loads_reads_what_json_reads(value: Any, padding: str) -> None:
    """If any JSON value is written by json (compact or not, escaped or not) and padded with JSON whitespace,
    then _loads returns the value json.loads returns."""
    for text in (json.dumps(value), json.dumps(value, ensure_ascii=False, indent=1)):
        data = (padding + text + padding).encode()
        assert_same_outcome(json_outcome(protocol._loads, data), json_outcome(json.loads, data))


@given(NEAR_JSON)
@example('{"v": 1}\f')  # form feed: str.isspace() says space, JSON does not
@example("\u00a0[]")  # no-break space before a value
@example('"\\ud800"')  # a lone surrogate escape: json accepts it
@example("NaN")
def test_loads_agrees_with_json_on_text_near_json(text: str) -> None:
    """If text that is JSON, nearly JSON or JSON with something around it is parsed, then _loads returns what
    json.loads returns, and raises where json.loads raises."""
    data = text.encode("utf-8", "surrogatepass")
    assert_same_outcome(json_outcome(protocol._loads, data), json_outcome(json.loads, data))


@given(st.binary(max_size=200))
@example(b"\xef\xbb\xbf{}")  # UTF-8 byte order mark: json.loads refuses it
@example('{"a": 1}'.encode("utf-16"))  # json.loads detects UTF-16 and UTF-32
@example('[1]'.encode("utf-32-le"))
@example(b"\xff\xfe")
def test_loads_agrees_with_json_on_arbitrary_bytes(data: bytes) -> None:
    """If arbitrary bytes are parsed, then _loads returns what json.loads returns, or raises where it raises."""
    assert_same_outcome(json_outcome(protocol._loads, data), json_outcome(json.loads, data))


class _ChangedAccelerator:
    """An _json whose private signatures changed, as a new CPython might change them."""

    def make_scanner(self, *args: Any) -> Any:
        raise TypeError("make_scanner() takes exactly 2 arguments (1 given)")

    def make_encoder(self, *args: Any) -> Any:
        raise TypeError("make_encoder() got an unexpected argument")


@given(JSON_VALUES)
def test_a_changed_accelerator_falls_back_to_json(value: Any) -> None:
    """If the C accelerator's private signatures change, then the codecs are not built (no error at import) and
    _loads/_dumps give json's results through the json package."""
    namespace = vars(protocol)  # _json is the module's private import, not an attribute it exports
    real = namespace["_json"]
    namespace["_json"] = _ChangedAccelerator()
    try:
        scan, make_encoder = protocol._c_codecs()
    finally:
        namespace["_json"] = real
    assert (scan, make_encoder) == (None, None)
    saved = protocol._scan_once, protocol._make_encoder
    protocol._scan_once, protocol._make_encoder = scan, make_encoder
    try:
        message = {"value": value}
        text = protocol._dumps(message)
        assert text == json.dumps(message, separators=(",", ":"), ensure_ascii=False)
        assert same(protocol._loads(text.encode()), json.loads(text))
    finally:
        protocol._scan_once, protocol._make_encoder = saved


def test_the_accelerator_is_in_use_here() -> None:
    """If this is CPython, then the codecs are built from _json (the speed the client path is measured with)."""
    assert protocol._scan_once is not None and protocol._make_encoder is not None


# -- the line framer --------------------------------------------------------------------------------------


@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=8),
       st.lists(st.integers(1, 17), min_size=1, max_size=50), st.booleans(), st.booleans())
def test_line_buffer_returns_the_lines_whatever_the_chunks(lines: list[bytes], cuts: list[int], ending: bool,
                                                           wipe: bool) -> None:
    """If lines arrive cut into chunks of any size, then the buffer hands out exactly those lines in order, and at
    the end the unterminated rest (with or without zeroing what it handed out)."""
    data = b"\n".join(lines) + (b"\n" if ending else b"")
    buffer = protocol.LineBuffer(limit=64, size=4, wipe=wipe)
    got: list[bytes] = []
    at = 0
    for cut in cuts * (len(data) // len(cuts) + 1):
        if at >= len(data):
            break
        buffer.feed(data[at:at + cut])
        at += cut
        while (line := buffer.pop_line()) is not None:
            got.append(line)
    *whole, last = data.split(b"\n")
    assert got == whole and buffer.pop_rest() == last


def test_line_buffer_enforces_its_limit_newline_included() -> None:
    """If a line with its newline is longer than the limit (or no newline comes within it), then pop_line raises
    LineTooLong; a line that fits exactly passes."""
    exact = protocol.LineBuffer(limit=5)
    exact.feed(b"abcd\n")
    assert exact.pop_line() == b"abcd"
    for data in (b"abcde\n", b"abcdefgh"):
        long = protocol.LineBuffer(limit=5, size=2)
        with pytest.raises(protocol.LineTooLong):
            long.feed(data)
            long.pop_line()


def test_line_buffer_zeroes_what_it_handed_out() -> None:
    """If a line carrying a token is popped, then no copy of it stays in the buffer's memory."""
    buffer = protocol.LineBuffer(limit=1024, size=8)
    buffer.feed(b"secret-token-value\nnext")
    assert buffer.pop_line() == b"secret-token-value"
    assert b"secret" not in bytes(buffer._buffer)
    assert buffer.pop_rest() == b"next" and not any(buffer._buffer)
