"""Interactive sign-in of a user profile: the device-code flow (default) or the browser flow with PKCE.

    result = sign_in(profile, LoginOptions(browser=True))   # its own trio run; Ctrl-C raises Cancelled
    store.set(profile.name, "refresh_token", result.refresh_token)

Modules, one job each: :mod:`.common` (the request, the result, redeeming and error labels), :mod:`.terminal`
(stderr output and the live countdown), :mod:`.device` (device code), :mod:`.redirect` (the 127.0.0.1 listener),
:mod:`.browser` (authorization code + PKCE). Storing the refresh token and telling a running daemon are the CLI's
job (:mod:`aadhelper.cli.login`), so a cancelled or failed sign-in stores nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Profile
from ..errors import Cancelled
from .browser import DEFAULT_TIMEOUT, Opener, default_opener
from .common import LoginRequest, LoginResult, unwrapped
from .terminal import Console


@dataclass(frozen=True)
class LoginOptions:
    """How to sign in: the browser flow (opening a browser, or only printing the URL) or a device code."""

    browser: bool = False
    open_browser: bool = True
    #: Seconds to wait for the sign-in: the browser's redirect (None: DEFAULT_TIMEOUT), or the device code
    #: (None: until the code expires; a value past that changes nothing).
    timeout: float | None = None
    #: Scopes to consent to instead of the profile's.
    scopes: tuple[str, ...] = ()
    #: A Conditional Access claims challenge (JSON) to satisfy.
    claims: str | None = None


def sign_in(profile: Profile, options: LoginOptions, *, console: Console | None = None,
            opener: Opener | None = None) -> LoginResult:
    """Run one interactive sign-in to the end; raises LoginFailed, AuthorityError... or Cancelled on Ctrl-C."""
    import trio

    from ..grants.http import HttpClients
    from .browser import browser_login
    from .device import device_code_login

    request = LoginRequest(profile, options.scopes, options.claims)
    out = console or Console()

    async def run() -> LoginResult:
        http = HttpClients()
        try:
            client = http.get(profile.ca_bundle, profile.proxy)
            if options.browser:
                launcher = (opener or default_opener()) if options.open_browser else None
                return await browser_login(client, request, out, opener=launcher,
                                           timeout=DEFAULT_TIMEOUT if options.timeout is None else options.timeout)
            return await device_code_login(client, request, out, timeout=options.timeout)
        finally:
            with trio.CancelScope(shield=True):
                await http.aclose()

    try:
        with unwrapped():
            return trio.run(run)
    except KeyboardInterrupt:
        if out.live:
            out.say("")  # past the ^C the terminal echoed
        raise Cancelled("the sign-in was cancelled; nothing was stored", profile=profile.name) from None


__all__ = ["Console", "LoginOptions", "LoginRequest", "LoginResult", "sign_in"]
