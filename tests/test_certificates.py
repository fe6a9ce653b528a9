"""Client certificates: loading PEM and PFX, the one-line errors for bad input, the assertion a certificate signs, and
the simulated authority's check of it (a wrong signature must be refused)."""

from __future__ import annotations

import base64
import json
import os
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes

from aadhelper.certificates import (
    STORED_HEADER,
    ClientCertificate,
    StoredCertificate,
    check_validity,
    load_certificate,
    load_stored_certificate,
    read_certificate_file,
)
from aadhelper.errors import ConfigError
from aadhelper.grants.assertion import sign_assertion
from aadhelper.testing.authority import SimulatedAuthority
from aadhelper.testing.certificates import CertificateMaterial, make_client_certificate
from aadhelper.testing.client_assertions import CertificateCredentials
from aadhelper.testing.directory import Directory
from aadhelper.testing.entra import EntraError
from aadhelper.tokens import Secret

APP = "33333333-0000-0000-0000-000000000001"
ENDPOINT = "https://login.example/contoso.onmicrosoft.com/oauth2/v2.0/token"
PASSWORD = "pfx-Pa55word-" + "x" * 8


@pytest.fixture(scope="module")
def material() -> CertificateMaterial:
    return make_client_certificate(days=365, issued_by_ca=True)


@pytest.fixture(scope="module")
def certificate(material: CertificateMaterial) -> ClientCertificate:
    return load_certificate(material.pem(), source="test")


def segments(assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, claims, _ = assertion.split(".")
    return (json.loads(base64.urlsafe_b64decode(header + "==")), json.loads(base64.urlsafe_b64decode(claims + "==")))


def authority_for(material: CertificateMaterial) -> tuple[CertificateCredentials, Directory]:
    directory = Directory()
    directory.add_tenant("contoso.onmicrosoft.com")
    directory.add_client(APP, tenant="contoso.onmicrosoft.com", secret=None, public=False, resources=(),
                         roles=(), redirect_uris=None, secret_expires_at=None)
    credentials = CertificateCredentials()
    credentials.add(APP, material.certificate_pem)
    return credentials, directory


def verify(credentials: CertificateCredentials, directory: Directory, assertion: str, *,
           now: float | None = None) -> None:
    form = {"client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion}
    credentials.verify(directory.client_by_id(APP), form, audiences=(ENDPOINT,), now=now or time.time())


# -- loading ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["pem key first", "pem key last", "pfx", "pfx with password", "encrypted pem"])
def test_every_input_form_gives_the_leaf_first(material: CertificateMaterial, form: str) -> None:
    """If the key and chain come as PEM in any order or as PFX (with or without a password), then the loaded leaf is
    the certificate matching the key, its issuer follows, and the thumbprints are its SHA-256/SHA-1 fingerprints."""
    data, password = {
        "pem key first": (material.pem(), None), "pem key last": (material.pem(key_last=True), None),
        "pfx": (material.pfx(), None), "pfx with password": (material.pfx(PASSWORD.encode()), PASSWORD),
        "encrypted pem": (material.pem(PASSWORD.encode()), PASSWORD),
    }[form]
    loaded = load_certificate(data, Secret(password) if password else None, source="the file")
    assert loaded.chain == material.chain
    assert loaded.sha256_thumbprint == material.chain[0].fingerprint(hashes.SHA256()).hex().upper()
    assert loaded.sha1_thumbprint == material.chain[0].fingerprint(hashes.SHA1()).hex().upper()


def test_the_keyring_form_loads_back_to_the_same_key(certificate: ClientCertificate) -> None:
    """If a certificate is turned into its keyring text and loaded again, then key and chain are the same."""
    again = load_certificate(certificate.to_pem().reveal().encode(), source="keyring", checked=True)
    assert again.chain == certificate.chain
    assert again.key.private_numbers() == certificate.key.private_numbers()


def test_the_keyring_form_is_signed_from_without_x509_parsing(certificate: ClientCertificate,
                                                              material: CertificateMaterial) -> None:
    """If the fetcher reads the keyring form, then it gets the same key, chain, thumbprints and validity as a full
    parse, without X.509 parsing, and what it signs passes the simulated authority's check."""
    stored = load_stored_certificate(certificate.to_pem().reveal().encode(), source="keyring")
    assert isinstance(stored, StoredCertificate)
    assert stored.chain_der() == certificate.chain_der()
    assert stored.summary() == certificate.summary()
    assert stored.key.private_numbers() == certificate.key.private_numbers()
    for algorithm in ("PS256", "RS256"):
        verify(*authority_for(material), sign_assertion(stored, client_id=APP, audience=ENDPOINT, now=time.time(),
                                                        algorithm=algorithm, x5c=True))
    assert "SHA-256" not in repr(stored) and "PRIVATE" not in repr(stored) and "sha256=" in repr(stored)


def test_signing_from_the_keyring_form_imports_no_x509(certificate: ClientCertificate) -> None:
    """If a fresh interpreter signs an assertion from the keyring form, then cryptography's X.509 module is never
    imported (~12 ms that the first certificate fetch after a daemon start would otherwise pay: bench row 7)."""
    import subprocess
    import sys

    program = ("import sys, time\n"
               "from aadhelper.certificates import load_stored_certificate\n"
               "from aadhelper.grants.assertion import sign_assertion\n"
               "stored = load_stored_certificate(sys.stdin.buffer.read(), source='keyring')\n"
               "sign_assertion(stored, client_id='app', audience='https://a/t', now=time.time())\n"
               "print('cryptography.x509' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", program], input=certificate.to_pem().reveal().encode(),
                            capture_output=True, check=True)
    assert result.stdout.strip() == b"False", result.stderr


def test_a_keyring_entry_without_the_header_or_damaged_is_handled(certificate: ClientCertificate) -> None:
    """If a keyring entry predates the header line, then it is read by a full parse; if its header or armor is
    damaged, then reading it is one ConfigError line that shows none of it."""
    text = certificate.to_pem().reveal()
    old = text.partition("\n")[2].encode()
    assert not old.startswith(STORED_HEADER.encode())
    assert load_stored_certificate(old, source="keyring").summary() == certificate.summary()
    for damaged in (STORED_HEADER + "{not json\n" + text.partition("\n")[2],
                    STORED_HEADER + '{"not_before": 1}\n' + text.partition("\n")[2],
                    text.replace("-----BEGIN CERTIFICATE-----", "-----BEGIN NOTHING-----"),
                    text.replace("PRIVATE KEY-----", "PUBLIC KEY-----")):
        with pytest.raises(ConfigError) as caught:
            load_stored_certificate(damaged.encode(), source="the stored certificate")
        line = caught.value.one_line()
        assert "\n" not in line and "PRIVATE" not in line and "MII" not in line


def unknown_key_type(material: CertificateMaterial) -> bytes:
    """The key and a leaf whose public key algorithm OID (rsaEncryption) was changed to one nobody knows."""
    from cryptography.hazmat.primitives.serialization import Encoding

    der = material.chain[0].public_bytes(Encoding.DER)
    rsa_encryption = bytes.fromhex("06092a864886f70d010101")
    damaged = der.replace(rsa_encryption, rsa_encryption[:-1] + b"\x7f", 1)
    assert damaged != der
    body = base64.encodebytes(damaged).decode()
    return material.key_pem() + f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n".encode()


BAD_INPUTS: dict[str, tuple[Callable[[CertificateMaterial], bytes], str | None, str]] = {
    "pem without key": (lambda m: m.certificate_pem, None, "holds no private key"),
    "key not matching": (lambda m: make_client_certificate().key_pem() + m.certificate_pem, None,
                         "the private key does not match the certificate"),
    "wrong pfx password": (lambda m: m.pfx(PASSWORD.encode()), "wrong-" + PASSWORD, "wrong PFX password"),
    "pfx password missing": (lambda m: m.pfx(PASSWORD.encode()), None, "readable without a password"),
    "encrypted pem without password": (lambda m: m.pem(PASSWORD.encode()), None,
                                       "encrypted private key and no password was given"),
    "encrypted pem, wrong password": (lambda m: m.pem(PASSWORD.encode()), "wrong-" + PASSWORD,
                                      "the password is wrong"),
    "not a certificate": (lambda m: b"just some text\n", None, "neither PEM nor a PFX"),
    "empty": (lambda m: b"\n", None, "is empty"),
    "certificate of an unknown key type": (unknown_key_type, None, "damaged or of an unsupported kind"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_clear_line(material: CertificateMaterial, case: str) -> None:
    """If the input is a PEM without key, a key that does not match, a wrong or missing password, or not a
    certificate at all, then loading fails with one ConfigError line that says so and shows no secret."""
    make, password, expected = BAD_INPUTS[case]
    with pytest.raises(ConfigError) as caught:
        load_certificate(make(material), Secret(password) if password else None, source="the file x.pem")
    line = caught.value.one_line()
    assert expected in line and "\n" not in line
    assert line.startswith("the file x.pem")
    assert PASSWORD not in line and "PRIVATE KEY" not in line


# ids: xdist workers must collect the same test names, and the times differ between them.
@pytest.mark.parametrize("days, not_before, expected", [
    (-1, time.time() - 86400 * 30, "expired on"),
    (365, time.time() + 86400, "is not valid before"),
], ids=["expired", "not-yet-valid"])
def test_certificate_outside_its_validity_is_refused(days: float, not_before: float, expected: str) -> None:
    """If a certificate has expired or is not valid yet, then checking it fails with one line saying which."""
    loaded = load_certificate(make_client_certificate(days=days, not_before=not_before).pem(), source="test")
    with pytest.raises(ConfigError, match=expected):
        check_validity(loaded, time.time(), source="the certificate")


def test_repr_shows_the_thumbprint_never_the_key(certificate: ClientCertificate) -> None:
    """If a certificate reaches a log or a traceback, then its repr shows thumbprint and expiry, not the key."""
    text = repr(certificate)
    assert certificate.sha256_thumbprint in text and "RSA 2048 private key" in text
    key_body = certificate.to_pem().reveal().split("-----")[2].strip().splitlines()[0]
    assert key_body not in text
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(certificate)


@pytest.mark.parametrize("mode, ok", [(0o600, True), (0o400, True), (0o640, False), (0o604, False)])
def test_a_key_file_readable_by_others_is_refused(tmp_path: Path, material: CertificateMaterial, mode: int,
                                                  ok: bool) -> None:
    """If a certificate file with a private key is open to group or others, then reading it fails with a chmod
    hint; the owner alone may read it."""
    path = tmp_path / "app.pem"
    path.write_bytes(material.pem())
    os.chmod(path, mode)
    if ok:
        assert read_certificate_file(str(path)) == material.pem()
    else:
        with pytest.raises(ConfigError, match="open to group or others") as caught:
            read_certificate_file(str(path))
        assert caught.value.hint == f"run `chmod 600 {path}`"


# -- the assertion, checked by the simulated authority ------------------------------------------------------------


def test_assertion_has_msal_header_and_claims(certificate: ClientCertificate, material: CertificateMaterial) -> None:
    """If an assertion is signed, then its header is PS256 with x5t#S256 of the leaf, its claims are aud = the token
    endpoint, iss = sub = the client id, a jti, iat = nbf = now, exp a few minutes on; and the authority accepts it."""
    now = time.time()
    assertion = sign_assertion(certificate, client_id=APP, audience=ENDPOINT, now=now)
    header, claims = segments(assertion)
    digest = material.chain[0].fingerprint(hashes.SHA256())
    assert header == {"typ": "JWT", "alg": "PS256", "x5t#S256": base64.urlsafe_b64encode(digest).decode().rstrip("=")}
    assert claims["aud"] == ENDPOINT and claims["iss"] == claims["sub"] == APP
    assert claims["iat"] == claims["nbf"] == int(now) and claims["exp"] == int(now) + 600
    verify(*authority_for(material), assertion)


def test_every_assertion_is_new(certificate: ClientCertificate) -> None:
    """If two assertions are signed at the same second, then their jti differ (the authority refuses a replay)."""
    first, second = (segments(sign_assertion(certificate, client_id=APP, audience=ENDPOINT, now=1e9))[1]
                     for _ in range(2))
    assert first["jti"] != second["jti"]


def test_rs256_and_x5c_options(certificate: ClientCertificate, material: CertificateMaterial) -> None:
    """If assertion_alg is RS256 and x5c is on, then the header has alg RS256, the SHA-1 x5t and the whole chain
    (leaf first, base64 DER), and the authority accepts it."""
    assertion = sign_assertion(certificate, client_id=APP, audience=ENDPOINT, now=time.time(), algorithm="RS256",
                               x5c=True)
    header, _ = segments(assertion)
    assert header["alg"] == "RS256" and "x5t#S256" not in header
    assert header["x5t"] == base64.urlsafe_b64encode(material.chain[0].fingerprint(hashes.SHA1())).decode().rstrip("=")
    assert [base64.b64decode(c) for c in header["x5c"]] == certificate.chain_der()
    assert len(certificate.chain_der()) == 2
    verify(*authority_for(material), assertion)


def _tamper_signature(assertion: str) -> str:
    head, claims, signature = assertion.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[10] ^= 0x01
    return f"{head}.{claims}.{base64.urlsafe_b64encode(bytes(raw)).decode().rstrip('=')}"


def _tamper_claims(assertion: str) -> str:
    head, _, signature = assertion.split(".")
    claims = base64.urlsafe_b64encode(json.dumps({"aud": ENDPOINT, "iss": APP, "sub": APP, "jti": "x",
                                                  "exp": time.time() + 9999}).encode()).decode().rstrip("=")
    return f"{head}.{claims}.{signature}"


@pytest.mark.parametrize("case, aadsts", [
    ("signature changed", 700027),
    ("claims changed after signing", 700027),
    ("signed by another key", 700027),
    ("client id differs", 700021),
    ("audience differs", 50013),
    ("expired", 700024),
    ("not yet valid", 700024),
    ("replayed", 50013),
    ("not a JWT", 50027),
])
def test_authority_refuses_bad_assertions(certificate: ClientCertificate, material: CertificateMaterial, case: str,
                                          aadsts: int) -> None:
    """If an assertion's signature is wrong, its key unknown, its iss/aud wrong, its time window missed or its jti
    used before, then the simulated authority refuses it with Entra's AADSTS code for that."""
    credentials, directory = authority_for(material)
    now = time.time()

    def signed(**kwargs: object) -> str:
        options: dict[str, object] = {"client_id": APP, "audience": ENDPOINT, "now": now, **kwargs}
        return sign_assertion(certificate, **options)  # type: ignore[arg-type]

    verify_at = now
    if case == "signature changed":
        assertion = _tamper_signature(signed())
    elif case == "claims changed after signing":
        assertion = _tamper_claims(signed())
    elif case == "signed by another key":
        other = load_certificate(make_client_certificate().pem(), source="other")
        assertion = sign_assertion(other, client_id=APP, audience=ENDPOINT, now=now)
    elif case == "client id differs":
        assertion = signed(client_id="someone-else")
    elif case == "audience differs":
        assertion = signed(audience="https://login.example/other/oauth2/v2.0/token")
    elif case == "expired":
        assertion, verify_at = signed(), now + 600 + 301
    elif case == "not yet valid":
        assertion, verify_at = signed(), now - 301
    elif case == "replayed":
        assertion = signed()
        verify(credentials, directory, assertion, now=now)
    else:
        assertion = "not.a.jwt"
    with pytest.raises(EntraError) as caught:
        verify(credentials, directory, assertion, now=verify_at)
    assert caught.value.aadsts == aadsts
    assert caught.value.error == ("invalid_request" if aadsts == 50027 else "invalid_client")


def test_authority_accepts_what_msal_signs(material: CertificateMaterial) -> None:
    """If the real MSAL signs an assertion with the same certificate (its padded x5t#S256, no nbf), then the
    simulated authority accepts it: the check is Entra's rule, not our signer's habits."""
    from msal.oauth2cli.assertion import JwtAssertionCreator

    creator = JwtAssertionCreator(material.key_pem().decode(), "PS256",
                                  sha256_thumbprint=material.chain[0].fingerprint(hashes.SHA256()).hex())
    assertion = creator.create_normal_assertion(audience=ENDPOINT, issuer=APP).decode()
    assert segments(assertion)[0]["x5t#S256"].endswith("=")
    verify(*authority_for(material), assertion)


# -- configuration ------------------------------------------------------------------------------------------------

PROFILE = """[profiles.p]
tenant = "contoso.onmicrosoft.com"
client_id = "11111111-2222-3333-4444-555555555555"
scopes = ["https://graph.microsoft.com/.default"]
"""


def test_certificate_profile_settings_are_parsed() -> None:
    """If a profile has credential certificate with certificate_path (~/), x5c and assertion_alg, then they reach
    the profile (and the fetcher's channel) as given, defaults PS256 without x5c, keyring storage."""
    from aadhelper.config import CertificateSettings, parse_config
    from aadhelper.fetcher.wire import profile_from_wire, profile_to_wire

    text = PROFILE + 'credential = "certificate"\ncertificate_path = "~/app.pem"\nx5c = true\nassertion_alg = "RS256"\n'
    profile = parse_config(text, "c.toml", {"HOME": "/home/me"}).profile("p")
    assert profile.certificate == CertificateSettings("/home/me/app.pem", True, "RS256")
    assert profile_from_wire(profile_to_wire(profile), profile.scopes) == profile
    plain = parse_config(PROFILE + 'credential = "certificate"\n', "c.toml", {}).profile("p")
    assert plain.certificate == CertificateSettings(None, False, "PS256")
    assert plain.git_username() == plain.client_id


@pytest.mark.parametrize("extra, key, words", [
    ('x5c = true\n', "x5c", "applies to credential 'certificate' only"),
    ('credential = "certificate"\nassertion_alg = "HS256"\n', "assertion_alg", "PS256, RS256"),
    ('credential = "certificate"\ncertificate_path = "app.pem"\n', "certificate_path", "absolute path"),
    ('credential = "certificate"\nx5c = "yes"\n', "x5c", "true or false"),
])
def test_bad_certificate_settings_are_one_line(extra: str, key: str, words: str) -> None:
    """If a certificate setting is wrong or set for another credential kind, then the one-line ConfigError names
    the file, the profile and the key."""
    from aadhelper.config import parse_config

    with pytest.raises(ConfigError) as caught:
        parse_config(PROFILE + extra, "c.toml", {})
    line = caught.value.one_line()
    assert line.startswith("c.toml: profile 'p': key ") and f"'{key}'" in line and words in line


def test_certificate_profile_needs_a_real_tenant() -> None:
    """If a certificate profile names the tenant 'common', then the config is refused (AADSTS9001023 otherwise)."""
    from aadhelper.config import parse_config

    with pytest.raises(ConfigError, match="AADSTS9001023"):
        parse_config(PROFILE.replace("contoso.onmicrosoft.com", "common") + 'credential = "certificate"\n', "c", {})


def test_damaged_input_is_always_a_config_error(material: CertificateMaterial) -> None:
    """If PEM or PFX input is cut, spliced or has bytes changed (1500 seeded variants), then loading it either
    succeeds or fails with a ConfigError: nothing else escapes to crash the CLI or the fetcher."""
    import random

    samples = [material.pem(), material.pem(b"pw"), material.pfx(), material.pfx(b"pw"), material.certificate_pem]
    rnd = random.Random(20261130)
    for _ in range(1500):
        data = bytearray(rnd.choice(samples))
        change = rnd.randrange(3)
        if change == 0:
            data = data[:rnd.randrange(len(data))]
        elif change == 1:
            for _ in range(rnd.randrange(1, 5)):
                data[rnd.randrange(len(data))] = rnd.randrange(256)
        else:
            data = data[:rnd.randrange(len(data))] + data[rnd.randrange(len(data)):]
        password = rnd.choice([None, Secret("pw"), Secret("other")])
        try:
            loaded = load_certificate(bytes(data), password, source="f", checked=rnd.random() < 0.5)
        except ConfigError:
            continue
        repr(loaded)
        loaded.to_pem()


def test_real_msal_gets_a_token_from_the_simulated_authority(material: CertificateMaterial,
                                                             server_ssl_context: ssl.SSLContext, ca_pem_file: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """If the real MSAL (ConfidentialClientApplication with a private key and public certificate, so PS256 with
    x5t#S256 and an x5c of PEM lines) asks the simulated authority over HTTPS for a token, then it gets one: the
    simulated checks accept what Entra accepts from MSAL."""
    import msal

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_pem_file))
    with SimulatedAuthority(ssl_context=server_ssl_context) as authority:
        authority.add_tenant("contoso.onmicrosoft.com")
        authority.add_client(APP, tenant="contoso.onmicrosoft.com")
        authority.add_client_certificate(APP, material.certificate_pem)
        app = msal.ConfidentialClientApplication(
            APP, authority=f"{authority.url}/contoso.onmicrosoft.com", instance_discovery=False,
            client_credential={"private_key": material.key_pem().decode(),
                               "public_certificate": material.certificate_pem.decode()})
        result = app.acquire_token_for_client(["https://graph.microsoft.com/.default"])
        assert "access_token" in result, result.get("error_description")
        assert authority.validate(result["access_token"])["appid"] == APP
        (assertion,) = authority.presented_assertions()
        assert "x5c" in segments(assertion)[0]


async def test_a_certificate_file_is_loaded_off_the_event_loop(material: CertificateMaterial, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """If a profile's certificate is a file, then the fetcher parses it in a worker thread (a full parse includes
    cryptography's ~40 ms RSA key check, which would hold up every other profile's fetch on the loop)."""
    import threading

    import httpx

    from aadhelper.config import CertificateSettings, Profile
    from aadhelper.grants import certificate as certificate_source

    path = tmp_path / "app.pem"
    path.write_bytes(material.pem())
    path.chmod(0o600)
    on_loop_thread: list[bool] = []
    real = load_certificate

    def spy(*args: Any, **kwargs: Any) -> ClientCertificate:
        on_loop_thread.append(threading.current_thread() is threading.main_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(certificate_source, "load_certificate", spy)
    profile = Profile(name="app", tenant="contoso.onmicrosoft.com", client_id=APP, scopes=("x/.default",),
                      authority="https://login.example", credential="certificate",
                      certificate=CertificateSettings(path=str(path)))
    class NoSecrets:
        async def get(self, profile: str, kind: str) -> Secret | None:
            raise AssertionError("an unencrypted file needs nothing from the keyring")

        async def set(self, profile: str, kind: str, value: Secret) -> None:
            raise AssertionError("nothing is stored")

    async with httpx.AsyncClient() as client:
        source = certificate_source.CertificateSource(profile, client=client, secrets=NoSecrets(), clock=time.time)
        loaded = await source.certificate()
    assert loaded.summary() == load_certificate(material.pem(), source="x").summary()
    assert on_loop_thread == [False]
