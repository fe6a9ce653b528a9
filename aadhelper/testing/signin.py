"""device_sign_in: a finished device-code sign-in against the simulated authority, done over HTTP(S) with urllib.

What ``aadhelper login`` leaves behind, without running it: a test seeds a refresh token in a store, or checks the
authority's sign-in grants, in three requests (start the flow, approve the code as the user, redeem it).
Stdlib only, like the rest of :mod:`aadhelper.testing`.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from .authority import SimulatedAuthority
from .grants import DEVICE_CODE_GRANT


def device_sign_in(authority: SimulatedAuthority, *, tenant: str, client_id: str, scope: str,
                   user: str | None = None, ssl_context: ssl.SSLContext | None = None) -> dict[str, Any]:
    """Sign ``user`` (default: whom the scripted browser signs in as) in to the public app ``client_id`` with the
    device-code flow and return the token reply (``access_token``, ``refresh_token`` when ``scope`` holds
    ``offline_access``, ``id_token``, ...). ``ssl_context`` must trust the authority's certificate when it serves
    HTTPS. A refused step raises AssertionError with the authority's reply (pytest shows it as the failure)."""
    base = f"{authority.url}/{tenant}/oauth2/v2.0"
    started = _post(f"{base}/devicecode", {"client_id": client_id, "scope": scope}, ssl_context)
    authority.approve(str(started["user_code"]), user=user)
    return _post(f"{base}/token", {"grant_type": DEVICE_CODE_GRANT, "client_id": client_id,
                                   "device_code": str(started["device_code"])}, ssl_context)


def _post(url: str, form: dict[str, str], ssl_context: ssl.SSLContext | None) -> dict[str, Any]:
    request = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(), method="POST")
    # No proxy: the authority is on loopback, whatever HTTPS_PROXY the test's environment holds.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=ssl_context))
    try:
        with opener.open(request, timeout=30) as response:
            body: dict[str, Any] = json.load(response)
            return body
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"device-code sign-in: {url} answered {exc.code}: {exc.read().decode(errors='replace')}"
                             ) from None
