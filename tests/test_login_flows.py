"""The interactive sign-in flows in-process against the simulated authority over real HTTPS (trustme): device code,
browser with PKCE through the real 127.0.0.1 redirect listener (driven by an HTTP client instead of a browser), and
the terminal output."""

from __future__ import annotations

import io
import itertools
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
import trio
import trio.testing

from aadhelper.config import Profile
from aadhelper.errors import AuthenticationFailed, AuthorityUnavailable, LoginFailed
from aadhelper.grants import HttpClients
from aadhelper.grants.http import account_of
from aadhelper.login import LoginOptions, sign_in
from aadhelper.login.browser import browser_login
from aadhelper.login.common import LoginRequest
from aadhelper.login.device import DeviceCode, parse_device_code, poll, start
from aadhelper.login.redirect import open_redirect_listener
from aadhelper.login.terminal import Console, clock_text, run_showing
from aadhelper.testing import DEVICE_CODE_GRANT, GRAPH, Fault, SimulatedAuthority

TENANT = "organizations"
HOME = "contoso.onmicrosoft.com"
CLIENT = "33333333-0000-0000-0000-000000000001"
USER = "me@contoso.onmicrosoft.com"
CLAIMS = '{"access_token":{"acrs":{"essential":true,"value":"c1"}}}'


@pytest.fixture
def authority(server_ssl_context: ssl.SSLContext) -> Iterator[SimulatedAuthority]:
    with SimulatedAuthority(ssl_context=server_ssl_context) as authority:
        authority.add_tenant(HOME)
        authority.add_client(CLIENT, tenant=HOME, public=True)
        authority.add_user(USER, tenant=HOME)
        authority.device_code_interval = 0
        yield authority


@pytest.fixture
def profile(authority: SimulatedAuthority, ca_pem_file: Path) -> Profile:
    return Profile(name="me", tenant=TENANT, client_id=CLIENT, scopes=(f"{GRAPH}/.default",),
                   authority=authority.url, credential="user", ca_bundle=str(ca_pem_file))


def approve_when_asked(authority: SimulatedAuthority, action: str = "approve") -> threading.Thread:
    """The user, in a browser elsewhere: waits for the code, then approves (or denies/expires) it."""
    def user() -> None:
        code = authority.wait_for_device_code()
        getattr(authority, action)(code)

    thread = threading.Thread(target=user)
    thread.start()
    return thread


def device_records(authority: SimulatedAuthority) -> list[float]:
    return [r.time for r in authority.requests if r.grant_type == DEVICE_CODE_GRANT]


def assert_refresh_token_works(authority: SimulatedAuthority, context: ssl.SSLContext, token: str) -> None:
    with httpx.Client(verify=context) as http:
        reply = http.post(f"{authority.url}/{TENANT}/oauth2/v2.0/token", data={
            "grant_type": "refresh_token", "client_id": CLIENT, "refresh_token": token,
            "scope": f"{GRAPH}/.default offline_access"})
    assert reply.status_code == 200, reply.text


# -- device code ------------------------------------------------------------------------------------------------


def test_device_code_sign_in_returns_a_working_refresh_token(
        authority: SimulatedAuthority, profile: Profile, client_ssl_context: ssl.SSLContext) -> None:
    """If the user approves the device code, then sign_in returns a refresh token the authority accepts and the
    account, and off a terminal it printed only the instructions (no control characters)."""
    out = io.StringIO()
    user = approve_when_asked(authority)
    result = sign_in(profile, LoginOptions(), console=Console(out))
    user.join(10)
    assert result.account == USER
    assert_refresh_token_works(authority, client_ssl_context, result.refresh_token.reveal())
    assert out.getvalue().count("\n") == 1 and "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    code = authority.requests[0]
    assert code.endpoint == "devicecode" and code.client_id == CLIENT
    assert set((code.scope or "").split()) == {f"{GRAPH}/.default", "openid", "profile", "offline_access"}
    assert authority.sessions.device_code(out.getvalue().split("enter the code ")[1].split()[0]).state == "redeemed"
    assert result.refresh_token.reveal() not in repr(result)


async def test_slow_down_adds_the_step_to_every_later_interval(authority: SimulatedAuthority,
                                                               profile: Profile) -> None:
    """If the authority answers slow_down, then the polls after it are spaced by the interval plus the step."""
    authority.inject(Fault.delay(0, grant_type=DEVICE_CODE_GRANT))
    authority.inject(Fault.error("slow_down", 50196, "Polled too soon.", grant_type=DEVICE_CODE_GRANT))
    http = HttpClients()
    try:
        client = http.get(profile.ca_bundle)
        request = LoginRequest(profile)
        code = await start(client, request)
        step = 0.5

        async def approve_after_three_polls() -> None:
            await trio.to_thread.run_sync(lambda: authority.wait_for_requests(4, grant_type=DEVICE_CODE_GRANT))
            authority.approve(code.user_code)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(approve_after_three_polls)
            await poll(client, request, code, deadline=trio.current_time() + 60, slow_down_step=step)
    finally:
        await http.aclose()
    times = device_records(authority)
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert len(times) >= 4
    assert gaps[1] - gaps[0] >= step * 0.9 and gaps[2] - gaps[0] >= step * 0.9


@pytest.mark.parametrize("ending, error, aadsts, words", [
    ("deny", "authorization_declined", 65004, "declined"),
    ("expire", "expired_token", 70019, "expired"),
    ("bad_code", "bad_verification_code", 70018, "does not know this device code"),
])
def test_device_code_endings_are_clear_login_failures(authority: SimulatedAuthority, profile: Profile, ending: str,
                                                      error: str, aadsts: int, words: str) -> None:
    """If the user declines, the code expires, or the authority forgets the code, then sign_in raises LoginFailed
    (exit 6) naming what happened, the authority's error and AADSTS code, and `aadhelper login me`."""
    if ending == "bad_code":
        authority.inject(Fault.error("bad_verification_code", 70018, "The device_code is not valid.",
                                     grant_type=DEVICE_CODE_GRANT))
        user = None
    else:
        user = approve_when_asked(authority, ending)
    with pytest.raises(LoginFailed) as caught:
        sign_in(profile, LoginOptions(), console=Console(io.StringIO()))
    if user is not None:
        user.join(10)
    line = caught.value.one_line()
    assert caught.value.exit_code == 6 and caught.value.error == error and caught.value.aadsts == aadsts
    assert words in line and "aadhelper login me" in line


def test_transient_failures_while_polling_do_not_end_the_sign_in(authority: SimulatedAuthority,
                                                                 profile: Profile) -> None:
    """If a poll meets a 503 or a dropped connection, then polling goes on and the sign-in still completes."""
    authority.inject(Fault.status(503, grant_type=DEVICE_CODE_GRANT))
    authority.inject(Fault.drop(grant_type=DEVICE_CODE_GRANT))
    user = approve_when_asked(authority)
    result = sign_in(profile, LoginOptions(), console=Console(io.StringIO()))
    user.join(10)
    assert result.account == USER
    assert [r.fault for r in authority.requests if r.grant_type == DEVICE_CODE_GRANT][:2] == ["status", "drop"]


def test_claims_and_scopes_are_sent_with_the_device_code_request(authority: SimulatedAuthority,
                                                                 profile: Profile) -> None:
    """If a claims challenge and other scopes are given, then the device code request carries both."""
    authority.add_client(CLIENT, tenant=HOME, public=True, resources=(GRAPH, "https://management.azure.com"))
    user = approve_when_asked(authority)
    sign_in(profile, LoginOptions(claims=CLAIMS, scopes=("https://management.azure.com/.default",)),
            console=Console(io.StringIO()))
    user.join(10)
    record = authority.requests[0]
    assert record.params["claims"] == CLAIMS
    assert "https://management.azure.com/.default" in (record.scope or "")


def test_reply_without_refresh_token_is_a_failed_login(authority: SimulatedAuthority, profile: Profile) -> None:
    """If the authority signs the user in but sends no refresh token, then nothing usable came back: LoginFailed."""
    authority.inject(Fault.status(200, {"token_type": "Bearer", "expires_in": 3600, "access_token": "at"},
                                  grant_type=DEVICE_CODE_GRANT))
    with pytest.raises(LoginFailed, match="no refresh token"):
        sign_in(profile, LoginOptions(), console=Console(io.StringIO()))


def test_unknown_app_fails_before_any_code_is_shown(authority: SimulatedAuthority, profile: Profile) -> None:
    """If the app registration is unknown, then the device code request fails with the authority's error (exit 5)
    and no code is printed."""
    out = io.StringIO()
    with pytest.raises(AuthenticationFailed) as caught:
        sign_in(Profile(**{**profile.__dict__, "client_id": "unknown-app"}), LoginOptions(), console=Console(out))
    assert caught.value.aadsts == 700016
    assert out.getvalue() == ""


def test_malformed_device_code_reply_is_reported() -> None:
    """If the device code reply lacks the user code, then it is a malformed reply (exit 7), and RFC 8628's defaults
    fill in a missing interval and lifetime."""
    with pytest.raises(AuthorityUnavailable, match="no user_code"):
        parse_device_code({"device_code": "d", "verification_uri": "https://x"}, profile="me")
    code = parse_device_code({"device_code": "d", "user_code": "ABC", "verification_uri": "https://x",
                              "interval": "bogus"}, profile="me")
    assert (code.interval, code.expires_in) == (5.0, 900.0)
    assert isinstance(code, DeviceCode) and "https://x" in code.instructions and "ABC" in code.instructions
    assert "d" not in repr(code.device_code)


# -- browser ----------------------------------------------------------------------------------------------------


class Browser:
    """Stands in for a browser: follows the sign-in URL's redirects to the listener and keeps the final page."""

    def __init__(self, context: ssl.SSLContext, tamper_state: bool = False) -> None:
        self.context = context
        self.tamper_state = tamper_state
        self.pages: list[httpx.Response] = []
        self.urls: list[str] = []
        self._done = threading.Event()

    def __call__(self, url: str) -> bool:
        self.urls.append(url)
        try:
            with httpx.Client(verify=self.context, timeout=30) as http:
                redirect = http.get(url)
                assert redirect.status_code == 302, redirect.text
                location = redirect.headers["Location"]
                if self.tamper_state:
                    parts = urlsplit(location)
                    query = {k: v[0] for k, v in parse_qs(parts.query).items()} | {"state": "forged"}
                    location = parts._replace(query=urlencode(query)).geturl()
                self.pages.append(http.get(location))
        finally:
            self._done.set()
        return True

    def page(self) -> httpx.Response:
        """The last page shown (the sign-in may end before the browser has read it)."""
        assert self._done.wait(10)
        return self.pages[-1]


def test_browser_sign_in_with_pkce(authority: SimulatedAuthority, profile: Profile,
                                   client_ssl_context: ssl.SSLContext) -> None:
    """If the browser completes the sign-in, then the redirect reaches the 127.0.0.1 listener, the code is redeemed
    with the PKCE verifier (the authority checks it against the S256 challenge), the browser sees a friendly page,
    and the refresh token works."""
    browser = Browser(client_ssl_context)
    out = io.StringIO()
    result = sign_in(profile, LoginOptions(browser=True), console=Console(out), opener=browser)
    assert result.account == USER
    assert_refresh_token_works(authority, client_ssl_context, result.refresh_token.reveal())
    page = browser.page()
    assert page.status_code == 200 and "signed in as me@contoso.onmicrosoft.com" in page.text
    query = {k: v[0] for k, v in parse_qs(urlsplit(browser.urls[0]).query).items()}
    assert query["code_challenge_method"] == "S256" and len(query["state"]) >= 32
    assert query["redirect_uri"].startswith("http://127.0.0.1:") and query["redirect_uri"].endswith("/")
    assert browser.urls[0] in out.getvalue()  # printed for copy/paste as well
    redeem = [r for r in authority.requests if r.grant_type == "authorization_code"]
    assert len(redeem) == 1 and redeem[0].status == 200 and redeem[0].params["redirect_uri"] == query["redirect_uri"]


def test_browser_state_mismatch_is_refused(authority: SimulatedAuthority, profile: Profile,
                                           client_ssl_context: ssl.SSLContext) -> None:
    """If the redirect carries another state, then the code is not redeemed, the browser is told, and sign_in raises
    LoginFailed."""
    browser = Browser(client_ssl_context, tamper_state=True)
    with pytest.raises(LoginFailed, match="state mismatch"):
        sign_in(profile, LoginOptions(browser=True), console=Console(io.StringIO()), opener=browser)
    assert browser.page().status_code == 400 and "state mismatch" in browser.page().text
    assert authority.count(grant_type="authorization_code") == 0


def test_browser_error_reply_is_reported(authority: SimulatedAuthority, profile: Profile,
                                         client_ssl_context: ssl.SSLContext) -> None:
    """If the user declines consent, then the error redirect ends the sign-in with LoginFailed carrying the
    authority's error and AADSTS code, and the browser shows the failure."""
    authority.consent_denied = True
    browser = Browser(client_ssl_context)
    with pytest.raises(LoginFailed) as caught:
        sign_in(profile, LoginOptions(browser=True), console=Console(io.StringIO()), opener=browser)
    assert caught.value.error == "access_denied" and caught.value.aadsts == 65004
    assert "declined" in caught.value.one_line()
    assert browser.page().status_code == 400 and "declined" in browser.page().text


async def test_browser_sign_in_times_out(profile: Profile, autojump_clock: trio.testing.MockClock) -> None:
    """If no redirect arrives in time, then the flow ends with LoginFailed suggesting the device code flow."""
    out = io.StringIO()
    with pytest.raises(LoginFailed) as caught:
        await browser_login(httpx.AsyncClient(), LoginRequest(profile), Console(out), opener=None, timeout=120)
    assert "within 120 s" in caught.value.one_line() and "aadhelper login me" in caught.value.one_line()
    assert "Open this URL" in out.getvalue()


async def test_redirect_listener_is_not_stalled_by_other_connections() -> None:
    """If a browser holds an idle connection open, asks for /favicon.ico or POSTs, then the listener answers those
    and still hands over the real redirect, whose connection gets the final page."""
    async with open_redirect_listener() as listener:
        assert listener.redirect_uri == f"http://127.0.0.1:{listener.port}/"
        idle = await trio.open_tcp_stream("127.0.0.1", listener.port)
        answers: list[str] = []

        async def request(head: str) -> None:
            stream = await trio.open_tcp_stream("127.0.0.1", listener.port)
            await stream.send_all(head.encode())
            reply = b""
            while chunk := await stream.receive_some(65536):
                reply += chunk
            answers.append(reply.decode())
            await stream.aclose()

        async def browser() -> None:
            await request("GET /favicon.ico HTTP/1.1\r\nHost: x\r\n\r\n")
            await request("POST /?code=x HTTP/1.1\r\nHost: x\r\n\r\n")
            await request("GET /?code=abc&state=s HTTP/1.1\r\nHost: x\r\n\r\n")

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(browser)
                redirect = await listener.wait()
                assert redirect.params == {"code": "abc", "state": "s"}
                await redirect.respond(ok=True, text="done <here>")
        await idle.aclose()
    by_status = {answer.split(" ")[1]: answer for answer in answers}
    assert set(by_status) == {"404", "405", "200"}
    assert "done &lt;here&gt;" in by_status["200"] and "Cache-Control: no-store" in by_status["200"]


# -- terminal ---------------------------------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_countdown_on_a_terminal(autojump_clock: trio.testing.MockClock) -> None:
    """If stderr is a terminal, then a spinner with the time left is redrawn in place while waiting and erased at the
    end, and the result of the work comes back."""
    screen = Terminal()
    console = Console(screen)
    assert console.live

    async def work() -> str:
        await trio.sleep(2.5)
        return "done"

    deadline = trio.current_time() + 10
    assert await run_showing(console, work, doing="waiting", until="code expires in", deadline=deadline) == "done"
    text = screen.getvalue()
    assert "waiting (code expires in 0:10)" in text and "(code expires in 0:08)" in text
    assert text.count("\r\x1b[K") > 20 and text.endswith("\r\x1b[K")
    assert any(frame in text for frame in console.spinner)


async def test_work_errors_come_out_unwrapped(autojump_clock: trio.testing.MockClock) -> None:
    """If the work fails, then its own exception comes out, not an exception group, and nothing is drawn off a
    terminal."""
    out = io.StringIO()

    async def work() -> None:
        raise LoginFailed("nope")

    with pytest.raises(LoginFailed):
        await run_showing(Console(out), work, doing="x", until="y", deadline=trio.current_time() + 5)
    assert out.getvalue() == ""


def test_clock_text_and_account() -> None:
    """If times and id tokens are odd, then the countdown text stays sane and an unreadable id token names nobody."""
    assert (clock_text(0), clock_text(-3), clock_text(59.2), clock_text(900)) == ("0:00", "0:00", "1:00", "15:00")
    assert account_of("not-a-jwt") is None and account_of("a.!!!.c") is None
