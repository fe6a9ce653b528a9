"""A certificate's secrets held briefly, with the real daemon, fetcher, keyring and HTTPS authority: after many fresh
tokens, the fetcher's and the daemon's memory (read as root through ``/proc/PID/mem``, freed memory included) hold a
bounded number of copies of the private key's PEM and of superseded client assertions, whatever the number of
refreshes (see tests/test_secret_memory.py for the client secret and the tokens).

The figures are printed (``pytest -s tests/test_certificate_memory.py``)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aadhelper import client
from aadhelper.secret_store import KeyringSecretStore
from aadhelper.testing import memscan
from aadhelper.testing.authority import SimulatedAuthority
from aadhelper.testing.certificates import make_client_certificate
from tests.harness import GRAPH_SCOPE, TENANT, DaemonProcess, cli, sensitive

APP = "55555555-0000-0000-0000-000000000001"
#: The most copies of one line of the private key's PEM, and of superseded assertions, either process may hold at
#: any number of refreshes. Measured on this machine at N=10 and 40: key 0 (daemon) and 2-4 (fetcher: freed blocks
#: of the keyring read, the D-Bus reply and its decoded text, which the allocator hands out again for the next read,
#: so their number depends on its free lists, not on N; the fetcher's own bytes copy is wiped), superseded
#: assertions 0 in both. Keeping every assertion, or every key read, gives N copies.
MAX_KEY_COPIES = 5
MAX_SUPERSEDED_ASSERTIONS = 4

pytestmark = pytest.mark.requires("secret-service", "root")


@dataclass
class Setup:
    env: dict[str, str]
    key_lines: list[str]
    authority: SimulatedAuthority


@pytest.fixture
def setup(isolated_env: dict[str, str], ca_pem_file: Path, server_ssl_context: ssl.SSLContext,
          secret_service: KeyringSecretStore, tmp_path: Path) -> Iterator[Setup]:
    """A certificate profile `cert` whose key and chain are in the real Secret Service."""
    material = make_client_certificate()
    key_lines = [line for line in material.key_pem().decode().splitlines() if not line.startswith("-----")]
    sensitive(*key_lines)
    env = dict(isolated_env, AADHELPER_NO_AUTOSTART="1")
    with SimulatedAuthority(ssl_context=server_ssl_context, token_lifetime=600) as authority:
        authority.add_tenant(TENANT)
        authority.add_client(APP, tenant=TENANT)
        authority.add_client_certificate(APP, material.certificate_pem)
        cli(env, "profile", "add", "cert", "--tenant", TENANT, "--client-id", APP, "--scope", GRAPH_SCOPE,
            "--authority", authority.url, "--ca-bundle", str(ca_pem_file), "--credential", "certificate", check=True)
        pem = tmp_path / "app.pem"
        pem.write_bytes(material.pem())
        cli(env, "secret", "set", "cert", "--certificate", str(pem), check=True)
        pem.unlink()
        yield Setup(env, key_lines, authority)


def fresh_tokens(daemon: DaemonProcess, n: int) -> None:
    for _ in range(n):
        client.invalidate("cert", socket_path=daemon.socket_path)
        sensitive(client.get_token("cert", socket_path=daemon.socket_path)["access_token"])


def test_copies_of_the_key_and_of_assertions_do_not_accumulate(setup: Setup) -> None:
    """If the daemon fetches 10 and then 40 fresh tokens with a certificate, then the copies of the private key's PEM
    and of superseded assertions in the daemon's and the fetcher's memory stay under one bound at both numbers."""
    with DaemonProcess(setup.env) as daemon:
        fresh_tokens(daemon, 1)
        fetcher = daemon.fetcher_pid()
        assert fetcher is not None
        assert memscan.readable(fetcher), "cannot read the fetcher's memory (needs root)"
        too_many = []
        done = 1
        for n in (10, 40):
            fresh_tokens(daemon, n - done)
            done = n
            assertions = setup.authority.presented_assertions()
            assert len(set(assertions)) == n
            sensitive(*assertions)
            # One distinctive line from the middle of the key (the first lines are the same for every RSA key).
            key = setup.key_lines[len(setup.key_lines) // 2].encode()
            superseded = [a.encode() for a in assertions[:-1]]
            for who, pid in (("the daemon", daemon.pid), ("the fetcher", fetcher)):
                counts = memscan.count(pid, [key, *superseded])
                key_copies, old = counts[key], memscan.total(counts, superseded)
                print(f"\nN={n} {who}: key PEM copies {key_copies}, superseded assertions {old}")
                if key_copies > MAX_KEY_COPIES:
                    too_many.append(f"{who} holds {key_copies} copies of the private key's PEM after {n} refreshes")
                if old > MAX_SUPERSEDED_ASSERTIONS:
                    too_many.append(f"{who} holds {old} superseded client assertions after {n} refreshes")
        assert daemon.fetcher_pid() == fetcher, "the fetcher was restarted during the test"
        assert not too_many, "\n".join(too_many)
