"""The exception tree's own rules: copies keep every field, each class says how the cache recovers, every exit code
is documented."""

from __future__ import annotations

import pytest

from aadhelper import errors
from aadhelper.errors import (
    AadhelperError,
    AuthenticationFailed,
    AuthorityUnavailable,
    ConfigError,
    KeyringLocked,
    LoginRequired,
)


def test_a_copy_keeps_every_field_and_drops_the_traceback() -> None:
    """If a kept error is copied with a new message, then code, hint, profile, the authority's error, AADSTS code,
    reason, retry_after and claims survive, and the copy has no traceback of its own."""
    try:
        raise LoginRequired("sign-in expired", hint="run `aadhelper login me`", profile="me", error="invalid_grant",
                            aadsts=700082, retry_after=5.0, claims='{"access_token":{}}', reason="Expired.")
    except LoginRequired as caught:
        original = caught
    copy = original.copy("sign-in expired (next attempt in 5 s)")
    assert type(copy) is LoginRequired and copy.__traceback__ is None and original.__traceback__ is not None
    assert copy.message == str(copy) == "sign-in expired (next attempt in 5 s)"
    assert (copy.hint, copy.profile, copy.error, copy.aadsts, copy.retry_after, copy.claims, copy.reason) == (
        original.hint, original.profile, original.error, original.aadsts, 5.0, original.claims, "Expired.")
    assert original.message == "sign-in expired"
    assert original.copy().to_wire() == original.to_wire()


@pytest.mark.parametrize(("error", "recovery"), [
    (AuthorityUnavailable("HTTP 503"), "backoff"),
    (AuthenticationFailed("wrong secret"), "sticky"),
    (LoginRequired("sign in"), "sticky"),
    (ConfigError("bad file"), "sticky"),
    (KeyringLocked("locked"), "local"),
    (AadhelperError("fetcher gone"), "local"),
])
def test_each_class_says_how_the_cache_recovers(error: AadhelperError, recovery: str) -> None:
    """If the cache meets an error, then its class alone says whether to back off, stick or retry at once."""
    assert error.recovery == recovery


def test_every_exit_code_is_documented() -> None:
    """If a class has an exit code, then EXIT_CODES (aadhelper --help, the README) explains it."""
    documented = {code for code, _ in errors.EXIT_CODES}
    classes = [cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, AadhelperError)]
    assert {cls.exit_code for cls in classes} <= documented


def test_exit_9_says_what_exits_9() -> None:
    """If git hands the credential helper something that is not a credential dialogue, then it exits 9 with one
    line, and exit 9's meaning in `aadhelper --help` (EXIT_CODES, which the man page shows too) names that cause
    as well as the client-daemon and daemon-fetcher links."""
    import subprocess

    from aadhelper import paths

    helper = subprocess.run([*paths.console_script(), "git-credential", "get"], input="garbage\n\n",
                            capture_output=True, text=True, timeout=60, check=False)
    assert helper.returncode == 9 and helper.stderr.count("\n") == 1
    usage = subprocess.run([*paths.console_script(), "--help"], capture_output=True, text=True, timeout=60,
                           check=True).stdout
    meaning = " ".join(usage.split("\n    9  ", 1)[1].split("\n   10  ", 1)[0].split())
    for cause in ("between client and daemon", "different aadhelper versions", "token fetcher",
                  "from git to the credential helper"):
        assert cause in meaning
