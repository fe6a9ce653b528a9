"""The hand-written parser of `header`/`token` agrees with argparse (issue 11 §3): whenever it reads a command
line at all, argparse reads the same values from it; everything else it leaves to argparse."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import given, settings

from aadhelper.cli.app import build_parser
from aadhelper.cli.kubectl import parse_credential
from aadhelper.cli.token import parse_fast
from aadhelper.errors import UsageError

from .harness import cli

#: Pieces a command line is made of: options (whole, abbreviated, with '='), values good and bad, profiles.
PIECES = ["--scope", "--scope=", "--scope=a/.default", "--min-valid", "--min-valid=5", "--min-valid=86401",
          "--json", "--js", "--sc", "-x", "-", "--", "--help", "graph", "other", "10", "0", "86400", "86401", "²",
          "٣", "1e3", "-5", "https://graph.microsoft.com/.default", "", " ", "--min-valid=", "--json=1"]


@settings(max_examples=3000, deadline=None)
@given(verb=st.sampled_from(["header", "token"]), argv=st.lists(st.sampled_from(PIECES), max_size=6))
def test_fast_parser_reads_what_argparse_reads_or_declines(verb: str, argv: list[str]) -> None:
    """If the fast parser accepts a command line, then argparse accepts it too, with the same profile, scopes,
    minimum validity and --json."""
    fast = parse_fast(argv)
    if fast is None:
        return
    try:
        namespace = build_parser().parse_args([verb, *argv])
    except (UsageError, SystemExit) as exc:  # pragma: no cover - the failure being tested for
        raise AssertionError(f"the fast parser read {fast!r} from {argv!r}, argparse refused it: {exc}") from None
    assert (fast.profile, fast.scope, fast.min_valid, fast.json) == (
        namespace.profile, namespace.scope, namespace.min_valid, namespace.json)


def test_unusual_numbers_and_option_like_values_are_usage_errors(isolated_env: dict[str, str]) -> None:
    """If --min-valid is given a non-ASCII digit ("²", a crash with a traceback once) or --scope a value that looks
    like an option ("-x", once taken as a scope), then the user gets argparse's one-line usage error, exit 2."""
    env = dict(isolated_env, AADHELPER_NO_AUTOSTART="1")
    for argv in (["token", "--min-valid", "²"], ["token", "--scope", "-x"], ["header", "--min-valid=٣"]):
        result = cli(env, *argv)
        assert result.returncode == 2, (argv, result.stderr)
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@settings(max_examples=2000, deadline=None)
@given(argv=st.lists(st.sampled_from(PIECES), max_size=6))
def test_kubectl_credential_parser_reads_what_argparse_reads_or_declines(argv: list[str]) -> None:
    """If the kubectl plugin's hand-written parser accepts a command line, then argparse accepts it too, with the
    same profile and scopes."""
    fast = parse_credential(argv)
    if fast is None:
        return
    try:
        namespace = build_parser().parse_args(["kubectl-credential", *argv])
    except (UsageError, SystemExit) as exc:  # pragma: no cover - the failure being tested for
        raise AssertionError(f"the fast parser read {fast!r} from {argv!r}, argparse refused it: {exc}") from None
    assert fast == (namespace.profile, namespace.scope)


DAEMON_PIECES = ["--socket", "/tmp/s.sock", "--config", "c.toml", "--secret-store", "memory", "keyring", "bogus",
                 "-v", "--verbose", "--sock", "-h", "start", "stop", "--timeout", "5", "--", "x", "--config=a"]


@settings(max_examples=2000, deadline=None)
@given(argv=st.lists(st.sampled_from(DAEMON_PIECES), max_size=6))
def test_the_daemons_fast_parser_reads_what_argparse_reads_or_declines(argv: list[str]) -> None:
    """If `aadhelper daemon ARGS` is read by the fast path (which skips building the whole parser: bench row 7),
    then argparse reads the same options and runs the daemon in the foreground; whatever it declines, argparse
    handles (an action, --help, a usage error)."""
    from aadhelper.cli import daemon

    fast = daemon.parse_fast(argv)
    if fast is None:
        return
    full = build_parser().parse_args(["daemon", *argv])
    assert full.func is daemon.run and getattr(full, "daemon_action", None) is None
    for field in ("socket", "config", "secret_store", "verbose"):
        assert getattr(fast, field) == getattr(full, field), field
