"""Browser sign-in: the authorization code flow with PKCE (S256) and ``state``, through a ``127.0.0.1`` redirect.

The URL is always printed (for copy/paste into a browser elsewhere) and, unless told not to, opened with
:mod:`webbrowser` in a worker thread (some browser launchers block until the browser exits). The redirect is
checked in this order: ``state`` must be this login's (else the reply may belong to another sign-in, or be
forged), an ``error=`` reply is reported with the authority's code, then the code is redeemed with the PKCE
verifier. The browser is shown a page saying how it ended; no reply within ``timeout`` seconds ends the flow.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import sys
import time
from collections.abc import Callable
from urllib.parse import urlencode

import httpx
import trio

from ..errors import AadhelperError, AuthorityError, LoginFailed
from ..grants.http import raise_for_error
from ..tokens import Secret
from .common import LoginRequest, LoginResult, failed, redeem
from .redirect import Redirect, open_redirect_listener
from .terminal import Console, run_showing

#: Seconds to wait for the browser by default (an authorization code itself lives about ten minutes).
DEFAULT_TIMEOUT = 600.0

#: Opens a URL in a browser; True when a browser was started.
Opener = Callable[[str], bool]


def pkce_pair() -> tuple[Secret, str]:
    """A PKCE verifier (86 characters of the unreserved set, RFC 7636 4.1) and its S256 challenge."""
    verifier = secrets.token_urlsafe(64)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return Secret(verifier), base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def authorize_url(request: LoginRequest, *, redirect_uri: str, state: str, challenge: str) -> str:
    profile = request.profile
    params = request.with_claims({
        "client_id": profile.client_id, "response_type": "code", "redirect_uri": redirect_uri,
        "scope": request.scope, "state": state, "code_challenge": challenge, "code_challenge_method": "S256",
        "prompt": "select_account",
    })
    return f"{profile.authorize_endpoint}?{urlencode(params)}"


def default_opener() -> Opener | None:
    """:func:`webbrowser.open`, or None on a Linux without a display or $BROWSER (webbrowser would start a text
    browser inside this very terminal)."""
    if sys.platform.startswith("linux") and not any(os.environ.get(name)
                                                    for name in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER")):
        return None
    import webbrowser

    return webbrowser.open


async def browser_login(client: httpx.AsyncClient, request: LoginRequest, console: Console, *,
                        opener: Opener | None, timeout: float = DEFAULT_TIMEOUT) -> LoginResult:
    """The whole flow: listen, show (and open) the URL, wait for the redirect, redeem the code."""
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(24)
    async with open_redirect_listener() as listener:
        url = authorize_url(request, redirect_uri=listener.redirect_uri, state=state, challenge=challenge)
        console.say("Sign in with your browser. If no browser opens, open this URL:" if opener else
                    "Open this URL in a browser on this machine to sign in:")
        console.say(f"  {url}")
        deadline = trio.current_time() + timeout

        async def open_browser() -> None:
            assert opener is not None
            if not await trio.to_thread.run_sync(_try_open, opener, url, abandon_on_cancel=True):
                console.say("Could not start a browser: open the URL above yourself.")

        async def wait() -> LoginResult:
            redirect: Redirect | None = None
            with trio.move_on_at(deadline):
                redirect = await listener.wait()
            if redirect is not None:
                return await _complete(client, request, redirect, redirect_uri=listener.redirect_uri, state=state,
                                       verifier=verifier)
            raise LoginFailed(f"no sign-in arrived from the browser within {timeout:g} s",
                              profile=request.profile.name,
                              hint=f"run `aadhelper login {request.profile.name} --browser` again, or sign in "
                                   f"with a device code: `aadhelper login {request.profile.name}`")

        return await run_showing(console, wait, doing="waiting for the sign-in in the browser", until="gives up in",
                                 deadline=deadline, background=[open_browser] if opener else [])


def _try_open(opener: Opener, url: str) -> bool:
    try:
        return bool(opener(url))
    except Exception:  # webbrowser.Error, OSError: any launcher failure just means "open it yourself"
        return False


async def _complete(client: httpx.AsyncClient, request: LoginRequest, redirect: Redirect, *, redirect_uri: str,
                    state: str, verifier: Secret) -> LoginResult:
    """Check and redeem the redirect, then tell the browser how it went."""
    try:
        result = await _redeem_redirect(client, request, redirect.params, redirect_uri=redirect_uri, state=state,
                                        verifier=verifier)
    except AadhelperError as exc:
        with trio.CancelScope(shield=True):
            await redirect.respond(ok=False, text=f"aadhelper: {exc.one_line()}")
        raise
    who = f" as {result.account}" if result.account else ""
    with trio.CancelScope(shield=True):
        await redirect.respond(ok=True, text=f"You are signed in{who}. You can close this window and return to "
                                             "the terminal.")
    return result


async def _redeem_redirect(client: httpx.AsyncClient, request: LoginRequest, params: dict[str, str], *,
                           redirect_uri: str, state: str, verifier: Secret) -> LoginResult:
    name = request.profile.name
    if not hmac.compare_digest(params.get("state", "").encode(), state.encode()):
        raise LoginFailed("the sign-in reply in the browser does not belong to this login (state mismatch)",
                          profile=name, hint=f"run `aadhelper login {name} --browser` again")
    error = params.get("error")
    if error is not None:
        try:
            raise_for_error(400, {}, {"error": error, "error_description": params.get("error_description", "")},
                            profile=name, action="sign-in")
        except AuthorityError as exc:
            declined = error in ("access_denied", "consent_required")
            raise failed(exc, "the sign-in was declined" if declined else "the sign-in in the browser failed",
                         name, f"run `aadhelper login {name} --browser` again") from None
    code = params.get("code")
    if not code:
        raise LoginFailed("the sign-in reply in the browser carried no authorization code", profile=name)
    form = {"grant_type": "authorization_code", "client_id": request.profile.client_id, "code": code,
            "redirect_uri": redirect_uri, "code_verifier": verifier.reveal(),
            "scope": request.scope}
    return await redeem(client, request, form, now=time.time())
