"""Device-code sign-in (RFC 8628, as Entra speaks it): show the URL and code, poll the token endpoint until the
user has signed in elsewhere, return the refresh token.

Polling rules: wait ``interval`` seconds between polls; ``authorization_pending`` means keep going; ``slow_down``
adds :data:`SLOW_DOWN_STEP` seconds to the interval from then on (RFC 8628 section 3.5); ``expired_token``,
``authorization_declined``/``access_denied`` and ``bad_verification_code`` end the flow with
:class:`~aadhelper.errors.LoginFailed`. Network trouble and 5xx/429 replies while polling do not end a sign-in the
user may be halfway through: polling goes on (honouring ``Retry-After``) until the code expires, and the last such
error is reported if it never recovers. These device-flow errors are handled before the generic mapping of
:mod:`aadhelper.grants.http`, which everything else goes through.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import trio

from ..errors import AuthorityError, AuthorityUnavailable, LoginFailed
from ..grants.http import post_form, raise_for_error
from ..tokens import Secret
from .common import LoginRequest, LoginResult, failed, finish, login_errors
from .terminal import Console, run_showing

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
#: Seconds added to the polling interval by each ``slow_down`` (RFC 8628 section 3.5).
SLOW_DOWN_STEP = 5.0
#: RFC 8628's defaults when the authority leaves them out.
DEFAULT_INTERVAL = 5.0
DEFAULT_EXPIRES_IN = 900.0

# error -> (message, hint) for the replies that end a device-code sign-in.
_ENDED: Mapping[str, tuple[str, str]] = {
    "expired_token": ("the device code expired before the sign-in was completed",
                      "run `aadhelper login {profile}` again and enter the new code in time"),
    "authorization_declined": ("the sign-in was declined", "run `aadhelper login {profile}` again to retry"),
    "access_denied": ("the sign-in was declined", "run `aadhelper login {profile}` again to retry"),
    "bad_verification_code": ("the authority does not know this device code (any more)",
                              "run `aadhelper login {profile}` again"),
}


@dataclass(frozen=True)
class DeviceCode:
    """The authority's answer to the device authorization request."""

    device_code: Secret
    user_code: str
    verification_uri: str
    expires_in: float
    interval: float
    message: str | None = None

    @property
    def instructions(self) -> str:
        """What the user is told to do: the authority's ``message``, else the URL and code."""
        return self.message or f"To sign in, open {self.verification_uri} in a browser and enter the code " \
                               f"{self.user_code}"


async def start(client: httpx.AsyncClient, request: LoginRequest) -> DeviceCode:
    """POST the device authorization request (``/devicecode``)."""
    profile = request.profile
    form = request.with_claims({"client_id": profile.client_id, "scope": request.scope})
    status, headers, body = await post_form(client, profile.devicecode_endpoint, form, profile=profile.name)
    with login_errors("the device code sign-in could not start", profile.name):
        raise_for_error(status, headers, body, profile=profile.name, action="device code request")
    return parse_device_code(body, profile=profile.name)


def parse_device_code(body: Mapping[str, Any] | None, *, profile: str) -> DeviceCode:
    def field(name: str) -> str:
        value = body.get(name) if body else None
        if not isinstance(value, str) or not value or not value.isprintable():
            raise AuthorityUnavailable(f"the authority sent a malformed device code reply (no {name})",
                                       profile=profile)
        return value

    message = body.get("message") if body else None
    return DeviceCode(
        device_code=Secret(field("device_code")),
        user_code=field("user_code"),
        verification_uri=field("verification_uri"),
        expires_in=_number(body, "expires_in", DEFAULT_EXPIRES_IN),
        interval=_number(body, "interval", DEFAULT_INTERVAL),
        message=message if isinstance(message, str) and message.isprintable() and message else None,
    )


def _number(body: Mapping[str, Any] | None, name: str, default: float) -> float:
    value = body.get(name) if body else None
    if isinstance(value, str):
        value = value.strip()
        value = float(value) if value.replace(".", "", 1).isdigit() else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return default


async def poll(client: httpx.AsyncClient, request: LoginRequest, code: DeviceCode, *, deadline: float,
               slow_down_step: float = SLOW_DOWN_STEP) -> LoginResult:
    """Poll the token endpoint until the user signs in, declines, or the code expires (trio time ``deadline``)."""
    profile = request.profile
    form = {"grant_type": DEVICE_CODE_GRANT, "client_id": profile.client_id,
            "device_code": code.device_code.reveal()}
    interval = code.interval
    pause = interval
    trouble: AuthorityError | None = None
    while True:
        await trio.sleep(max(0.0, min(pause, deadline - trio.current_time())))
        if trio.current_time() >= deadline:
            raise trouble or LoginFailed(_ENDED["expired_token"][0], profile=profile.name,
                                         hint=_ENDED["expired_token"][1].format(profile=profile.name))
        pause = interval
        now = time.time()
        try:
            status, headers, body = await post_form(client, profile.token_endpoint, form, profile=profile.name)
        except AuthorityUnavailable as exc:
            trouble = exc
            continue
        error = body.get("error") if body else None
        if status == 200 and not error:
            return finish(body, request, now=now)
        if error == "authorization_pending":
            trouble = None
            continue
        if error == "slow_down":
            interval += slow_down_step
            pause = interval
            continue
        try:
            raise_for_error(status, headers, body, profile=profile.name, action="device code sign-in")
        except AuthorityUnavailable as exc:
            trouble = exc
            pause = max(interval, exc.retry_after or 0.0)
        except AuthorityError as exc:
            if isinstance(error, str) and error in _ENDED:
                message, hint = _ENDED[error]
                raise failed(exc, message, profile.name, hint.format(profile=profile.name)) from None
            with login_errors("the device code sign-in failed", profile.name):
                raise


async def device_code_login(client: httpx.AsyncClient, request: LoginRequest, console: Console, *,
                            timeout: float | None = None) -> LoginResult:
    """The whole flow: request a code, show it, poll with a live countdown until the user is done, the code
    expires, or ``timeout`` seconds pass (``login --timeout``, for scripts that must not wait the code's 15 min)."""
    code = await start(client, request)
    console.say(code.instructions)
    expires = trio.current_time() + code.expires_in
    if timeout is None or timeout >= code.expires_in:
        return await run_showing(console, lambda: poll(client, request, code, deadline=expires),
                                 doing="waiting for you to sign in", until="code expires in", deadline=expires)
    deadline = trio.current_time() + timeout

    async def wait() -> LoginResult:
        with trio.move_on_at(deadline):
            return await poll(client, request, code, deadline=expires)
        name = request.profile.name
        raise LoginFailed(f"no sign-in within {timeout:g} s (--timeout); the device code was not used",
                          profile=name, hint=f"run `aadhelper login {name}` again, with a longer --timeout or none")

    return await run_showing(console, wait, doing="waiting for you to sign in", until="gives up in",
                             deadline=deadline)
