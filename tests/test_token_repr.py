"""The secret-bearing values (:class:`Secret`, :class:`Token`, :class:`TokenResponse`) never show their secret in
any text made from them: repr/str, f-strings, ``%`` formatting, log records, exception messages and tracebacks,
containers, and copies made with ``dataclasses.replace``."""

from __future__ import annotations

import copy
import dataclasses
import logging
import pickle
import pprint
import secrets
import traceback
from collections.abc import Callable

import pytest

from aadhelper.errors import AadhelperError
from aadhelper.tokens import Secret, Token, TokenResponse

ACCESS = "at-" + secrets.token_urlsafe(48)
REFRESH = "rt-" + secrets.token_urlsafe(48)
CLIENT_SECRET = "cs-" + secrets.token_urlsafe(24)
#: A window this long of any secret found in a text counts as a leak (a truncated or sliced secret is one too).
WINDOW = 10


def leaked(text: str) -> str | None:
    """The secret a text shows (in part), else None."""
    for value in (ACCESS, REFRESH, CLIENT_SECRET):
        if any(value[i:i + WINDOW] in text for i in range(len(value) - WINDOW + 1)):
            return value[:3] + "..."
    return None


def token() -> Token:
    return Token(access_token=Secret(ACCESS), token_type="Bearer", expires_on=1_800_003_600.0,
                 refresh_on=1_800_001_800.0, scopes=("https://graph.microsoft.com/.default",),
                 obtained_at=1_800_000_000.0, account="me@contoso.com")


def response() -> TokenResponse:
    return TokenResponse(token=token(), refresh_token=Secret(REFRESH))


VALUES: dict[str, Callable[[], object]] = {
    "Secret": lambda: Secret(CLIENT_SECRET),
    "Token": token,
    "TokenResponse": response,
    "Token after replace()": lambda: dataclasses.replace(token(), expires_on=1_800_007_200.0),
    "TokenResponse after replace()": lambda: dataclasses.replace(response(), refresh_token=Secret(REFRESH + "2")),
    "TokenResponse with a replaced token": lambda: dataclasses.replace(
        response(), token=dataclasses.replace(token(), scopes=("api://x/.default",))),
    "copy.copy(Token)": lambda: copy.copy(token()),
}

TEXTS: dict[str, Callable[[object], str]] = {
    "repr": repr,
    "str": str,
    "f-string": lambda v: f"{v}",
    "f-string !r": lambda v: f"{v!r}",
    "f-string =": lambda v: f"{v=}",
    "format()": lambda v: "{} {!r}".format(v, v),  # noqa: UP032 (str.format is what is tested)
    "% s": lambda v: "%s" % (v,),  # noqa: UP031 (%-formatting is what is tested)
    "% r": lambda v: "%r" % (v,),  # noqa: UP031
    "in a list": lambda v: str([v]),
    "in a dict": lambda v: str({"token": v}),
    "pprint": lambda v: pprint.pformat({"nested": [v]}),
    "vars()": lambda v: str(getattr(v, "__dict__", None)),
    "exception message": lambda v: str(ValueError(f"could not use {v}")),
    "exception args": lambda v: repr(ValueError(v)),
    "aadhelper error": lambda v: AadhelperError(f"refresh failed for {v!r}", hint=f"got {v}").one_line(),
}


@pytest.mark.parametrize("text", TEXTS.values(), ids=TEXTS.keys())
@pytest.mark.parametrize("make", VALUES.values(), ids=VALUES.keys())
def test_no_text_made_from_a_secret_value_shows_the_secret(make: Callable[[], object],
                                                            text: Callable[[object], str]) -> None:
    """If a Secret, Token or TokenResponse (also one copied with replace()) is turned into text in any of the usual
    ways, then the text shows neither the access token, nor the refresh token, nor the client secret."""
    shown = text(make())
    assert leaked(shown) is None, f"{leaked(shown)} shown in: {shown[:200]}"


@pytest.mark.parametrize("make", VALUES.values(), ids=VALUES.keys())
def test_log_records_and_tracebacks_do_not_show_the_secret(make: Callable[[], object],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """If a value is logged with %r and %s, with extra arguments and with a traceback of an exception that carries
    it, then no formatted log line and no traceback shows the secret."""
    value = make()
    log = logging.getLogger("aadhelper.test_token_repr")
    with caplog.at_level(logging.DEBUG, logger="aadhelper.test_token_repr"):
        log.info("got %r", value)
        log.info("got %s and %s", value, [value])
        log.info("as a mapping: %(token)s", {"token": value})
        try:
            raise RuntimeError(value, f"while using {value}")
        except RuntimeError:
            log.exception("failed with %r", value)
            formatted = traceback.format_exc()
    lines = "\n".join(logging.Formatter().format(record) for record in caplog.records)
    assert caplog.records and leaked(lines) is None, lines
    assert leaked(formatted) is None, formatted


def test_the_secret_is_reached_only_by_reveal_and_header() -> None:
    """If the token is needed, then reveal() and header() give it (so the masks above are not hiding an empty
    value), and pickling, which would write it out, is refused."""
    assert token().access_token.reveal() == ACCESS
    assert token().header() == f"Bearer {ACCESS}"
    assert response().refresh_token == Secret(REFRESH)
    with pytest.raises(TypeError):
        pickle.dumps(token())
    assert f"<{len(ACCESS)} chars>" in repr(token())
