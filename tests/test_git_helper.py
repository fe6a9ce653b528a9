"""The git credential helper alone: the dialogue parser/formatter, and the console script against a fake daemon.

The fake daemon is a real Unix socket speaking the JSON-lines protocol with canned replies, so these tests
exercise the helper's real process, stdin/stdout and socket client without the trio daemon. The real git
(2.39 here) drives the helper through ``git credential fill/reject``; the git >= 2.46 capability dialogue is
fed to the helper directly.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aadhelper import protocol
from aadhelper.errors import ProtocolError
from aadhelper.git_helper import (
    MAX_LINE_BYTES,
    MAX_REQUEST_BYTES,
    CredentialRequest,
    MalformedCredentialRequest,
    format_get_reply,
    format_lines,
    parse,
    read_request,
)
from aadhelper.testing import FakeDaemon, error_answer

BIN = Path(sys.executable).parent
HELPER = str(BIN / "git-credential-aadhelper")
TOKEN = "eyJ0eXAiOiJKV1QifQ.canned-access-token.sig"
EXPIRES_ON = 1_900_000_000
CAPABLE_PREFIX = "capability[]=authtype\ncapability[]=state\n"


# -- parse ------------------------------------------------------------------------------------------


def test_parse_reads_git_attributes() -> None:
    """If git writes its attributes, then parse exposes protocol, host (with port), path and username."""
    request = parse(b"protocol=https\nhost=git.example.com:8443\npath=org/repo.git\nusername=me\n\n")
    assert (request.protocol, request.host, request.path, request.username) == (
        "https", "git.example.com:8443", "org/repo.git", "me")
    assert request.password is None
    assert request.capabilities == frozenset()


def test_parse_tolerates_crlf_and_stops_at_blank_line() -> None:
    """If lines end in CRLF and more follows the blank line, then the CRs are dropped and the rest is ignored."""
    request = parse(b"protocol=https\r\nhost=h\r\n\r\nhost=other\n")
    assert request.attributes == {"protocol": "https", "host": "h"}


def test_parse_accepts_eof_without_newline() -> None:
    """If the request ends at EOF without a final newline, then the last line still counts."""
    assert parse(b"protocol=https\nhost=h").host == "h"
    assert parse(b"").attributes == {}


def test_parse_collects_and_clears_lists() -> None:
    """If key[] repeats, then its values form a list; an empty key[]= clears what came before."""
    request = parse(b"wwwauth[]=Basic realm=x\ncapability[]=authtype\nwwwauth[]=\n"
                    b"wwwauth[]=Bearer a=b\nwwwauth[]=Negotiate\n")
    assert request.wwwauth == ("Bearer a=b", "Negotiate")
    assert request.capabilities == frozenset({"authtype"})


def test_parse_keeps_unknown_keys_and_last_value_wins() -> None:
    """If git sends keys aadhelper does not know, or a key twice, then they are kept and the last value wins."""
    request = parse(b"future_key=1\nhost=a\nhost=b\nvalue=with=equals\n")
    assert request.attributes == {"future_key": "1", "host": "b", "value": "with=equals"}


@pytest.mark.parametrize(("data", "problem"), [
    (b"protocol=https\npassword hunter2\n", "line 2 has no '='"),
    (b"password=hunter2\0\n", "line 1 contains a NUL byte"),
    (b"password=hunter2\rmore\n", "line 1 contains a carriage return"),
    (b"password=hunter2\xff\n", "line 1 is not valid UTF-8"),
    (b"password=hunter2" + b"x" * MAX_LINE_BYTES + b"\n", f"line 1 is longer than {MAX_LINE_BYTES} bytes"),
])
def test_parse_rejects_garbage_with_one_line_that_hides_the_line(data: bytes, problem: str) -> None:
    """If a line is not a credential attribute, then parse raises a ProtocolError naming the line, not its text."""
    with pytest.raises(MalformedCredentialRequest) as info:
        parse(data)
    message = info.value.one_line()
    assert problem in message
    assert "\n" not in message
    assert "hunter2" not in message
    assert isinstance(info.value, ProtocolError) and info.value.exit_code == 9


def test_parse_accepts_a_line_of_the_maximum_length() -> None:
    """If a line is exactly 65535 bytes (CRLF or not), then it is accepted."""
    value = "v" * (MAX_LINE_BYTES - len("path="))
    assert parse(f"path={value}\r\n".encode()).path == value
    assert parse(f"path={value}".encode()).path == value


@settings(max_examples=400)
@given(st.binary(max_size=300) | st.lists(st.sampled_from(
    [b"protocol=https", b"host=h", b"=", b"k[]=", b"k[]=v", b"", b"\r", b"\0", b"\xc3", b"a=\xe2\x82",
     b"x" * 70000]), max_size=8).map(b"\n".join))
def test_parse_never_raises_anything_but_a_protocol_error(data: bytes) -> None:
    """If any bytes arrive, then parse returns a request or raises MalformedCredentialRequest, nothing else."""
    try:
        request = parse(data)
    except MalformedCredentialRequest as exc:
        assert "\n" not in exc.one_line()
    else:
        assert isinstance(request, CredentialRequest)
        request.url()
        repr(request)


#: Every message parse and read_request may give: the line number and the problem, never the line itself.
_MALFORMED = re.compile(r"malformed git credential request: (line \d+ (has no '='|contains a NUL byte|contains a "
                        rf"carriage return|is not valid UTF-8|is longer than {MAX_LINE_BYTES} bytes)|more than "
                        rf"{MAX_REQUEST_BYTES} bytes)")
_PIECES = [b"protocol=https", b"host=h", b"password=s3cr3t", b"=", b"k[]=", b"k[]=v", b"", b"\r", b"\0", b"\xc3",
           b"a=\xe2\x82", b"\xff", b"x" * (MAX_LINE_BYTES - 1), b"y" * (MAX_LINE_BYTES + 1), b"z" * 300_000]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PIECES) | st.binary(max_size=40), max_size=12),
       st.sampled_from([b"\n", b"\r\n", b"\n\n", b""]))
def test_read_and_parse_refuse_anything_with_a_known_message(pieces: list[bytes], separator: bytes) -> None:
    """If any byte stream arrives on stdin (long lines, NULs, bad UTF-8, no blank line), then reading and parsing it
    gives a request or a one-line MalformedCredentialRequest naming only a line number and a limit."""
    try:
        request = parse(read_request(io.BytesIO(separator.join(pieces))))
    except MalformedCredentialRequest as exc:
        assert _MALFORMED.fullmatch(exc.one_line()), exc.one_line()
    else:
        request.url()
        password = request.attributes.get("password")
        others = [value for key, value in request.attributes.items() if key != "password"]
        if password and not any(password in value for value in others):  # joined with b"", it may sit in another
            assert password not in repr(request)


_KEY_CHARS = st.characters(codec="utf-8", blacklist_characters="=\n\r\0[]")
_VALUE_CHARS = st.characters(codec="utf-8", blacklist_characters="\n\r\0")


@given(st.dictionaries(st.text(_KEY_CHARS, min_size=1, max_size=10), st.text(_VALUE_CHARS, max_size=30),
                       max_size=6),
       st.dictionaries(st.text(_KEY_CHARS, min_size=1, max_size=10),
                       st.lists(st.text(_VALUE_CHARS, min_size=1, max_size=30), min_size=1, max_size=4),
                       max_size=3))
def test_valid_dialogues_round_trip(attributes: dict[str, str], lists: dict[str, list[str]]) -> None:
    """If a valid dialogue is formatted and parsed again, then every attribute and list comes back unchanged."""
    pairs = list(attributes.items()) + [(f"{key}[]", value) for key, values in lists.items() for value in values]
    request = parse(format_lines(pairs) + b"\n")
    assert request.attributes == attributes
    assert request.lists == {key: tuple(values) for key, values in lists.items()}


def test_read_request_stops_at_the_blank_line() -> None:
    """If the stream holds more after the blank line, then read_request leaves it unread."""
    stream = io.BytesIO(b"protocol=https\nhost=h\n\nleft=over\n")
    assert read_request(stream) == b"protocol=https\nhost=h\n\n"
    assert stream.read() == b"left=over\n"
    assert read_request(None) == b""


def test_read_request_bounds_an_endless_line() -> None:
    """If a line never ends, then read_request stops after one over-long line and parse rejects it."""
    data = read_request(io.BytesIO(b"host=" + b"x" * (4 * MAX_LINE_BYTES)))
    assert len(data) <= MAX_LINE_BYTES + 3
    with pytest.raises(MalformedCredentialRequest, match="longer than"):
        parse(data)


def test_read_request_bounds_the_whole_request() -> None:
    """If a request keeps going past 1 MiB, then read_request refuses it."""
    with pytest.raises(MalformedCredentialRequest, match="more than"):
        read_request(io.BytesIO(b"wwwauth[]=Basic realm=x\n" * 100_000))


# -- url ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "url"), [
    (b"protocol=https\nhost=Git.Example.com:8443\n", "https://git.example.com:8443/"),
    (b"protocol=https\nhost=h\npath=org/My Repo%.git\n", "https://h/org/My%20Repo%25.git"),
    (b"protocol=http\nhost=127.0.0.1:9\npath=a/\xc3\xa9\n", "http://127.0.0.1:9/a/%C3%A9"),
])
def test_url_rebuilds_the_remote(data: bytes, url: str) -> None:
    """If git sends protocol, host and maybe path, then url() is the remote URL the daemon's prefixes match."""
    assert parse(data).url() == url


def test_only_http_remotes_are_answerable() -> None:
    """If git asks about a certificate password or a request without host, then it is not an HTTP remote."""
    assert parse(b"protocol=https\nhost=h\n").is_http_remote
    assert not parse(b"protocol=cert\npath=/home/me/cert.p12\n").is_http_remote
    assert not parse(b"protocol=https\n").is_http_remote


def test_request_repr_masks_secrets() -> None:
    """If a request carrying a password is printed, then the password does not appear."""
    text = repr(parse(b"protocol=https\nhost=h\npassword=hunter2\ncredential=bearer-secret\n"))
    assert "hunter2" not in text and "bearer-secret" not in text
    assert "<7 chars>" in text


# -- format ------------------------------------------------------------------------------------------


def test_reply_for_git_before_2_46_is_username_and_password() -> None:
    """If git did not advertise authtype, then the token goes out as password with username and expiry."""
    reply = format_get_reply(parse(b"protocol=https\nhost=h\n"), token=TOKEN, expires_on=EXPIRES_ON + 0.9,
                             username="svc")
    assert reply == f"username=svc\npassword={TOKEN}\npassword_expiry_utc={EXPIRES_ON}\n".encode()


def test_reply_keeps_the_username_from_the_remote_url() -> None:
    """If the remote URL already named a user, then the daemon's default username is not sent over it."""
    reply = format_get_reply(parse(b"protocol=https\nhost=h\nusername=me\n"), token=TOKEN, username="svc")
    assert reply == f"password={TOKEN}\n".encode()


def test_reply_for_capable_git_is_a_bearer_credential() -> None:
    """If git >= 2.46 advertised authtype, then the reply echoes the capability and sends a Bearer credential."""
    request = parse(f"{CAPABLE_PREFIX}protocol=https\nhost=h\n".encode())
    reply = format_get_reply(request, token=TOKEN, expires_on=EXPIRES_ON, username="svc")
    assert reply == (f"capability[]=authtype\nauthtype=Bearer\ncredential={TOKEN}\nephemeral=true\n"
                     f"password_expiry_utc={EXPIRES_ON}\n").encode()


@pytest.mark.parametrize(("wwwauth", "bearer"), [
    ("wwwauth[]=Basic realm=\"git\"\n", False),
    ("wwwauth[]=Basic realm=\"git\"\nwwwauth[]=Bearer authorization_uri=https://login\n", True),
    ("wwwauth[]=bearer\n", True),
])
def test_capable_git_gets_bearer_only_when_the_server_offers_it(wwwauth: str, bearer: bool) -> None:
    """If the server's WWW-Authenticate headers offer no Bearer, then even a capable git gets a Basic password."""
    request = parse(f"{CAPABLE_PREFIX}protocol=https\nhost=h\n{wwwauth}".encode())
    reply = format_get_reply(request, token=TOKEN, username="svc").decode()
    assert (f"credential={TOKEN}" in reply) is bearer
    assert (f"password={TOKEN}" in reply) is not bearer


@pytest.mark.parametrize("expires_on", [float("inf"), float("nan")])
def test_reply_refuses_an_expiry_that_is_not_a_number(expires_on: float) -> None:
    """If the daemon's expires_on is Infinity or NaN (JSON lets them through), then a ProtocolError, not a crash."""
    with pytest.raises(ProtocolError, match="expiry"):
        format_get_reply(parse(b"protocol=https\nhost=h\n"), token=TOKEN, expires_on=expires_on)


def test_capable_git_gets_a_non_bearer_token_as_password() -> None:
    """If the daemon's token is not a Bearer token, then even a capable git gets it as a Basic password."""
    request = parse(f"{CAPABLE_PREFIX}protocol=https\nhost=h\n".encode())
    assert format_get_reply(request, token=TOKEN, token_type="pop") == f"password={TOKEN}\n".encode()


@pytest.mark.parametrize("token", ["", "tok\nquit=1", "tok\0", "tok\r", "tok\ud800"])
def test_reply_refuses_values_git_cannot_carry(token: str) -> None:
    """If the daemon sent a token git cannot carry (newline, NUL, lone surrogate, empty), then no reply is
    formatted and the token is hidden."""
    with pytest.raises(ProtocolError) as info:
        format_get_reply(parse(b"protocol=https\nhost=h\n"), token=token, username="svc")
    if token:
        assert token not in info.value.one_line()


@given(st.text(max_size=40), st.text(max_size=20), st.none() | st.text(max_size=20),
       st.none() | st.floats(allow_nan=False, allow_infinity=False, min_value=0, max_value=4e9),
       st.sampled_from([b"", CAPABLE_PREFIX.encode()]))
def test_format_never_raises_anything_but_a_protocol_error(token: str, token_type: str, username: str | None,
                                                           expires_on: float | None, prefix: bytes) -> None:
    """If the daemon's reply holds any strings at all, then formatting yields parseable lines or a ProtocolError."""
    request = parse(prefix + b"protocol=https\nhost=h\n")
    try:
        reply = format_get_reply(request, token=token, token_type=token_type or "Bearer", expires_on=expires_on,
                                 username=username)
    except ProtocolError:
        return
    secret_key = "credential" if "credential" in parse(reply).attributes else "password"
    assert parse(reply).attributes[secret_key] == token


# -- the console script against a fake daemon ----------------------------------------------------


def token_reply(message: dict[str, Any]) -> dict[str, Any]:
    if message["op"] == "invalidate":
        return protocol.ok_reply(dropped=1)
    return protocol.ok_reply(access_token=TOKEN, token_type="Bearer", expires_on=EXPIRES_ON, profile="ado",
                             scopes=["499b84ac-1321-427f-aa17-267ca6975798/.default"], username="svc")


@pytest.fixture
def env(isolated_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Isolated aadhelper paths, no daemon autostart, a private HOME for git, our console scripts on PATH."""
    environ = {k: v for k, v in isolated_env.items() if not k.startswith("GIT_")}
    environ.update(AADHELPER_NO_AUTOSTART="1", HOME=str(tmp_path), GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0",
                   PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    return environ


@pytest.fixture
def socket_path(env: dict[str, str]) -> str:
    path = Path(env["AADHELPER_SOCKET"])
    path.parent.mkdir(mode=0o700, exist_ok=True)
    return str(path)


@pytest.fixture
def daemon(socket_path: str) -> Iterator[FakeDaemon]:
    with FakeDaemon(socket_path, token_reply) as fake:
        yield fake


def run(argv: list[str], stdin: str | bytes, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    data = stdin.encode() if isinstance(stdin, str) else stdin
    result = subprocess.run(argv, input=data, env=env, capture_output=True, timeout=60, check=False)
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(),
                                       result.stderr.decode())


def test_get_prints_the_token_for_git(daemon: FakeDaemon, env: dict[str, str]) -> None:
    """If git asks for a mapped remote, then stdout is username, token password and expiry, and stderr is empty."""
    result = run([HELPER, "get"], "protocol=https\nhost=git.example.com\npath=org/repo.git\n\n", env)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"username=svc\npassword={TOKEN}\npassword_expiry_utc={EXPIRES_ON}\n"
    assert [(m["op"], m["url"]) for m in daemon.requests] == [("token", "https://git.example.com/org/repo.git")]


def test_get_answers_the_246_capability_dialogue(daemon: FakeDaemon, env: dict[str, str]) -> None:
    """If git >= 2.46 advertises authtype, then the helper process answers with a Bearer credential."""
    result = run([HELPER, "get"], f"{CAPABLE_PREFIX}protocol=https\nhost=git.example.com\n"
                 "wwwauth[]=Bearer realm=x\nwwwauth[]=Basic realm=x\n\n", env)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (f"capability[]=authtype\nauthtype=Bearer\ncredential={TOKEN}\nephemeral=true\n"
                             f"password_expiry_utc={EXPIRES_ON}\n")


def test_get_is_silent_when_no_profile_maps_the_url(socket_path: str, env: dict[str, str]) -> None:
    """If the daemon maps no profile to the URL, then the helper prints nothing and exits 0 (git asks the next)."""
    with FakeDaemon(socket_path, error_answer("no_profile_for_url", "no profile is mapped")) as fake:
        result = run([HELPER, "get"], "protocol=https\nhost=elsewhere.example\n\n", env)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert [m["op"] for m in fake.requests] == ["token"]


def test_get_reports_daemon_errors_on_stderr_only(socket_path: str, env: dict[str, str]) -> None:
    """If the daemon fails (login required), then stdout stays clean, stderr has one line and the exit code is 6."""
    answer = error_answer("login_required", "the sign-in of profile 'ado' expired")
    with FakeDaemon(socket_path, answer):
        result = run([HELPER, "get"], "protocol=https\nhost=git.example.com\n\n", env)
    assert (result.returncode, result.stdout) == (6, "")
    assert result.stderr.count("\n") == 1 and "sign-in of profile 'ado' expired" in result.stderr


def test_get_without_daemon_says_so(env: dict[str, str]) -> None:
    """If no daemon answers, then the helper prints one stderr line naming the fix and exits 8, stdout empty."""
    result = run([HELPER, "get"], "protocol=https\nhost=git.example.com\n\n", env)
    assert (result.returncode, result.stdout) == (8, "")
    assert result.stderr.count("\n") == 1 and "aadhelper daemon" in result.stderr


def test_get_ignores_non_http_requests(daemon: FakeDaemon, env: dict[str, str]) -> None:
    """If git asks for a certificate password, then the helper stays silent without asking the daemon."""
    result = run([HELPER, "get"], "protocol=cert\npath=/home/me/cert.p12\n\n", env)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert daemon.requests == []


def test_get_rejects_garbage_with_one_line(daemon: FakeDaemon, env: dict[str, str]) -> None:
    """If stdin is not a credential dialogue, then exit 9, one stderr line, no stdout, no daemon request."""
    result = run([HELPER, "get"], b"protocol=https\n\x00\xff garbage\n", env)
    assert (result.returncode, result.stdout) == (9, "")
    assert result.stderr.count("\n") == 1 and "malformed git credential request" in result.stderr
    assert daemon.requests == []


HUNTER = "hunter2"
#: What a broken git (or anything else) may write on the helper's stdin; each must end in exit 9 and one line.
GARBAGE = {
    "no '='": b"protocol=https\npassword " + HUNTER.encode() + b"\n\n",
    "NUL byte": b"protocol=https\nhost=git.example.com\npassword=" + HUNTER.encode() + b"\0\n\n",
    "invalid UTF-8": b"protocol=https\nhost=git.example.com\npassword=" + HUNTER.encode() + b"\xff\xfe\n\n",
    "carriage return": b"protocol=https\nhost=git.example.com\npassword=" + HUNTER.encode() + b"\rx\n\n",
    "line over git's 65535 bytes": b"protocol=https\nhost=git.example.com\npassword=" + HUNTER.encode()
    + b"x" * 70_000 + b"\n\n",
    "endless line, no newline": b"protocol=https\nhost=" + b"h" * 300_000,
    "request over 1 MiB": b"protocol=https\nhost=git.example.com\n" + b"wwwauth[]=Basic realm=x\n" * 50_000 + b"\n",
    # Within git's line limit, but percent-encoded in the URL it is three times over the daemon's request limit.
    "URL over the daemon's limit": b"protocol=https\nhost=git.example.com\npath=" + b"%" * 65_000 + b"\n\n",
}


def assert_one_clean_line(result: subprocess.CompletedProcess[str]) -> None:
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("aadhelper: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr and HUNTER not in result.stderr


@pytest.mark.parametrize("data", GARBAGE.values(), ids=GARBAGE.keys())
def test_get_refuses_bad_input_with_one_line_and_exit_9(data: bytes, daemon: FakeDaemon, env: dict[str, str]) -> None:
    """If git's request is malformed or too large in any way, then the helper exits 9 with one stderr line that
    does not repeat the input, prints nothing for git and asks the daemon nothing."""
    result = run([HELPER, "get"], data, env)
    assert (result.returncode, result.stdout) == (9, "")
    assert_one_clean_line(result)
    assert daemon.requests == []


def test_get_refuses_a_url_over_the_daemon_limit_without_a_daemon(env: dict[str, str]) -> None:
    """If the remote URL cannot fit the daemon's request limit and no daemon runs, then the error is the same
    limit (exit 9), not "no daemon" (exit 8): the request is refused before any connection."""
    result = run([HELPER, "get"], GARBAGE["URL over the daemon's limit"], env)
    assert (result.returncode, result.stdout) == (9, "")
    assert_one_clean_line(result)
    assert f"its limit is {protocol.MAX_REQUEST_BYTES}" in result.stderr


def test_get_answers_a_request_without_the_blank_line(daemon: FakeDaemon, env: dict[str, str]) -> None:
    """If git's request ends at EOF without a blank line (or a last newline), then the helper still answers it."""
    result = run([HELPER, "get"], "protocol=https\nhost=git.example.com", env)
    assert (result.returncode, result.stderr) == (0, "")
    assert f"password={TOKEN}\n" in result.stdout
    assert [m["url"] for m in daemon.requests] == ["https://git.example.com/"]


@pytest.mark.parametrize("stdout", ["git gone (EPIPE)", "closed", "full"])
def test_get_reports_an_unwritable_stdout_in_one_line(stdout: str, daemon: FakeDaemon, env: dict[str, str],
                                                       tmp_path: Path) -> None:
    """If the helper cannot write its answer (git closed the pipe, stdout closed or full), then it exits 1 with one
    stderr line and no traceback."""
    request = b"protocol=https\nhost=git.example.com\n\n"
    if stdout == "closed":
        result = subprocess.run(["sh", "-c", 'exec "$0" get >&-', HELPER], input=request, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60, check=False)
    else:
        if stdout == "full":
            target = os.open("/dev/full", os.O_WRONLY)
        else:
            reader, target = os.pipe()
            os.close(reader)
        try:
            result = subprocess.run([HELPER, "get"], input=request, env=env, stdout=target, stderr=subprocess.PIPE,
                                    timeout=60, check=False)
        finally:
            os.close(target)
    completed = subprocess.CompletedProcess(result.args, result.returncode, "", result.stderr.decode())
    assert completed.returncode == 1, completed.stderr
    assert_one_clean_line(completed)
    assert "cannot answer git" in completed.stderr
    assert len(daemon.requests) == 1


def test_erase_drops_the_cached_token(daemon: FakeDaemon, env: dict[str, str]) -> None:
    """If git erases a rejected credential, then the daemon is told to drop the URL's token, silently."""
    result = run([HELPER, "erase"], f"protocol=https\nhost=git.example.com\nusername=svc\npassword={TOKEN}\n\n", env)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert [(m["op"], m["url"]) for m in daemon.requests] == [("invalidate", "https://git.example.com/")]


@pytest.mark.parametrize("code", ["no_profile_for_url", None])
def test_erase_is_silent_without_mapping_or_daemon(code: str | None, socket_path: str, env: dict[str, str]) -> None:
    """If no profile maps the URL or no daemon runs, then erase prints nothing and exits 0."""
    stdin = "protocol=https\nhost=git.example.com\npassword=x\n\n"
    if code is None:
        result = run([HELPER, "erase"], stdin, env)
    else:
        with FakeDaemon(socket_path, error_answer(code, "no profile is mapped")):
            result = run([HELPER, "erase"], stdin, env)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize("action", ["store", "frobnicate"])
def test_store_and_unknown_actions_do_nothing(action: str, daemon: FakeDaemon, env: dict[str, str]) -> None:
    """If git sends store or an action aadhelper does not know, then stdin is consumed and nothing happens."""
    result = run([HELPER, action], f"protocol=https\nhost=h\npassword={TOKEN}\n\n" + "x=y\n" * 20000, env)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert daemon.requests == []


@pytest.mark.parametrize("argv", [[], ["get", "erase"], ["--bogus", "get"]])
def test_bad_command_line_is_a_usage_error(argv: list[str], env: dict[str, str]) -> None:
    """If the action is missing, doubled or an option is unknown, then exit 2 with one stderr line."""
    result = run([HELPER, *argv], "", env)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.count("\n") == 1 and "usage: git-credential-aadhelper" in result.stderr


def test_verbose_diagnostics_go_to_stderr_without_the_token(daemon: FakeDaemon, env: dict[str, str]) -> None:
    """If verbose is on, then stderr explains the decision, stdout is unchanged and the token never shows."""
    env["AADHELPER_GIT_VERBOSE"] = "1"
    result = run([HELPER, "get"], "protocol=https\nhost=git.example.com\n\n", env)
    assert result.returncode == 0 and result.stdout.startswith("username=svc\npassword=")
    assert "profile 'ado'" in result.stderr and TOKEN not in result.stderr


def test_full_cli_verb_answers_too(daemon: FakeDaemon, env: dict[str, str]) -> None:
    """If `aadhelper git-credential get` is used (e.g. from a `!` helper), then it answers like the script."""
    result = run([str(BIN / "aadhelper"), "git-credential", "get"], "protocol=https\nhost=git.example.com\n\n", env)
    assert (result.returncode, result.stderr) == (0, "")
    assert f"password={TOKEN}\n" in result.stdout


def test_get_path_imports_only_the_standard_library(daemon: FakeDaemon, env: dict[str, str]) -> None:
    """If the helper answers a get, then trio, httpx, keyring, argparse and platformdirs were never imported."""
    code = (
        "import sys\n"
        "from aadhelper.cli import git_credential_main\n"
        "rc = git_credential_main(['get'])\n"
        "heavy = [m for m in ('trio', 'httpx', 'keyring', 'argparse', 'platformdirs') if m in sys.modules]\n"
        "sys.stderr.write('heavy=' + ','.join(heavy) + '\\n')\n"
        "sys.exit(rc)\n"
    )
    result = run([sys.executable, "-c", code], "protocol=https\nhost=git.example.com\n\n", env)
    assert result.returncode == 0
    assert f"password={TOKEN}\n" in result.stdout
    assert result.stderr == "heavy=\n"


# -- the real git drives the helper ---------------------------------------------------------------


def git_credential(op: str, stdin: str, env: dict[str, str], *config: str) -> subprocess.CompletedProcess[str]:
    return run(["git", "-c", "credential.helper=", "-c", "credential.helper=aadhelper", *config, "credential", op],
               stdin, env)


@pytest.mark.requires("git")
def test_real_git_fill_gets_the_token(daemon: FakeDaemon, env: dict[str, str]) -> None:
    """If git itself runs the helper (git credential fill), then it returns our username and token."""
    result = git_credential("fill", "url=https://git.example.com/org/repo.git\n\n", env)
    assert result.returncode == 0, result.stderr
    assert "username=svc\n" in result.stdout and f"password={TOKEN}\n" in result.stdout
    # Without credential.useHttpPath git leaves the path out: the mapping matches on the host.
    assert [m["url"] for m in daemon.requests] == ["https://git.example.com/"]


@pytest.mark.requires("git")
def test_real_git_sends_the_path_with_use_http_path(daemon: FakeDaemon, env: dict[str, str]) -> None:
    """If credential.useHttpPath is on, then the daemon sees the repository path in the URL."""
    result = git_credential("fill", "url=https://git.example.com/org/repo.git\n\n", env,
                            "-c", "credential.useHttpPath=true")
    assert result.returncode == 0, result.stderr
    assert [m["url"] for m in daemon.requests] == ["https://git.example.com/org/repo.git"]


@pytest.mark.requires("git")
def test_real_git_reject_invalidates(daemon: FakeDaemon, env: dict[str, str]) -> None:
    """If git rejects a credential (git credential reject), then the helper's erase reaches the daemon."""
    result = git_credential("reject", f"url=https://git.example.com/\nusername=svc\npassword={TOKEN}\n\n", env)
    assert (result.returncode, result.stdout) == (0, "")
    assert [m["op"] for m in daemon.requests] == ["invalidate"]


@pytest.mark.requires("git")
def test_real_git_moves_on_when_no_profile_maps(socket_path: str, env: dict[str, str]) -> None:
    """If no profile maps the URL, then git asks the next helper, whose credential it uses."""
    with FakeDaemon(socket_path, error_answer("no_profile_for_url", "no profile is mapped")):
        result = git_credential("fill", "url=https://elsewhere.example/\n\n", env,
                                "-c", "credential.helper=!f() { echo username=next; echo password=pw; }; f")
    assert result.returncode == 0, result.stderr
    assert "username=next\npassword=pw\n" in result.stdout
    assert result.stderr == ""

