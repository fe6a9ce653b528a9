"""The one place authority replies become aadhelper errors: the mapping table, and no crash on any reply."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aadhelper.errors import (
    AadhelperError,
    AuthenticationFailed,
    AuthorityError,
    AuthorityUnavailable,
    LoginRequired,
)
from aadhelper.grants.http import (
    MAX_TOKEN_LIFETIME,
    MIN_TOKEN_LIFETIME,
    parse_retry_after,
    parse_token_reply,
    raise_for_error,
)


def entra_error(error: str, code: int, text: str = "Something went wrong.") -> dict[str, Any]:
    return {"error": error, "error_codes": [code], "error_description": f"AADSTS{code}: {text} Trace ID: abc "
            "Correlation ID: def Timestamp: 2026-11-29 10:00:00Z", "trace_id": "abc"}


@pytest.mark.parametrize("status, body, cls, hint", [
    (401, entra_error("invalid_client", 7000215, "Invalid client secret provided."), AuthenticationFailed,
     "aadhelper secret set p"),
    (401, entra_error("invalid_client", 7000222, "The provided client secret keys are expired."),
     AuthenticationFailed, "expired"),
    (400, entra_error("unauthorized_client", 700016), AuthenticationFailed, "client id"),
    (400, entra_error("invalid_request", 90002), AuthenticationFailed, "tenant"),
    (400, entra_error("invalid_scope", 70011), AuthenticationFailed, "scopes"),
    (400, entra_error("invalid_grant", 700082), LoginRequired, "aadhelper login p"),
    (400, entra_error("interaction_required", 50076), LoginRequired, "aadhelper login p"),
    (400, entra_error("temporarily_unavailable", 90055), AuthorityUnavailable, None),
    (503, None, AuthorityUnavailable, None),
    (429, None, AuthorityUnavailable, None),
])
def test_authority_errors_map_to_classes_with_fixes(status: int, body: dict[str, Any] | None, cls: type[AuthorityError],
                                                    hint: str | None) -> None:
    """If the authority answers with an Entra error, then the error class, AADSTS code and fix follow the table,
    and the message keeps the first sentence of the description without trace ids."""
    with pytest.raises(cls) as caught:
        raise_for_error(status, {"retry-after": "7"}, body, profile="p")
    exc = caught.value
    if body:
        assert exc.aadsts == body["error_codes"][0] and exc.error == body["error"]
        assert "Trace ID" not in exc.one_line()
    if hint:
        assert hint in exc.one_line()
    if status in (429, 503):
        assert exc.retry_after == 7.0 and "retry after 7 s" in exc.one_line()


def test_retry_after_forms() -> None:
    """If Retry-After is seconds, an HTTP date or garbage, then it becomes capped seconds or None."""
    assert parse_retry_after("60") == 60.0
    assert parse_retry_after("999999") == 3600.0
    assert parse_retry_after("Thu, 01 Jan 2026 00:01:00 GMT", now=1767225600.0) == 60.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("¹") is None and parse_retry_after("٣٠") is None  # digits, but not ASCII ones
    assert parse_retry_after(None) is None


def test_string_expires_in_and_refresh_in() -> None:
    """If expires_in and refresh_in arrive as strings, then the token still gets the right times."""
    reply = parse_token_reply({"access_token": "x" * 10, "token_type": "bearer", "expires_in": "3599",
                               "refresh_in": "1800"}, scopes=("s",), now=1000.0, profile="p")
    assert reply.token.expires_on == 4599.0 and reply.token.refresh_on == 2800.0
    assert reply.token.token_type == "Bearer"


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text()
                           | st.sampled_from(["invalid_grant", "bad\nline\x1b[2J", "AADSTS70008: x.\r\nTrace ID: y"]),
                           lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner), max_leaves=10)
token_like = st.fixed_dictionaries({}, optional={
    "access_token": json_values, "token_type": json_values, "expires_in": json_values, "refresh_in": json_values,
    "refresh_token": json_values, "error": json_values, "error_codes": json_values, "error_description": json_values,
    "claims": json_values, "scope": json_values})


@given(status=st.sampled_from([200, 400, 401, 403, 429, 500, 503]), body=st.none() | token_like,
       retry_after=st.none() | st.text(max_size=40))
def test_any_authority_reply_yields_a_token_or_our_error(status: int, body: dict[str, Any] | None,
                                                        retry_after: str | None) -> None:
    """If the authority sends any JSON at all, then reading it gives a token or an aadhelper error, never a crash."""
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    try:
        raise_for_error(status, headers, body, profile="p")
        reply = parse_token_reply(body, scopes=("s",), now=0.0, profile="p")
    except AadhelperError as exc:
        assert exc.one_line().isprintable()
    else:
        assert reply.token.expires_on > 0


NOW = 1_800_000_000.0
#: What expires_in and refresh_in have been seen to be, or could be: every JSON number (NaN and Infinity included,
#: which Python's json reads), integers beyond any float, and strings that float() reads as non-finite.
lifetimes = (st.floats() | st.integers() | st.integers(min_value=10**308, max_value=10**400).map(lambda n: -n)
             | st.integers(min_value=10**308, max_value=10**400) | st.text(max_size=12)
             | st.sampled_from(["inf", "-inf", "nan", "NaN", "Infinity", "1e999", " 3600 ", "0", "-1", "1e-320",
                                "3599.5", "1_000"])
             | json_values)
token_reply = st.fixed_dictionaries(
    {"access_token": st.text(min_size=1, max_size=20), "expires_in": lifetimes},
    optional={"token_type": st.sampled_from(["Bearer", "bearer", "pop", "MAC", ""]) | json_values,
              "refresh_in": lifetimes, "refresh_token": json_values, "id_token": json_values, "scope": json_values})


@given(body=token_reply | token_like | st.none())
def test_no_reply_gives_a_token_with_an_unusable_lifetime(body: dict[str, Any] | None) -> None:
    """If a 200 reply holds any JSON at all, then parsing it either raises AuthorityUnavailable (nothing else) or
    gives a Bearer token whose lifetime is finite, between MIN_TOKEN_LIFETIME and MAX_TOKEN_LIFETIME, and whose
    refresh advice, if any, lies strictly inside that lifetime."""
    try:
        reply = parse_token_reply(body, scopes=("s",), now=NOW, profile="p")
    except AuthorityUnavailable as exc:
        assert exc.one_line().isprintable() and "malformed token reply" in exc.message
        return
    token = reply.token
    assert math.isfinite(token.expires_on) and MIN_TOKEN_LIFETIME <= token.lifetime <= MAX_TOKEN_LIFETIME
    assert token.obtained_at == NOW and token.token_type == "Bearer"
    if token.refresh_on is not None:
        assert math.isfinite(token.refresh_on) and token.obtained_at < token.refresh_on < token.expires_on
