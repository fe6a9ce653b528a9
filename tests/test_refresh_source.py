"""The refresh-token grant in-process: RefreshTokenSource and SignIns against the simulated authority over real HTTPS
(trustme), with the real token cache and in-memory or real Secret Service stores. The authority revokes the whole
grant on any replayed refresh token, so every "no replay" claim below is checked by the authority itself."""

from __future__ import annotations

import hashlib
import itertools
import logging
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from aadhelper.cache import TokenCache, TokenSource
from aadhelper.config import Profile
from aadhelper.errors import AuthorityUnavailable, LoginRequired, SecretStoreError
from aadhelper.fetcher import AsyncSecrets, LocalFetcher
from aadhelper.fetcher.parent import ProcessFetcher
from aadhelper.grants import HttpClients, make_source
from aadhelper.grants.refresh_token import SECRET_KIND, STORE_RETRY_MAX, STORE_RETRY_START, SignIns
from aadhelper.secret_store import KeyringSecretStore, MemorySecretStore
from aadhelper.testing import GRAPH, Fault, RecordedRequest, SimulatedAuthority
from aadhelper.testing.keyring_control import lock_keyring, unlock_keyring
from aadhelper.tokens import Secret
from tests.harness import CLIENT, RESOURCES, TENANT, USER, sign_in_user, user_authority

SCOPE_SETS = [(f"{resource}/.default",) for resource in RESOURCES]
CLAIMS = '{"access_token":{"acrs":{"essential":true,"value":"c1"}}}'


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def refreshes(authority: SimulatedAuthority) -> list[RecordedRequest]:
    return [r for r in authority.requests if r.grant_type == "refresh_token"]


def assert_no_replay(authority: SimulatedAuthority, first: str, count: int) -> None:
    """The authority saw ``count`` refreshes, each with a refresh token never presented before, all accepted."""
    records = refreshes(authority)
    digests = [r.digests["refresh_token"] for r in records]
    assert len(records) == count
    assert [r.status for r in records] == [200] * count, [r.error for r in records]
    assert len(set(digests)) == count
    assert digests[0] == sha(first)


@pytest.fixture
def authority(server_ssl_context: ssl.SSLContext) -> Iterator[SimulatedAuthority]:
    with user_authority(server_ssl_context, device_code_interval=0) as authority:
        assert authority.refresh_token_reuse == "revoke" and authority.refresh_token_reuse_grace == 0
        yield authority


@pytest.fixture
def profile(authority: SimulatedAuthority, ca_pem_file: Path) -> Profile:
    return Profile(name="me", tenant=TENANT, client_id=CLIENT, scopes=(f"{GRAPH}/.default",),
                   authority=authority.url, credential="user", ca_bundle=str(ca_pem_file))


@pytest.fixture
def store() -> MemorySecretStore:
    return MemorySecretStore()


@pytest.fixture
def first_token(authority: SimulatedAuthority, client_ssl_context: ssl.SSLContext, store: MemorySecretStore) -> str:
    """USER signed in; the refresh token is in ``store``."""
    token = sign_in_user(authority, client_ssl_context)
    store.set("me", SECRET_KIND, Secret(token))
    return token


class FlakyStore(MemorySecretStore):
    """An in-memory store whose next ``fail_sets`` writes fail as a locked keyring would."""

    def __init__(self, *, max_value_chars: int | None = None) -> None:
        super().__init__(max_value_chars=max_value_chars)
        self.fail_sets = 0

    def set(self, profile: str, kind: str, value: Secret) -> None:
        if self.fail_sets:
            self.fail_sets -= 1
            raise SecretStoreError("the OS keyring is locked (simulated)")
        super().set(profile, kind, value)


class Rig:
    """What the daemon wires together: one HttpClients, the async secret store, one SignIns for every source."""

    def __init__(self, profile: Profile, store: MemorySecretStore | KeyringSecretStore) -> None:
        self.profile = profile
        self.http = HttpClients()
        self.secrets = AsyncSecrets(store)
        self.sign_ins = SignIns(self.secrets)

    def source(self) -> TokenSource:
        """A new source instance, as the cache creates after each reload."""
        return make_source(self.profile, http=self.http, secrets=self.secrets, clock=time.time,
                           sign_ins=self.sign_ins)


@pytest.fixture
async def rig(profile: Profile, store: MemorySecretStore) -> AsyncIterator[Rig]:
    rig = Rig(profile, store)
    yield rig
    await rig.http.aclose()


async def held_refresh(authority: SimulatedAuthority, rig: Rig, nursery: trio.Nursery, *,
                       after_rotation: bool = True) -> tuple[threading.Event, list[object]]:
    """Start a refresh whose reply the authority holds (after rotating, by default); returns the release event and
    a list that receives the outcome."""
    release, reached = threading.Event(), threading.Event()
    fault = Fault.hold_reply if after_rotation else Fault.hold
    authority.inject(fault(release, grant_type="refresh_token", reached=reached))
    outcome: list[object] = []

    async def run() -> None:
        try:
            outcome.append(await rig.source().acquire(SCOPE_SETS[0]))
        except Exception as exc:
            outcome.append(exc)

    nursery.start_soon(run)
    assert await trio.to_thread.run_sync(reached.wait, 10)
    return release, outcome


async def test_each_refresh_presents_the_token_the_previous_one_returned(
        authority: SimulatedAuthority, rig: Rig, store: MemorySecretStore, first_token: str) -> None:
    """If a profile refreshes five times, then the authority sees five different refresh tokens, none replayed, and
    the keyring holds a new one after each refresh."""
    source = rig.source()
    seen = {first_token}
    for scopes in SCOPE_SETS:
        response = await source.acquire(scopes)
        assert response.token.scopes == scopes
        stored = store.get("me", SECRET_KIND)
        assert stored is not None and stored.reveal() not in seen
        seen.add(stored.reveal())
        claims = authority.validate(response.token.access_token.reveal())
        assert claims["aud"] == scopes[0].removesuffix("/.default")
    assert_no_replay(authority, first_token, 5)
    asked = refreshes(authority)[0].scope or ""
    assert set(asked.split()) >= {"openid", "profile", "offline_access", SCOPE_SETS[0][0]}


async def test_fifty_concurrent_requests_for_five_scopes_never_replay(
        authority: SimulatedAuthority, rig: Rig, first_token: str) -> None:
    """If 50 requests for 5 scope sets arrive at once and every refresh is slow, then the cache's 5 flights refresh
    one after another and no refresh token is presented twice."""
    authority.inject(Fault.delay(0.2, grant_type="refresh_token"), times=5)
    got: dict[tuple[str, ...], set[str]] = {scopes: set() for scopes in SCOPE_SETS}
    async with TokenCache(lambda profile: rig.source(), clock=time.time) as cache:
        async def one(scopes: tuple[str, ...]) -> None:
            got[scopes].add((await cache.get(rig.profile, scopes)).access_token.reveal())

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for index in range(50):
                    nursery.start_soon(one, SCOPE_SETS[index % 5])
    assert all(len(tokens) == 1 for tokens in got.values())
    assert_no_replay(authority, first_token, 5)


async def test_a_recreated_source_waits_for_the_old_ones_refresh(
        authority: SimulatedAuthority, rig: Rig, first_token: str) -> None:
    """If the daemon recreates a profile's source (a reload) while the old one's refresh is in flight, then the new
    source waits for it and presents the rotated token, not the used one."""
    async with trio.open_nursery() as nursery:
        release, outcome = await held_refresh(authority, rig, nursery)
        second: list[object] = []

        async def newer() -> None:
            second.append(await rig.source().acquire(SCOPE_SETS[1]))

        nursery.start_soon(newer)
        await trio.testing.wait_all_tasks_blocked()
        assert len(refreshes(authority)) == 1  # the new source is waiting for the lock, not at the authority
        release.set()
    assert len(outcome) == 1 and len(second) == 1
    assert_no_replay(authority, first_token, 2)


async def test_keyring_write_failure_keeps_the_new_token_in_memory(
        authority: SimulatedAuthority, profile: Profile, first_token: str) -> None:
    """If the keyring refuses the rotated refresh token, then the access token is still served, the next refresh
    (even by a recreated source) presents the new token rather than the used one, and that refresh stores its own."""
    store = FlakyStore()
    store.set("me", SECRET_KIND, Secret(first_token))
    store.fail_sets = 1
    rig = Rig(profile, store)
    try:
        await rig.source().acquire(SCOPE_SETS[0])
        assert store.get("me", SECRET_KIND) == Secret(first_token)
        assert await rig.sign_ins.login_required("me") is None
        await rig.source().acquire(SCOPE_SETS[1])
    finally:
        await rig.http.aclose()
    assert_no_replay(authority, first_token, 2)
    stored = store.get("me", SECRET_KIND)
    assert stored is not None and sha(stored.reveal()) not in {r.digests["refresh_token"] for r in refreshes(authority)}


async def test_unsaved_token_is_stored_in_the_background(
        authority: SimulatedAuthority, profile: Profile, first_token: str) -> None:
    """If the keyring refuses the rotated refresh token twice, then SignIns.keep_storing retries with backoff and
    stores it without another refresh."""
    store = FlakyStore()
    store.set("me", SECRET_KIND, Secret(first_token))
    store.fail_sets = 2
    rig = Rig(profile, store)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: rig.sign_ins.keep_storing(start=0.01, largest=0.05))
            await rig.source().acquire(SCOPE_SETS[0])
            with trio.fail_after(10):
                while store.get("me", SECRET_KIND) == Secret(first_token):
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        await rig.source().acquire(SCOPE_SETS[0])
    finally:
        await rig.http.aclose()
    assert store.fail_sets == 0
    assert_no_replay(authority, first_token, 2)


@pytest.mark.parametrize("change", ["login", "logout"])
async def test_login_or_logout_during_a_refresh_wins(
        authority: SimulatedAuthority, client_ssl_context: ssl.SSLContext, rig: Rig, store: MemorySecretStore,
        first_token: str, change: str) -> None:
    """If `aadhelper login` or `logout` changes the keyring while a refresh is in flight, then the refresh does not
    overwrite it: the new sign-in (or the sign-out) stands."""
    newer = sign_in_user(authority, client_ssl_context) if change == "login" else None
    async with trio.open_nursery() as nursery:
        release, outcome = await held_refresh(authority, rig, nursery)
        if newer is not None:
            store.set("me", SECRET_KIND, Secret(newer))
        else:
            store.delete("me", SECRET_KIND)
        release.set()
    assert not isinstance(outcome[0], Exception), outcome
    assert store.get("me", SECRET_KIND) == (Secret(newer) if newer else None)
    if newer is None:
        with pytest.raises(LoginRequired, match="not signed in"):
            await rig.source().acquire(SCOPE_SETS[0])
        assert len(refreshes(authority)) == 1
    else:
        await rig.source().acquire(SCOPE_SETS[0])
        assert refreshes(authority)[-1].digests["refresh_token"] == sha(newer)


async def test_cancelled_refresh_still_stores_the_rotated_token(
        authority: SimulatedAuthority, rig: Rig, store: MemorySecretStore, first_token: str) -> None:
    """If the daemon shuts down (cancels) while the authority has rotated the token but not yet replied, then the
    refresh completes under its shield and the keyring gets the new token."""
    async with trio.open_nursery() as nursery:
        release, outcome = await held_refresh(authority, rig, nursery)
        nursery.cancel_scope.cancel()
        # The reply comes only after the cancellation: unshielded, the refresh would be abandoned by then.
        release.set()
    assert outcome and not isinstance(outcome[0], Exception), outcome
    assert store.get("me", SECRET_KIND) not in (None, Secret(first_token))
    await rig.source().acquire(SCOPE_SETS[0])
    assert_no_replay(authority, first_token, 2)


async def test_not_signed_in_needs_no_authority_request(authority: SimulatedAuthority, rig: Rig) -> None:
    """If no refresh token is stored, then acquiring fails with LoginRequired naming `aadhelper login me`, and the
    authority is not asked."""
    with pytest.raises(LoginRequired) as caught:
        await rig.source().acquire(SCOPE_SETS[0])
    assert "aadhelper login me" in caught.value.one_line()
    assert "not signed in" in caught.value.one_line()
    assert authority.count(endpoint="token") == 0
    assert isinstance(await rig.sign_ins.login_required("me"), LoginRequired)


@pytest.mark.parametrize("breakage, aadsts", [("revoked", 50173), ("expired", 700082)])
async def test_dead_refresh_token_fails_every_scope_with_one_request(
        authority: SimulatedAuthority, client_ssl_context: ssl.SSLContext, rig: Rig, store: MemorySecretStore,
        first_token: str, breakage: str, aadsts: int) -> None:
    """If the refresh token was revoked or has expired, then the first refresh fails with LoginRequired (AADSTS code,
    `aadhelper login me`), other scope sets fail at once without asking the authority again, and a new sign-in in
    the keyring makes the profile work again."""
    if breakage == "revoked":
        assert authority.revoke(user=USER) == 1
    else:
        authority.refresh_token_lifetime = 0
    source = rig.source()
    with pytest.raises(LoginRequired) as first:
        await source.acquire(SCOPE_SETS[0])
    assert first.value.aadsts == aadsts
    assert "aadhelper login me" in first.value.one_line()
    for scopes in SCOPE_SETS[1:]:
        with pytest.raises(LoginRequired) as again:
            await rig.source().acquire(scopes)
        assert again.value.aadsts == aadsts
    assert len(refreshes(authority)) == 1
    state = await rig.sign_ins.login_required("me")
    assert state is not None and state.aadsts == aadsts
    authority.refresh_token_lifetime = 90 * 86400
    store.set("me", SECRET_KIND, Secret(sign_in_user(authority, client_ssl_context)))
    assert await rig.sign_ins.login_required("me") is None
    await source.acquire(SCOPE_SETS[0])
    assert refreshes(authority)[-1].status == 200


async def test_mfa_challenge_carries_claims(authority: SimulatedAuthority, rig: Rig, first_token: str) -> None:
    """If the authority demands MFA with a claims challenge, then LoginRequired carries the claims (for the next
    login) and the profile reads as login required."""
    authority.inject(Fault.error("interaction_required", 50076, "Due to a configuration change made by your "
                                 "administrator, you must use multi-factor authentication.", claims=CLAIMS,
                                 grant_type="refresh_token"))
    with pytest.raises(LoginRequired) as caught:
        await rig.source().acquire(SCOPE_SETS[0])
    assert caught.value.claims == CLAIMS and caught.value.to_wire()["claims"] == CLAIMS
    state = await rig.sign_ins.login_required("me")
    assert state is not None and state.claims == CLAIMS


async def test_consent_missing_for_one_resource_leaves_the_others_working(
        authority: SimulatedAuthority, rig: Rig, first_token: str) -> None:
    """If the authority wants consent for one resource (AADSTS65001), then only that scope set fails; the refresh
    token still serves the other resources."""
    authority.inject(Fault.error("interaction_required", 65001, "The user or administrator has not consented.",
                                 grant_type="refresh_token"))
    with pytest.raises(LoginRequired):
        await rig.source().acquire(SCOPE_SETS[1])
    await rig.source().acquire(SCOPE_SETS[0])
    assert [r.status for r in refreshes(authority)] == [400, 200]
    assert await rig.sign_ins.login_required("me") is None


async def test_large_refresh_tokens_are_chunked_in_a_small_keyring(
        authority: SimulatedAuthority, client_ssl_context: ssl.SSLContext, profile: Profile) -> None:
    """If refresh tokens are larger than the keyring's entry limit, then each rotation is stored in chunks, read back
    whole (the authority accepts it), and deleting removes every chunk."""
    authority.refresh_token_length = 6000
    store = MemorySecretStore(max_value_chars=1280)
    first = sign_in_user(authority, client_ssl_context)
    store.set("me", SECRET_KIND, Secret(first))
    assert len(store.entry_names()) == 1 + 5
    rig = Rig(profile, store)
    try:
        for scopes in SCOPE_SETS[:3]:
            await rig.source().acquire(scopes)
    finally:
        await rig.http.aclose()
    assert_no_replay(authority, first, 3)
    assert any("#" in name for name in store.entry_names())
    assert store.delete("me", SECRET_KIND)
    assert store.entry_names() == []


@pytest.mark.requires("secret-service")
async def test_large_refresh_tokens_rotate_in_the_real_secret_service(
        authority: SimulatedAuthority, client_ssl_context: ssl.SSLContext, profile: Profile,
        secret_service: KeyringSecretStore, keyring_entries: Callable[[], set[str]]) -> None:
    """If the real Secret Service is limited to Windows' entry size, then rotated 6000-character refresh tokens are
    stored in chunks, keep working, and deleting removes every chunk."""
    authority.refresh_token_length = 6000
    store = KeyringSecretStore(max_value_chars=1280)
    first = sign_in_user(authority, client_ssl_context)
    store.set("me", SECRET_KIND, Secret(first))
    rig = Rig(profile, store)
    try:
        for scopes in SCOPE_SETS[:2]:
            await rig.source().acquire(scopes)
    finally:
        await rig.http.aclose()
    assert_no_replay(authority, first, 2)
    names = keyring_entries()
    assert "me/refresh_token" in names and len([n for n in names if n.startswith("me/refresh_token#")]) == 5
    assert store.delete("me", SECRET_KIND)
    assert not [n for n in keyring_entries() if n.startswith("me/")]


@pytest.mark.parametrize("unusable", [{"expires_in": 3600}, {"access_token": "eyJ.x.y", "expires_in": -5},
                                      {"access_token": "eyJ.x.y", "expires_in": 3600, "token_type": "N/A"}])
async def test_rotated_refresh_token_is_stored_even_when_the_rest_of_the_reply_is_unusable(
        authority: SimulatedAuthority, rig: Rig, store: MemorySecretStore, first_token: str,
        unusable: dict[str, object]) -> None:
    """If the authority rotates the refresh token in a reply whose access token is unusable (missing, or with a bad
    lifetime or type), then the refresh fails as a malformed reply, but the new refresh token is in the keyring
    already: it was stored before the rest of the reply was parsed (at an authority that revokes used tokens, the
    old one is worth nothing now)."""
    rotated = "rotated-" + hashlib.sha256(first_token.encode()).hexdigest()
    authority.inject(Fault.status(200, {"token_type": "Bearer", **unusable, "refresh_token": rotated},
                                  grant_type="refresh_token"))
    with pytest.raises(AuthorityUnavailable, match="malformed token reply"):
        await rig.source().acquire(SCOPE_SETS[0])
    assert store.get("me", SECRET_KIND) == Secret(rotated)
    assert rig.sign_ins.unsaved() == ()


async def test_a_sign_in_the_keyring_never_took_is_logged_as_lost_at_exit(
        authority: SimulatedAuthority, profile: Profile, first_token: str, caplog: pytest.LogCaptureFixture) -> None:
    """If the keyring refuses every write of a rotated refresh token, then the fetcher reports the profile as unsaved
    while it runs, tries once more when it stops, and logs at ERROR level that the new refresh token is lost, naming
    `aadhelper login me`."""
    store = FlakyStore()
    store.set("me", SECRET_KIND, Secret(first_token))
    store.fail_sets = 1_000_000
    async with LocalFetcher(store) as fetcher:
        await fetcher.source(profile).acquire(SCOPE_SETS[0])
        assert await fetcher.unsaved_sign_ins() == ("me",)
        sets_before_exit = store.fail_sets
    assert store.fail_sets == sets_before_exit - 1  # the last attempt at exit
    lost = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(lost) == 1 and "new refresh token could not be stored" in lost[0].getMessage()
    assert "aadhelper login me" in lost[0].getMessage()
    assert store.get("me", SECRET_KIND) == Secret(first_token)


async def test_a_sign_in_stored_by_the_last_attempt_at_exit_is_not_lost(
        authority: SimulatedAuthority, profile: Profile, first_token: str, caplog: pytest.LogCaptureFixture) -> None:
    """If the keyring refused the rotated refresh token while the fetcher ran but takes it when the fetcher stops,
    then it is stored and nothing is logged as lost."""
    store = FlakyStore()
    store.set("me", SECRET_KIND, Secret(first_token))
    store.fail_sets = 1
    async with LocalFetcher(store) as fetcher:
        await fetcher.source(profile).acquire(SCOPE_SETS[0])
        assert await fetcher.unsaved_sign_ins() == ("me",)
    assert not [r for r in caplog.records if r.levelno == logging.ERROR]
    stored = store.get("me", SECRET_KIND)
    assert stored is not None and stored != Secret(first_token)


@pytest.mark.requires("secret-service")
async def test_the_fetcher_process_reports_an_unsaved_sign_in_until_the_keyring_takes_it(
        authority: SimulatedAuthority, client_ssl_context: ssl.SSLContext, profile: Profile,
        secret_service: KeyringSecretStore) -> None:
    """If the keyring is locked when the fetcher process must store a rotated refresh token, then the daemon's
    ``unsaved_sign_ins()`` names the profile (for status); once the keyring is unlocked, the fetcher stores the token
    by itself and the profile is no longer named."""
    first = sign_in_user(authority, client_ssl_context)
    secret_service.set("me", SECRET_KIND, Secret(first))
    with trio.fail_after(60):
        async with ProcessFetcher(secret_store="keyring") as fetcher, trio.open_nursery() as nursery:
            release, reached = threading.Event(), threading.Event()
            authority.inject(Fault.hold_reply(release, grant_type="refresh_token", reached=reached))
            nursery.start_soon(fetcher.source(profile).acquire, SCOPE_SETS[0])
            assert await trio.to_thread.run_sync(reached.wait, 20)
            try:
                lock_keyring()
                release.set()
                while await fetcher.unsaved_sign_ins() != ("me",):
                    await trio.sleep(0.05)
            finally:
                unlock_keyring()
            while await fetcher.unsaved_sign_ins():
                await trio.sleep(0.05)
    stored = secret_service.get("me", SECRET_KIND)
    assert stored is not None and stored != Secret(first)
    assert refreshes(authority)[0].digests["refresh_token"] == sha(first)


class RefusingSecrets:
    """The fetcher's async secret access over a keyring that holds ``old`` and refuses every write."""

    def __init__(self, old: str) -> None:
        self.old = Secret(old)
        self.writes: list[float] = []

    async def get(self, profile: str, kind: str) -> Secret | None:
        return self.old

    async def set(self, profile: str, kind: str, value: Secret) -> None:
        self.writes.append(trio.current_time())
        raise SecretStoreError("the OS keyring is locked (simulated)")


async def test_storing_an_unsaved_refresh_token_is_retried_with_backoff(autojump_clock: trio.testing.MockClock) -> None:
    """If the keyring refuses a rotated refresh token for an hour, then SignIns.keep_storing retries with exponential
    backoff (1 s doubling to STORE_RETRY_MAX): a few dozen writes in an hour, never one per second, and the profile
    stays reported as unsaved."""
    secrets = RefusingSecrets("old-token")
    sign_ins = SignIns(secrets)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sign_ins.keep_storing)
        async with sign_ins.turn("me") as turn:
            await turn.replace(Secret("new-token"))
        await trio.sleep(3600)
        nursery.cancel_scope.cancel()
    gaps = [later - earlier for earlier, later in itertools.pairwise(secrets.writes)]
    assert gaps[:6] == pytest.approx([1, 2, 4, 8, 16, 32])
    assert max(gaps) == pytest.approx(STORE_RETRY_MAX) and min(gaps) >= STORE_RETRY_START
    assert len(secrets.writes) < 3600 / STORE_RETRY_MAX + 10
    assert sign_ins.unsaved() == ("me",)


class LateSecrets(RefusingSecrets):
    """A keyring whose writes land although the caller gave up on them (they did not answer in time)."""

    async def set(self, profile: str, kind: str, value: Secret) -> None:
        self.old = value
        await super().set(profile, kind, value)


@pytest.mark.parametrize("then", ["refresh", "retry"])
async def test_a_write_given_up_on_that_landed_later_counts_as_saved(caplog: pytest.LogCaptureFixture,
                                                                     then: str) -> None:
    """If a write of the rotated refresh token was reported as failed (timed out) but reached the keyring anyway,
    then the next refresh presents that token (or the next retry finds it stored), the profile is no longer
    unsaved, and the keyring's value is not mistaken for a login or logout."""
    caplog.set_level(logging.INFO, logger="aadhelper")
    secrets = LateSecrets("old-token")
    sign_ins = SignIns(secrets)
    async with sign_ins.turn("me") as turn:
        await turn.replace(Secret("new-token"))
    assert sign_ins.unsaved() == ("me",)
    if then == "refresh":
        async with sign_ins.turn("me") as turn:
            assert turn.current == Secret("new-token")
    else:
        await sign_ins.store_before_exit(10)
        assert len(secrets.writes) == 1
    assert sign_ins.unsaved() == ()
    assert "login or logout" not in caplog.text and "lost" not in caplog.text
