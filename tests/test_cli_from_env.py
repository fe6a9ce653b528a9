"""`aadhelper profile add NAME --from-env`: a profile from azure-identity's variables, each combination, with the
secret in the real Secret Service and never in the config file, and a token end to end from what it wrote."""

from __future__ import annotations

import secrets
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aadhelper.cli.from_env import from_environment
from aadhelper.errors import UsageError
from aadhelper.secret_store import KeyringSecretStore
from aadhelper.testing.authority import SimulatedAuthority
from aadhelper.testing.certificates import CertificateMaterial, make_client_certificate
from aadhelper.tokens import Secret
from tests.harness import APP, GRAPH_SCOPE, TENANT, DaemonProcess, cli, one_error_line, sensitive, token_of

SECRET = "from-env-secret-Zq8~v1"
IDS = {"AZURE_TENANT_ID": TENANT, "AZURE_CLIENT_ID": APP}


@pytest.mark.parametrize("extra, credential, used, unset", [
    ({"AZURE_CLIENT_SECRET": "sekrit-1"}, "client_secret", ["AZURE_CLIENT_SECRET"], ["AZURE_CLIENT_SECRET"]),
    ({"AZURE_FEDERATED_TOKEN_FILE": "/var/run/secrets/azure/tokens/azure-identity-token"}, "federated",
     ["AZURE_FEDERATED_TOKEN_FILE"], []),
    ({"AZURE_CLIENT_CERTIFICATE_PATH": "/etc/app/cert.pfx"}, "certificate", ["AZURE_CLIENT_CERTIFICATE_PATH"],
     ["AZURE_CLIENT_CERTIFICATE_PATH"]),
    ({"AZURE_CLIENT_CERTIFICATE_PATH": "/etc/app/cert.pfx", "AZURE_CLIENT_CERTIFICATE_PASSWORD": "pfx-pass-2",
      "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN": "true"}, "certificate",
     ["AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_CLIENT_CERTIFICATE_PASSWORD", "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN"],
     ["AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_CLIENT_CERTIFICATE_PASSWORD"]),
    # azure-identity's order: the secret first, then the certificate, then the federated token file.
    ({"AZURE_CLIENT_SECRET": "sekrit-1", "AZURE_CLIENT_CERTIFICATE_PATH": "/c.pem", "AZURE_FEDERATED_TOKEN_FILE": "/t"},
     "client_secret", ["AZURE_CLIENT_SECRET"], ["AZURE_CLIENT_SECRET"]),
    ({"AZURE_CLIENT_CERTIFICATE_PATH": "/c.pem", "AZURE_FEDERATED_TOKEN_FILE": "/t"}, "certificate",
     ["AZURE_CLIENT_CERTIFICATE_PATH"], ["AZURE_CLIENT_CERTIFICATE_PATH"]),
])
def test_each_variable_combination_picks_azure_identitys_credential(extra: dict[str, str], credential: str,
                                                                   used: list[str], unset: list[str]) -> None:
    """If AZURE_* variables describe an app, then the profile's credential is the one azure-identity's
    EnvironmentCredential (then WorkloadIdentityCredential) would pick, and the variables used and the secret ones
    to unset are named."""
    found = from_environment({**IDS, **extra})
    assert (found.tenant, found.client_id, found.credential) == (TENANT, APP, credential)
    assert list(found.used) == ["AZURE_TENANT_ID", "AZURE_CLIENT_ID", *used]
    assert list(found.secret_variables) == unset
    assert set(found.ignored) == set(extra) - set(used) - {"AZURE_CLIENT_CERTIFICATE_PASSWORD"}
    assert not any(extra[name] in repr(found) for name in unset if name != "AZURE_CLIENT_CERTIFICATE_PATH")


@pytest.mark.parametrize("environ, words", [
    ({"AZURE_CLIENT_ID": APP, "AZURE_CLIENT_SECRET": "sekrit-1"}, "AZURE_TENANT_ID is not set"),
    ({"AZURE_TENANT_ID": TENANT, "AZURE_CLIENT_SECRET": "sekrit-1"}, "AZURE_CLIENT_ID is not set"),
    (IDS, "none of AZURE_CLIENT_SECRET, AZURE_CLIENT_CERTIFICATE_PATH, AZURE_FEDERATED_TOKEN_FILE is set"),
    ({**IDS, "AZURE_CLIENT_SECRET": "", "AZURE_FEDERATED_TOKEN_FILE": "/t"}, "AZURE_CLIENT_SECRET is set but empty"),
    ({**IDS, "AZURE_CLIENT_SECRET": "sekrit-1", "AZURE_AUTHORITY_HOST": "http://login.example.com"}, "must use https://"),
])
def test_an_incomplete_environment_is_one_clear_error(environ: dict[str, str], words: str) -> None:
    """If a variable the profile needs is missing, empty or wrong, then the error names it."""
    with pytest.raises(UsageError, match=words):
        from_environment(environ)


def test_authority_host_without_scheme_means_https() -> None:
    """If AZURE_AUTHORITY_HOST is a bare host, then the profile's authority is https:// on it (azure-identity's
    rule)."""
    found = from_environment({**IDS, "AZURE_CLIENT_SECRET": "sekrit-1",
                              "AZURE_AUTHORITY_HOST": "login.microsoftonline.us"})
    assert found.authority == "https://login.microsoftonline.us"
    assert "AZURE_AUTHORITY_HOST" in found.used


@pytest.fixture
def authority(server_ssl_context: ssl.SSLContext) -> Iterator[SimulatedAuthority]:
    with SimulatedAuthority(ssl_context=server_ssl_context) as authority:
        authority.add_tenant(TENANT)
        authority.add_client(APP, tenant=TENANT, secret=SECRET)
        yield authority


@pytest.mark.requires("secret-service")
def test_from_env_stores_the_secret_in_the_keyring_never_in_the_config(
        isolated_env: dict[str, str], authority: SimulatedAuthority, ca_pem_file: Path,
        secret_service: KeyringSecretStore) -> None:
    """If `profile add --from-env` runs with AZURE_CLIENT_SECRET set, then the secret is in the Secret Service and
    nowhere in the config file, the output names the variables used and says the secret one may be unset, and the
    daemon gets a token with what was written (authority from AZURE_AUTHORITY_HOST)."""
    sensitive(SECRET)
    env = {key: value for key, value in isolated_env.items() if not key.startswith("AZURE_")}
    env.update(AADHELPER_NO_AUTOSTART="1", AZURE_TENANT_ID=TENANT, AZURE_CLIENT_ID=APP, AZURE_CLIENT_SECRET=SECRET,
               AZURE_AUTHORITY_HOST=authority.url)
    added = cli(env, "profile", "add", "app", "--from-env", "--scope", GRAPH_SCOPE, "--ca-bundle", str(ca_pem_file))
    assert added.returncode == 0, added.stderr
    assert "from AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_AUTHORITY_HOST, AZURE_CLIENT_SECRET" in added.stderr
    assert "you may unset AZURE_CLIENT_SECRET" in added.stderr
    config = Path(env["AADHELPER_CONFIG"]).read_text()
    assert SECRET not in config and 'credential = "client_secret"' in config and authority.url in config
    assert secret_service.get("app", "client_secret") == Secret(SECRET)
    clean = {key: value for key, value in env.items() if not key.startswith("AZURE_")}
    with DaemonProcess(clean):
        assert authority.validate(token_of(clean, "app"))["appid"] == APP


@pytest.mark.requires("secret-service")
def test_from_env_federated_writes_the_token_file_and_stores_nothing(
        isolated_env: dict[str, str], secret_service: KeyringSecretStore, tmp_path: Path) -> None:
    """If `profile add --from-env` runs with AZURE_FEDERATED_TOKEN_FILE set, then the profile is federated with that
    file written out (the daemon need not have the variable), and nothing goes to the keyring."""
    env = {key: value for key, value in isolated_env.items() if not key.startswith("AZURE_")}
    token_file = tmp_path / "token"
    token_file.write_text("x.y.z")
    env.update(AADHELPER_NO_AUTOSTART="1", AZURE_TENANT_ID=TENANT, AZURE_CLIENT_ID=APP,
               AZURE_FEDERATED_TOKEN_FILE=str(token_file))
    added = cli(env, "profile", "add", "wi", "--from-env", "--scope", GRAPH_SCOPE)
    assert added.returncode == 0, added.stderr
    assert "added profile 'wi' (federated)" in added.stderr and "unset" not in added.stderr
    assert f'token_file = "{token_file}"' in Path(env["AADHELPER_CONFIG"]).read_text()
    assert secret_service.get("wi", "client_secret") is None


@pytest.mark.parametrize("args, words", [
    (["--tenant", TENANT], "--from-env takes the tenant, client id and credential from AZURE_*; drop --tenant"),
    (["--credential", "federated"], "drop --credential"),
    (["--assertion-alg", "RS256"], "drop --assertion-alg"),
    (["--x5c"], "drop --x5c"),
    (["--source", "imds"], "drop --source"),
    (["--keep-path"], "--keep-path is for a certificate"),
])
def test_from_env_with_conflicting_options_is_one_line(isolated_env: dict[str, str], args: list[str],
                                                       words: str) -> None:
    """If --from-env comes with options it replaces, then one line says which to drop (exit 2), and no profile is
    written."""
    env = {key: value for key, value in isolated_env.items() if not key.startswith("AZURE_")}
    env.update(AADHELPER_NO_AUTOSTART="1", AADHELPER_SECRET_STORE="memory", AZURE_CLIENT_SECRET="s", **IDS)
    result = cli(env, "profile", "add", "x", "--from-env", "--scope", GRAPH_SCOPE, *args)
    assert result.returncode == 2
    assert words in one_error_line(result)
    assert not Path(env["AADHELPER_CONFIG"]).exists()


# -- certificates (AZURE_CLIENT_CERTIFICATE_PATH) ---------------------------------------------------------------

CERT_APP = "44444444-0000-0000-0000-000000000002"


@pytest.fixture(scope="module")
def material() -> CertificateMaterial:
    return make_client_certificate(days=365)


@pytest.fixture
def cert_env(isolated_env: dict[str, str], server_ssl_context: ssl.SSLContext, ca_pem_file: Path,
             material: CertificateMaterial, secret_service: KeyringSecretStore) -> Iterator[
                 tuple[dict[str, str], SimulatedAuthority]]:
    """AZURE_* of CERT_APP (certificate uploaded) against the simulated authority; the key joins the leak check."""
    sensitive(*(line for line in material.key_pem().decode().splitlines() if not line.startswith("-----")))
    env = {key: value for key, value in isolated_env.items() if not key.startswith("AZURE_")}
    with SimulatedAuthority(ssl_context=server_ssl_context) as authority:
        authority.add_tenant(TENANT)
        authority.add_client(CERT_APP, tenant=TENANT)
        authority.add_client_certificate(CERT_APP, material.certificate_pem)
        env.update(AADHELPER_NO_AUTOSTART="1", AZURE_TENANT_ID=TENANT, AZURE_CLIENT_ID=CERT_APP,
                   AZURE_AUTHORITY_HOST=authority.url)
        yield env, authority


def add_from_env(env: dict[str, str], ca: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return cli(env, "profile", "add", "app", "--from-env", "--scope", GRAPH_SCOPE, "--ca-bundle", str(ca), *options)


def without_azure(env: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in env.items() if not key.startswith("AZURE_")}


def test_from_env_certificate_goes_to_the_keyring_with_its_password_used_once(
        cert_env: tuple[dict[str, str], SimulatedAuthority], material: CertificateMaterial, ca_pem_file: Path,
        tmp_path: Path, secret_service: KeyringSecretStore) -> None:
    """If AZURE_CLIENT_CERTIFICATE_PATH names a password-protected PFX (password in
    AZURE_CLIENT_CERTIFICATE_PASSWORD), then the key and chain go to the Secret Service (the config names neither
    the file nor the password), both variables may be unset, x5c follows AZURE_CLIENT_SEND_CERTIFICATE_CHAIN, and
    the daemon gets a token with the certificate."""
    env, authority = cert_env
    password = "pfx-pass-" + secrets.token_urlsafe(8)
    sensitive(password)
    pfx = tmp_path / "app.pfx"
    pfx.write_bytes(material.pfx(password.encode()))
    env.update(AZURE_CLIENT_CERTIFICATE_PATH=str(pfx), AZURE_CLIENT_CERTIFICATE_PASSWORD=password,
               AZURE_CLIENT_SEND_CERTIFICATE_CHAIN="1")
    added = add_from_env(env, ca_pem_file)
    assert added.returncode == 0, added.stderr
    assert "AZURE_CLIENT_CERTIFICATE_PATH, AZURE_CLIENT_CERTIFICATE_PASSWORD" in added.stderr
    assert "you may unset AZURE_CLIENT_CERTIFICATE_PATH AZURE_CLIENT_CERTIFICATE_PASSWORD" in added.stderr
    assert "SHA-1 thumbprint" in added.stderr
    config = Path(env["AADHELPER_CONFIG"]).read_text()
    assert password not in config and "certificate_path" not in config and "x5c = true" in config
    assert secret_service.get("app", "certificate") is not None
    assert secret_service.get("app", "certificate_password") is None
    with DaemonProcess(without_azure(env)):
        assert authority.validate(token_of(without_azure(env), "app"))["appid"] == CERT_APP


def test_from_env_keep_path_references_the_file_and_stores_only_its_password(
        cert_env: tuple[dict[str, str], SimulatedAuthority], material: CertificateMaterial, ca_pem_file: Path,
        tmp_path: Path, secret_service: KeyringSecretStore) -> None:
    """If --keep-path is given for an encrypted PEM file, then the profile's certificate_path names the file, only
    its password goes to the Secret Service, only the password variable may be unset, and tokens work."""
    env, authority = cert_env
    password = "pem-pass-" + secrets.token_urlsafe(8)
    sensitive(password)
    pem = tmp_path / "app.pem"
    pem.write_bytes(material.pem(password.encode()))
    pem.chmod(0o600)
    env.update(AZURE_CLIENT_CERTIFICATE_PATH=str(pem), AZURE_CLIENT_CERTIFICATE_PASSWORD=password)
    added = add_from_env(env, ca_pem_file, "--keep-path")
    assert added.returncode == 0, added.stderr
    assert "you may unset AZURE_CLIENT_CERTIFICATE_PASSWORD (" in added.stderr
    config = Path(env["AADHELPER_CONFIG"]).read_text()
    assert f'certificate_path = "{pem}"' in config and password not in config
    assert secret_service.get("app", "certificate") is None
    assert secret_service.get("app", "certificate_password") == Secret(password)
    with DaemonProcess(without_azure(env)):
        assert authority.validate(token_of(without_azure(env), "app"))["appid"] == CERT_APP


def test_from_env_wrong_certificate_password_stores_nothing(
        cert_env: tuple[dict[str, str], SimulatedAuthority], material: CertificateMaterial, ca_pem_file: Path,
        tmp_path: Path, keyring_entries: Callable[[], set[str]]) -> None:
    """If AZURE_CLIENT_CERTIFICATE_PASSWORD does not open the PFX, then one line says so (exit 3), and neither a
    profile nor a keyring entry is written."""
    env, _ = cert_env
    pfx = tmp_path / "app.pfx"
    pfx.write_bytes(material.pfx(b"right-password"))
    env.update(AZURE_CLIENT_CERTIFICATE_PATH=str(pfx), AZURE_CLIENT_CERTIFICATE_PASSWORD="wrong-password")
    before = keyring_entries()
    result = add_from_env(env, ca_pem_file)
    assert result.returncode == 3
    assert "AZURE_CLIENT_CERTIFICATE_PATH" in one_error_line(result)
    assert not Path(env["AADHELPER_CONFIG"]).exists()
    assert keyring_entries() == before
