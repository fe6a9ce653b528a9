"""A federated profile whose assertion cannot be had (an empty token file, a token command that fails or hangs) over
simulated hours: the token cache with the real :class:`~aadhelper.grants.federated.FederatedSource`, real files and
processes, and the simulated authority over HTTPS, on trio's MockClock.

The clock jumps only after a moment of real idleness (not at once, as ``autojump_clock`` does): the token
command, the file read in a worker thread and the HTTPS exchange run in real time, and virtual time must not leap
over their timeouts while they do. Each jump costs that moment, so the tests keep their jumps few."""

from __future__ import annotations

import hashlib
import random
import ssl
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing

from aadhelper.cache import TokenCache
from aadhelper.config import Profile
from aadhelper.errors import AuthorityUnavailable, FederationRefused
from aadhelper.grants import HttpClients
from aadhelper.grants.federated import COMMAND_TIMEOUT, FederatedSource
from aadhelper.testing.authority import SimulatedAuthority
from aadhelper.testing.federation import OidcIssuer
from tests.harness import APP, GRAPH_SCOPE, TENANT, exited, sensitive

ISSUER = "https://oidc.example.com/cluster"
SUBJECT = "system:serviceaccount:payments:api"
#: Virtual Unix time at the start (the cache's clock is BASE + trio's virtual time).
BASE = 1_800_000_000.0
HOUR = 3600.0
#: Keeper attempts one failing hour may cost: backoff doubles from 1 s to its 300 s cap (each step scaled by
#: 0.5-1.0), so about 8 + 3100 / 225 ~ 22; one per second would be 3,600.
MAX_ATTEMPTS_PER_HOUR = 40


def virtual_now() -> float:
    return BASE + trio.current_time()


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Virtual time that jumps after 0.3 s of real idleness (see the module docstring)."""
    return trio.testing.MockClock(autojump_threshold=0.3)


@dataclass
class Rig:
    authority: SimulatedAuthority
    issuer: OidcIssuer
    ca: Path
    folder: Path

    def assertion(self) -> str:
        value = self.issuer.token(SUBJECT)
        sensitive(value)
        return value

    def profile(self, *, token_file: Path | None = None, token_command: tuple[str, ...] | None = None) -> Profile:
        return Profile(name="fed", tenant=TENANT, client_id=APP, scopes=(GRAPH_SCOPE,), authority=self.authority.url,
                       credential="federated", ca_bundle=str(self.ca),
                       token_file=None if token_file is None else str(token_file), token_command=token_command)


@pytest.fixture
def rig(server_ssl_context: ssl.SSLContext, ca_pem_file: Path, tmp_path: Path) -> Iterator[Rig]:
    issuer = OidcIssuer(ISSUER)
    with SimulatedAuthority(ssl_context=server_ssl_context) as authority:
        authority.add_tenant(TENANT)
        authority.add_client(APP, tenant=TENANT)
        authority.publish_issuer(issuer.url, issuer.jwks())
        authority.add_federated_credential(APP, issuer=issuer.url, subject=SUBJECT)
        yield Rig(authority, issuer, ca_pem_file, tmp_path)


@pytest.fixture
async def http() -> AsyncIterator[HttpClients]:
    clients = HttpClients()
    try:
        yield clients
    finally:
        await clients.aclose()


def open_cache(profile: Profile, http: HttpClients) -> TokenCache:
    source = FederatedSource(profile, client=http.get(profile.ca_bundle), clock=virtual_now)
    return TokenCache(lambda _: source, clock=virtual_now, rng=random.Random(7))


async def test_an_emptied_token_file_backs_off_without_authority_requests(rig: Rig, http: HttpClients,
                                                                         clock: trio.testing.MockClock) -> None:
    """If the token file goes empty after a token was fetched, then the old token is served while it lasts, the
    refreshes back off (a few dozen attempts in a simulated hour, none reaching the authority), a request after
    expiry fails at once with one line naming the file, and a renewed file is used at the next attempt."""
    token_file = rig.folder / "token"
    token_file.write_text(rig.assertion())
    profile = rig.profile(token_file=token_file)
    async with open_cache(profile, http) as cache:
        first = await cache.get(profile)
        token_file.write_text("")
        await trio.sleep(3000)
        assert await cache.get(profile) is first
        await trio.sleep(HOUR)
        with pytest.raises(AuthorityUnavailable) as failed:
            await cache.get(profile)
        assert f"the federated token file {token_file} is empty" in failed.value.one_line()
        assert "\n" not in failed.value.one_line()
        status = cache.status()[0]
        assert 3 <= status["failures"] <= MAX_ATTEMPTS_PER_HOUR
        assert rig.authority.count() == 1
        renewed = rig.assertion()
        token_file.write_text(renewed)
        await trio.sleep(301)
        assert await cache.get(profile) is not first
    assert rig.authority.count() == 2
    assert rig.authority.requests[-1].digests["client_assertion"] == hashlib.sha256(renewed.encode()).hexdigest()


async def test_a_failing_then_hanging_token_command_backs_off_and_recovers(rig: Rig, http: HttpClients,
                                                                          clock: trio.testing.MockClock) -> None:
    """If the token command starts failing, then hangs, then works again, then the failures back off (a few dozen
    runs per simulated hour, no authority request), each is one line naming the command (its exit status and
    stderr, or the timeout), a hung command's whole process group is killed, and the working command is used at
    the next attempt."""
    assertion = rig.folder / "assertion"
    mode, runs, pids = rig.folder / "mode", rig.folder / "runs", rig.folder / "pids"
    assertion.write_text(rig.assertion())
    mode.write_text("ok")
    script = rig.folder / "token-command.py"
    script.write_text(
        "import os, pathlib, subprocess, sys, time\n"
        "folder = pathlib.Path(sys.argv[1])\n"
        "with open(folder / 'runs', 'a') as runs: runs.write('run\\n')\n"
        "mode = (folder / 'mode').read_text()\n"
        "if mode == 'fail':\n"
        "    sys.stderr.write('Traceback (most recent call last):\\n  ...\\nPermissionError: no id-token\\n')\n"
        "    sys.exit(3)\n"
        "if mode == 'hang':\n"
        "    child = subprocess.Popen(['sleep', '600'])\n"
        "    with open(folder / 'pids', 'a') as pids: pids.write(f'{os.getpid()} {child.pid}\\n')\n"
        "    time.sleep(600)\n"
        "sys.stdout.write((folder / 'assertion').read_text())\n")
    profile = rig.profile(token_command=(sys.executable, str(script), str(rig.folder)))

    def run_count() -> int:
        return len(runs.read_text().splitlines())

    async with open_cache(profile, http) as cache:
        await cache.get(profile)
        assert run_count() == 1 and rig.authority.count() == 1

        mode.write_text("fail")
        await trio.sleep(HOUR + 3600)
        with pytest.raises(AuthorityUnavailable) as failed:
            await cache.get(profile)
        line = failed.value.one_line()
        assert "the federated token command" in line and "exited with status 3" in line
        assert line.count("it said: ") == 1 and "PermissionError: no id-token" in line
        failing_runs = run_count() - 1
        assert 3 <= failing_runs <= 2 * MAX_ATTEMPTS_PER_HOUR

        mode.write_text("hang")
        await trio.sleep(HOUR)
        with pytest.raises(AuthorityUnavailable, match=f"did not finish within {COMMAND_TIMEOUT:.0f} s"):
            await cache.get(profile)
        hung = [line.split() for line in pids.read_text().splitlines()]
        assert 1 <= len(hung) <= MAX_ATTEMPTS_PER_HOUR
        assert all(exited(int(pid)) for pair in hung for pid in pair), "a hung command's process group lives on"

        mode.write_text("ok")
        await trio.sleep(301)
        await cache.get(profile)
    assert rig.authority.count() == 2


async def test_a_refused_federated_token_is_retried_with_backoff_until_entra_is_fixed(
        rig: Rig, http: HttpClients, clock: trio.testing.MockClock) -> None:
    """If Entra refuses the token (no federated credential for its issuer: AADSTS70021), then the user sees one
    line with the fix, requests over a simulated hour reach the authority only at the backoff's pace (not once, as
    a wrong client secret would: the fix is made in Entra, which no profile change signals), and once the
    credential is added the next attempt gets a token."""
    stranger = OidcIssuer("https://token.actions.githubusercontent.com")
    rig.authority.publish_issuer(stranger.url, stranger.jwks())
    token_file = rig.folder / "token"
    assertion = stranger.token("repo:contoso/payments:ref:refs/heads/main")
    sensitive(assertion)
    token_file.write_text(assertion)
    profile = rig.profile(token_file=token_file)
    async with open_cache(profile, http) as cache:
        with pytest.raises(FederationRefused) as refused:
            await cache.get(profile)
        line = refused.value.one_line()
        assert "AADSTS70021" in line and "add one with the token's issuer" in line and "\n" not in line
        for _ in range(30):  # a client asking every two minutes for an hour
            await trio.sleep(120)
            with pytest.raises(FederationRefused):
                await cache.get(profile)
        assert 4 <= rig.authority.count() <= 3 + 30
        asked = rig.authority.count()
        rig.authority.add_federated_credential(APP, issuer=stranger.url,
                                               subject="repo:contoso/payments:ref:refs/heads/main")
        await trio.sleep(301)
        assert rig.authority.validate((await cache.get(profile)).access_token.reveal())["appid"] == APP
    assert rig.authority.count() == asked + 1
