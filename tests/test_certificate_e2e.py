"""Certificate profiles end to end: the CLI stores a certificate in the real Secret Service (or the profile names a
file), the real daemon's fetcher signs an assertion per request, and the simulated authority over HTTPS verifies it
for real. The leak check covers the private key, the PFX password and every assertion the authority received."""

from __future__ import annotations

import base64
import json
import os
import secrets
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aadhelper.certificates import load_certificate
from aadhelper.secret_store import KeyringSecretStore
from aadhelper.testing.authority import SimulatedAuthority
from aadhelper.testing.certificates import CertificateMaterial, make_client_certificate
from aadhelper.testing.directory import ADO, GRAPH
from tests.harness import GRAPH_SCOPE, TENANT, DaemonProcess, cli, one_error_line, sensitive, token_of, wait_for_log

pytestmark = pytest.mark.requires("secret-service")

APP = "44444444-0000-0000-0000-000000000001"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture
def password() -> str:
    value = "pfx-" + secrets.token_urlsafe(12)
    sensitive(value)
    return value


@pytest.fixture(scope="module")
def material() -> CertificateMaterial:
    return make_client_certificate(days=365, issued_by_ca=True)


def key_lines(material: CertificateMaterial) -> list[str]:
    """Lines of the private key's PEM body, as the keyring holds it (what a leak would show)."""
    return [line for line in material.key_pem().decode().splitlines() if not line.startswith("-----")]


@pytest.fixture
def authority(server_ssl_context: ssl.SSLContext, material: CertificateMaterial) -> Iterator[SimulatedAuthority]:
    """The authority over HTTPS with app APP, which has ``material``'s certificate uploaded and no secret."""
    sensitive(*key_lines(material))
    with SimulatedAuthority(ssl_context=server_ssl_context) as authority:
        authority.add_tenant(TENANT)
        authority.add_client(APP, tenant=TENANT, resources=(GRAPH, ADO))
        authority.add_client_certificate(APP, material.certificate_pem)
        yield authority


@pytest.fixture
def env(isolated_env: dict[str, str], ca_pem_file: Path, authority: SimulatedAuthority,
        secret_service: KeyringSecretStore) -> dict[str, str]:
    return dict(isolated_env, AADHELPER_NO_AUTOSTART="1")


def add_certificate_profile(env: dict[str, str], authority: SimulatedAuthority, ca: Path, *options: str) -> None:
    cli(env, "profile", "add", "cert", "--tenant", TENANT, "--client-id", APP, "--scope", GRAPH_SCOPE,
        "--authority", authority.url, "--ca-bundle", str(ca), "--credential", "certificate", *options, check=True)


def presented(authority: SimulatedAuthority) -> list[dict[str, object]]:
    """The headers of the assertions the authority received (each assertion joins the leak check)."""
    assertions = authority.presented_assertions()
    sensitive(*assertions, *(a.rsplit(".", 1)[-1] for a in assertions))
    return [json.loads(base64.urlsafe_b64decode(a.split(".")[0] + "==")) for a in assertions]


def key_file(tmp_path: Path, data: bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "app-cert.pem"
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def test_pfx_in_the_keyring_gets_tokens_with_a_verified_assertion(
        env: dict[str, str], authority: SimulatedAuthority, material: CertificateMaterial, ca_pem_file: Path,
        password: str, tmp_path: Path, keyring_entries: Callable[[], set[str]]) -> None:
    """If a password-protected PFX is stored with `secret set --certificate --password-stdin`, then the CLI prints
    its thumbprints and expiry, the key and chain are in the Secret Service, the daemon gets tokens with a PS256
    assertion the authority verified (one per request), status and profile show show the certificate, and no
    key, password or assertion shows in any output or log."""
    add_certificate_profile(env, authority, ca_pem_file)
    pfx = tmp_path / "app.pfx"
    pfx.write_bytes(material.pfx(password.encode()))
    stored = cli(env, "secret", "set", "cert", "--certificate", str(pfx), "--password-stdin", input=password + "\n",
                 check=True)
    thumbprint = load_certificate(material.pem(), source="test").sha256_thumbprint
    assert f"SHA-256 thumbprint {thumbprint}" in stored.stderr and "expires " in stored.stderr
    assert any(name.startswith("cert/certificate") for name in keyring_entries())
    with DaemonProcess(env) as daemon:
        token = token_of(env, "cert")
        assert authority.validate(token)["appid"] == APP
        token_of(env, "cert", "--scope", f"{ADO}/.default")
        requests = authority.requests
        assert [r.params["client_assertion_type"] for r in requests] == [JWT_BEARER, JWT_BEARER]
        assert all(r.status == 200 and "client_secret" not in r.params for r in requests)
        headers = presented(authority)
        assert [h["alg"] for h in headers] == ["PS256", "PS256"] and all("x5t#S256" in h for h in headers)
        assert len(set(authority.presented_assertions())) == 2
        status = cli(env, "status")
        assert status.returncode == 0, status.stderr
        assert f"certificate SHA-256 {thumbprint}" in status.stdout and "days left" in status.stdout
        show = cli(env, "profile", "show", "cert", check=True)
        assert thumbprint in show.stdout and "in the OS keyring" in show.stdout
        assert "warning" not in daemon.log()


def test_certificate_file_with_x5c_and_rs256(env: dict[str, str], authority: SimulatedAuthority,
                                             material: CertificateMaterial, ca_pem_file: Path,
                                             tmp_path: Path) -> None:
    """If the profile reads its certificate from a 0600 file with x5c and RS256, then the assertion carries the SHA-1
    x5t and the whole chain, and the authority accepts it."""
    path = key_file(tmp_path, material.pem(key_last=True))
    add_certificate_profile(env, authority, ca_pem_file, "--certificate-path", str(path), "--x5c",
                            "--assertion-alg", "RS256")
    with DaemonProcess(env):
        token_of(env, "cert")
        (header,) = presented(authority)
        assert header["alg"] == "RS256" and "x5t" in header and "x5t#S256" not in header
        assert isinstance(header["x5c"], list) and len(header["x5c"]) == 2


def test_key_file_readable_by_others_is_refused(env: dict[str, str], authority: SimulatedAuthority,
                                                material: CertificateMaterial, ca_pem_file: Path,
                                                tmp_path: Path) -> None:
    """If the certificate file is readable by group or others, then `profile add` refuses it, and (its mode changed
    after) a token request fails with one line naming the file and the chmod that fixes it (exit 3), and the
    authority is never asked."""
    path = key_file(tmp_path, material.pem(), mode=0o644)
    refused = cli(env, "profile", "add", "cert", "--tenant", TENANT, "--client-id", APP, "--scope", GRAPH_SCOPE,
                  "--credential", "certificate", "--certificate-path", str(path))
    assert refused.returncode == 3 and f"chmod 600 {path}" in one_error_line(refused)
    assert not Path(env["AADHELPER_CONFIG"]).exists()
    os.chmod(path, 0o600)
    add_certificate_profile(env, authority, ca_pem_file, "--certificate-path", str(path))
    os.chmod(path, 0o640)
    with DaemonProcess(env):
        result = cli(env, "token", "cert")
        assert result.returncode == 3
        assert f"chmod 600 {path}" in one_error_line(result)
        assert authority.count(endpoint="token") == 0


def test_expired_certificate_is_a_config_error_without_asking_the_authority(
        env: dict[str, str], authority: SimulatedAuthority, ca_pem_file: Path, tmp_path: Path) -> None:
    """If the profile's certificate has expired, then `profile add` refuses it, and (a deployed file that expired
    later) token and status fail with one line saying so (exit 3) and the authority receives no request."""
    expired = make_client_certificate(days=-2, not_before=1_600_000_000)
    sensitive(*key_lines(expired))
    authority.add_client_certificate(APP, expired.certificate_pem)
    path = key_file(tmp_path, expired.pem())
    refused = cli(env, "profile", "add", "cert", "--tenant", TENANT, "--client-id", APP, "--scope", GRAPH_SCOPE,
                  "--credential", "certificate", "--certificate-path", str(path))
    assert refused.returncode == 3 and "expired on" in one_error_line(refused)
    valid = make_client_certificate()
    sensitive(*key_lines(valid))
    path.write_bytes(valid.pem())
    add_certificate_profile(env, authority, ca_pem_file, "--certificate-path", str(path))
    path.write_bytes(expired.pem())
    with DaemonProcess(env):
        result = cli(env, "token", "cert")
        assert result.returncode == 3
        assert "expired on" in one_error_line(result)
        status = cli(env, "status")
        assert status.returncode == 3 and "(EXPIRED)" in status.stdout
        assert authority.count(endpoint="token") == 0


def test_expiring_certificate_is_warned_once(env: dict[str, str], authority: SimulatedAuthority, ca_pem_file: Path,
                                             tmp_path: Path) -> None:
    """If the certificate expires within 30 days, then tokens still come, status warns, and the daemon's log warns
    once however many refreshes use it."""
    expiring = make_client_certificate(days=10)
    sensitive(*key_lines(expiring))
    authority.add_client_certificate(APP, expiring.certificate_pem)
    add_certificate_profile(env, authority, ca_pem_file, "--certificate-path", str(key_file(tmp_path, expiring.pem())))
    with DaemonProcess(env) as daemon:
        token_of(env, "cert")
        token_of(env, "cert", "--scope", f"{ADO}/.default")
        assert authority.count(endpoint="token") == 2
        presented(authority)
        wait_for_log(daemon, r"expires in \d+ days")
        assert daemon.log().count("of profile 'cert' (SHA-256") == 1
        status = cli(env, "status")
        assert status.returncode == 0 and "warning: expires in" in status.stdout


def test_certificate_not_uploaded_is_refused_by_the_authority(env: dict[str, str], authority: SimulatedAuthority,
                                                              ca_pem_file: Path, tmp_path: Path) -> None:
    """If the stored certificate is not the one uploaded to the app, then the authority refuses the assertion with
    AADSTS700027 and the user sees that in one line (exit 5)."""
    other = make_client_certificate()
    sensitive(*key_lines(other))
    add_certificate_profile(env, authority, ca_pem_file)
    pem = tmp_path / "other.pem"
    pem.write_bytes(other.pem())
    cli(env, "secret", "set", "cert", "--certificate", str(pem), check=True)
    with DaemonProcess(env):
        result = cli(env, "token", "cert")
        assert result.returncode == 5
        assert "AADSTS700027" in one_error_line(result)
        presented(authority)


BAD_INPUTS: dict[str, tuple[Callable[[CertificateMaterial, str], bytes], bool, str]] = {
    "pem without key": (lambda m, p: m.certificate_pem, False, "holds no private key"),
    "key not matching": (lambda m, p: make_client_certificate().key_pem() + m.certificate_pem, False,
                         "does not match"),
    "wrong pfx password": (lambda m, p: m.pfx(b"not-" + p.encode()), True, "wrong PFX password"),
    "encrypted pem without password": (lambda m, p: m.pem(p.encode()), False, "no password was given"),
    "not yet valid": (lambda m, p: make_client_certificate(not_before=time.time() + 86400).pem(), False,
                      "is not valid before"),
    "expired": (lambda m, p: make_client_certificate(days=-1, not_before=1_600_000_000).pem(), False, "expired on"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_certificate_input_stores_nothing(env: dict[str, str], authority: SimulatedAuthority,
                                              material: CertificateMaterial, ca_pem_file: Path, password: str,
                                              tmp_path: Path, keyring_entries: Callable[[], set[str]],
                                              case: str) -> None:
    """If `secret set --certificate` gets a PEM without key, a key that does not match, a wrong PFX password, an
    encrypted PEM without password, or a certificate not yet valid or expired, then it prints one line saying which
    (exit 3) and the keyring holds nothing new."""
    add_certificate_profile(env, authority, ca_pem_file)
    make, with_password, expected = BAD_INPUTS[case]
    path = tmp_path / "input"
    path.write_bytes(make(material, password))
    before = keyring_entries()
    args = ["--password-stdin"] if with_password else []
    result = cli(env, "secret", "set", "cert", "--certificate", str(path), *args,
                 input=f"{password}\n" if with_password else "")
    assert result.returncode == 3
    assert expected in one_error_line(result)
    assert keyring_entries() == before


def test_encrypted_certificate_file_with_its_password_in_the_keyring(
        env: dict[str, str], authority: SimulatedAuthority, material: CertificateMaterial, ca_pem_file: Path,
        password: str, tmp_path: Path) -> None:
    """If the profile's certificate file is encrypted, then profile add says to store its password, a token request
    before that says the same in one line without asking the authority, `secret set --certificate-password` checks
    and stores it, and the running daemon then gets tokens with it."""
    path = key_file(tmp_path, material.pem(password.encode()))
    add = cli(env, "profile", "add", "cert", "--tenant", TENANT, "--client-id", APP, "--scope", GRAPH_SCOPE,
              "--authority", authority.url, "--ca-bundle", str(ca_pem_file), "--credential", "certificate",
              "--certificate-path", str(path), check=True)
    assert "aadhelper secret set cert --certificate-password" in add.stderr
    with DaemonProcess(env):
        missing = cli(env, "token", "cert")
        assert missing.returncode == 3
        assert "`aadhelper secret set cert --certificate-password`" in one_error_line(missing)
        wrong = cli(env, "secret", "set", "cert", "--certificate-password", input="not-" + password + "\n")
        assert wrong.returncode == 3 and "the password is wrong" in one_error_line(wrong)
        stored = cli(env, "secret", "set", "cert", "--certificate-password", input=password + "\n", check=True)
        assert "SHA-256 thumbprint" in stored.stderr and "reloaded" in stored.stderr
        token_of(env, "cert")
        presented(authority)
        assert authority.count(endpoint="token") == 1


@pytest.mark.parametrize("args, code, words", [
    (["profile", "add", "x", "--tenant", TENANT, "--client-id", APP, "--scope", GRAPH_SCOPE, "--x5c"], 2,
     "need --credential certificate"),
    (["profile", "add", "x", "--tenant", TENANT, "--client-id", APP, "--scope", GRAPH_SCOPE, "--user",
      "--credential", "certificate"], 2, "exclude each other"),
    (["secret", "set", "cert", "--password-stdin"], 2, "goes with --certificate FILE"),
    (["secret", "set", "cert", "--certificate-password"], 2, "is for a profile whose certificate is a file"),
    (["secret", "set", "secret-profile", "--certificate", "/dev/null"], 3, "key 'credential' is 'client_secret'"),
    (["secret", "set", "cert", "--certificate", "/nonexistent/x.pem"], 2, "No such file"),
])
def test_certificate_cli_misuse_is_one_line(env: dict[str, str], authority: SimulatedAuthority, ca_pem_file: Path,
                                            args: list[str], code: int, words: str) -> None:
    """If the certificate options are misused (options without the credential kind, a password without a
    certificate, a certificate for a client-secret profile, a missing file), then one line says so."""
    add_certificate_profile(env, authority, ca_pem_file)
    cli(env, "profile", "add", "secret-profile", "--tenant", TENANT, "--client-id", APP, "--scope", GRAPH_SCOPE,
        check=True)
    result = cli(env, *args)
    assert result.returncode == code
    assert words in one_error_line(result)


@pytest.mark.parametrize("command", [["secret", "delete", "cert"], ["profile", "remove", "cert"]])
def test_deleting_removes_the_certificate_from_the_keyring(env: dict[str, str], authority: SimulatedAuthority,
                                                           material: CertificateMaterial, ca_pem_file: Path,
                                                           tmp_path: Path, keyring_entries: Callable[[], set[str]],
                                                           command: list[str]) -> None:
    """If a stored certificate's profile runs `secret delete` or `profile remove`, then its keyring entries are
    gone and the command says it deleted the certificate."""
    add_certificate_profile(env, authority, ca_pem_file)
    pem = tmp_path / "app.pem"
    pem.write_bytes(material.pem())
    cli(env, "secret", "set", "cert", "--certificate", str(pem), check=True)
    assert any(name.startswith("cert/") for name in keyring_entries())
    result = cli(env, *command, check=True)
    assert "certificate" in result.stderr and "deleted" in result.stderr
    assert not any(name.startswith("cert/") for name in keyring_entries())
