"""The simulated authority's rotation features the refresh tests rely on: the reuse grace window, holding a reply
after the request took effect, and digests of the secrets each request presented."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator

import httpx
import pytest

from aadhelper.testing import DEVICE_CODE_GRANT, GRAPH, Fault, SimulatedAuthority

TENANT = "contoso.onmicrosoft.com"
SCOPE = f"{GRAPH}/.default offline_access"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def authority(clock: Clock) -> Iterator[SimulatedAuthority]:
    with SimulatedAuthority(clock=clock) as authority:
        authority.add_tenant(TENANT)
        authority.add_client("cli", tenant=TENANT, public=True)
        authority.add_user("me@contoso.onmicrosoft.com", tenant=TENANT)
        yield authority


@pytest.fixture
def http(authority: SimulatedAuthority) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{authority.url}/{TENANT}/oauth2/v2.0", timeout=10) as client:
        yield client


def sign_in(http: httpx.Client, authority: SimulatedAuthority) -> str:
    started = http.post("/devicecode", data={"client_id": "cli", "scope": SCOPE}).json()
    authority.approve(started["user_code"])
    reply = http.post("/token", data={"grant_type": DEVICE_CODE_GRANT, "client_id": "cli",
                                      "device_code": started["device_code"]})
    token: str = reply.json()["refresh_token"]
    return token


def refresh(http: httpx.Client, token: str) -> httpx.Response:
    return http.post("/token", data={"grant_type": "refresh_token", "client_id": "cli", "refresh_token": token,
                                     "scope": SCOPE})


def test_latest_used_token_may_be_presented_again_within_the_grace_window(
        authority: SimulatedAuthority, http: httpx.Client, clock: Clock) -> None:
    """If a grace window is set, then the grant's latest redeemed refresh token works again inside it (a retry after
    a lost reply) and the grant lives on."""
    authority.refresh_token_reuse_grace = 30
    first = sign_in(http, authority)
    assert refresh(http, first).status_code == 200
    clock.now += 29
    retry = refresh(http, first)
    assert retry.status_code == 200, retry.text
    assert refresh(http, retry.json()["refresh_token"]).status_code == 200


def test_grace_window_ends_and_covers_only_the_latest_token(authority: SimulatedAuthority, http: httpx.Client,
                                                            clock: Clock) -> None:
    """If a used refresh token comes back after the grace window, or after its successor was redeemed, then it is a
    replay and the whole grant is revoked."""
    authority.refresh_token_reuse_grace = 30
    first = sign_in(http, authority)
    second = refresh(http, first).json()["refresh_token"]
    third = refresh(http, second).json()["refresh_token"]
    replay = refresh(http, first)  # within 30 s, but no longer the latest redeemed token
    assert replay.status_code == 400 and replay.json()["error_codes"] == [50173]
    assert refresh(http, third).json()["error_codes"] == [50173]

    fresh = sign_in(http, authority)
    assert refresh(http, fresh).status_code == 200
    clock.now += 31
    assert refresh(http, fresh).json()["error_codes"] == [50173]


def test_without_grace_any_second_use_revokes(authority: SimulatedAuthority, http: httpx.Client) -> None:
    """If no grace window is set (the default), then presenting a used refresh token at once revokes the grant."""
    assert authority.refresh_token_reuse_grace == 0
    first = sign_in(http, authority)
    assert refresh(http, first).status_code == 200
    assert refresh(http, first).json()["error_codes"] == [50173]


def test_hold_reply_commits_the_rotation_before_holding(authority: SimulatedAuthority, http: httpx.Client) -> None:
    """If a reply is held with Fault.hold_reply, then the request has already taken effect (the presented refresh
    token is used) while the client still waits; the held reply arrives on release and names the fault."""
    first = sign_in(http, authority)
    release, reached = threading.Event(), threading.Event()
    authority.inject(Fault.hold_reply(release, grant_type="refresh_token", reached=reached))
    replies: list[httpx.Response] = []
    waiter = threading.Thread(target=lambda: replies.append(refresh(http, first)))
    waiter.start()
    try:
        assert reached.wait(10)
        assert not replies
        authority.refresh_token_reuse_grace = 60  # so the probe below does not revoke the grant
        with httpx.Client(base_url=str(http.base_url), timeout=10) as other:
            assert refresh(other, first).status_code == 200  # a second use: the first one was committed
    finally:
        release.set()
        waiter.join(10)
    assert replies[0].status_code == 200
    assert authority.requests[-2].fault == "hold_reply"


def test_held_reply_is_dropped_when_the_authority_stops(clock: Clock) -> None:
    """If the authority stops while holding a reply, then the client's connection ends without a reply."""
    with SimulatedAuthority(clock=clock) as authority:
        authority.add_tenant(TENANT)
        authority.add_client("cli", tenant=TENANT, public=True)
        authority.add_user("me@contoso.onmicrosoft.com", tenant=TENANT)
        with httpx.Client(base_url=f"{authority.url}/{TENANT}/oauth2/v2.0", timeout=10) as http:
            first = sign_in(http, authority)
            reached = threading.Event()
            authority.inject(Fault.hold_reply(threading.Event(), reached=reached))
            errors: list[BaseException] = []

            def call() -> None:
                try:
                    refresh(http, first)
                except httpx.HTTPError as exc:
                    errors.append(exc)

            waiter = threading.Thread(target=call)
            waiter.start()
            assert reached.wait(10)
            authority.stop()
            waiter.join(10)
    assert errors and isinstance(errors[0], httpx.RemoteProtocolError)


def test_records_carry_digests_of_presented_secrets(authority: SimulatedAuthority, http: httpx.Client) -> None:
    """If a request presents a refresh token, then its record keeps the token's SHA-256, not the token."""
    first = sign_in(http, authority)
    refresh(http, first)
    record = authority.requests[-1]
    assert record.digests["refresh_token"] == hashlib.sha256(first.encode()).hexdigest()
    assert first not in repr(record) and first not in str(record.params)
