"""Client certificates: load a private key with its certificate chain, check them, and describe them safely.

Input is what users and Azure tooling hand around: PEM (the private key and one or more certificates, in any order,
the key optionally encrypted) or PKCS#12/PFX (optionally password-protected). Parsing is cryptography's
(``load_pem_*``, ``pkcs12``): no ASN.1 is read here. :func:`load_certificate` returns a :class:`ClientCertificate`
whose leaf is the certificate matching the key, followed by the rest of the chain; every problem is one
:class:`~aadhelper.errors.ConfigError` line naming where the input came from and never containing it:
a PEM without a key, a key that matches no certificate, a wrong PFX password, an encrypted PEM without a password,
a non-RSA key (Entra's client assertions are PS256/RS256), and (:func:`check_validity`) a certificate not yet valid
or expired.

What is stored in the keyring (:func:`ClientCertificate.to_pem`) is the key as unencrypted PKCS#8 followed by the
chain, whatever the input was: the keyring is the protection, and the fetcher then needs no password. Its first line
(:data:`STORED_HEADER`, outside the PEM armor, which PEM readers skip) records what the fetcher needs to know about
the leaf: validity and subject. :func:`load_stored_certificate` then reads the entry with no X.509 parsing at all: the
key through cryptography, the chain's DER straight out of the PEM armor (base64, RFC 7468), thumbprints with
hashlib. Importing ``cryptography.x509`` costs ~12 ms on the development machine (its primitives ~5 ms), which the
first certificate fetch after the daemon starts would otherwise add to bench row 7 (start to first token).
:func:`read_certificate_file` reads a certificate deployed as a file (``certificate_path``), refusing one that others
can read. :func:`store_certificate` is the one way a certificate gets into the keyring (``aadhelper secret set NAME
--certificate FILE``, ``profile add --from-env``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .errors import ConfigError
from .secret_chunks import CERTIFICATE, CERTIFICATE_PASSWORD
from .tokens import Secret

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

#: The first line of a keyring entry written by :meth:`ClientCertificate.to_pem`, followed by a JSON object
#: (``not_before``, ``not_after``: epoch seconds; ``subject``): see :func:`load_stored_certificate`.
STORED_HEADER = "aadhelper-certificate "
_CERTIFICATE_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n(.*?)-----END CERTIFICATE-----", re.DOTALL)
#: A certificate closer than this to its expiry is warned about (status, the daemon's log).
EXPIRY_WARNING_DAYS = 30
#: The largest certificate file read: real ones are a few KiB.
MAX_CERTIFICATE_BYTES = 1024 * 1024
_PEM_MARK = b"-----BEGIN "


class SigningCertificate(Protocol):
    """What signing a client assertion needs (:func:`aadhelper.grants.assertion.sign_assertion`): the key, the
    leaf's fingerprints and the chain's DER. :class:`ClientCertificate` and :class:`StoredCertificate` are both."""

    @property
    def key(self) -> RSAPrivateKey: ...

    def leaf_digest(self, name: str) -> bytes: ...

    def chain_der(self) -> list[bytes]: ...

    def summary(self) -> CertificateSummary: ...


class PasswordNeeded(ConfigError):
    """The input is encrypted (a PEM key or a PFX) and no password was given: the CLI then asks for one. Travels as a
    plain ``config`` error."""


@dataclass(frozen=True, repr=False)
class ClientCertificate:
    """An RSA private key and its certificate chain (``chain[0]`` is the leaf, the one matching the key)."""

    key: RSAPrivateKey
    chain: tuple[x509.Certificate, ...]

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def sha256_thumbprint(self) -> str:
        """SHA-256 of the leaf's DER, upper-case hex (as the Entra portal shows it)."""
        return self.leaf_digest("sha256").hex().upper()

    @property
    def sha1_thumbprint(self) -> str:
        return self.leaf_digest("sha1").hex().upper()

    def leaf_digest(self, name: str) -> bytes:
        """The leaf's fingerprint with hash ``name`` (``sha256``, ``sha1``): what ``x5t#S256``/``x5t`` carry."""
        from cryptography.hazmat.primitives import hashes

        algorithm = hashes.SHA256() if name == "sha256" else hashes.SHA1()
        return self.leaf.fingerprint(algorithm)

    @property
    def not_before(self) -> float:
        return self.leaf.not_valid_before_utc.timestamp()

    @property
    def not_after(self) -> float:
        return self.leaf.not_valid_after_utc.timestamp()

    @property
    def subject(self) -> str:
        return self.leaf.subject.rfc4514_string()

    def chain_der(self) -> list[bytes]:
        """The chain as DER, leaf first (what ``x5c`` carries, base64)."""
        from cryptography.hazmat.primitives.serialization import Encoding

        return [cert.public_bytes(Encoding.DER) for cert in self.chain]

    def to_pem(self) -> Secret:
        """The key (unencrypted PKCS#8) and the chain as one PEM text after :data:`STORED_HEADER`'s line: the form
        kept in the keyring."""
        from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

        header = STORED_HEADER + json.dumps({"not_before": self.not_before, "not_after": self.not_after,
                                             "subject": self.subject}, ensure_ascii=True) + "\n"
        key = self.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        certs = b"".join(cert.public_bytes(Encoding.PEM) for cert in self.chain)
        return Secret(header + (key + certs).decode("ascii"))

    def summary(self) -> CertificateSummary:
        return CertificateSummary(self.sha256_thumbprint, self.subject, self.not_before, self.not_after,
                                  len(self.chain), self.sha1_thumbprint)

    def __repr__(self) -> str:
        return (f"ClientCertificate(sha256={self.sha256_thumbprint}, subject={self.subject!r}, "
                f"expires={_date(self.not_after)}, key=<RSA {self.key.key_size} private key>)")

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("a ClientCertificate is not picklable")


@dataclass(frozen=True, repr=False)
class StoredCertificate:
    """A keyring entry read without X.509 parsing (:func:`load_stored_certificate`): the key, the chain's DER
    (leaf first) and what :data:`STORED_HEADER` recorded about the leaf when it was checked and stored."""

    key: RSAPrivateKey
    chain: tuple[bytes, ...]
    not_before: float
    not_after: float
    subject: str

    def leaf_digest(self, name: str) -> bytes:
        return hashlib.new(name, self.chain[0]).digest()

    def chain_der(self) -> list[bytes]:
        return list(self.chain)

    def summary(self) -> CertificateSummary:
        return CertificateSummary(self.leaf_digest("sha256").hex().upper(), self.subject, self.not_before,
                                  self.not_after, len(self.chain), self.leaf_digest("sha1").hex().upper())

    def __repr__(self) -> str:
        return (f"StoredCertificate(sha256={self.leaf_digest('sha256').hex().upper()}, subject={self.subject!r}, "
                f"expires={_date(self.not_after)}, key=<RSA {self.key.key_size} private key>)")

    __str__ = __repr__


def load_stored_certificate(data: bytes, *, source: str) -> SigningCertificate:
    """A keyring entry written by :meth:`ClientCertificate.to_pem` (checked when stored), for signing.

    With :data:`STORED_HEADER`'s line, nothing is parsed as X.509 (see the module docstring); an entry without it
    (stored by an earlier version) is read with :func:`load_certificate`. The key's consistency check is skipped
    either way: it passed when the entry was stored."""
    if not data.startswith(STORED_HEADER.encode()):
        return load_certificate(data, source=source, checked=True)
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    line, _, _ = data.partition(b"\n")
    try:
        facts = json.loads(line[len(STORED_HEADER):])
        not_before, not_after, subject = float(facts["not_before"]), float(facts["not_after"]), str(facts["subject"])
        chain = tuple(base64.b64decode(body, validate=False) for body in _CERTIFICATE_BLOCK.findall(data))
        key = load_pem_private_key(data, None, unsafe_skip_rsa_key_validation=True)
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise ConfigError(f"{source} is damaged", hint="store it again with `aadhelper secret set NAME "
                                                       "--certificate FILE`") from None
    if not chain:
        raise ConfigError(f"{source} holds no certificate", hint="store it again with `aadhelper secret set NAME "
                                                                 "--certificate FILE`")
    return StoredCertificate(_rsa(key, source), chain, not_before, not_after, subject)


@dataclass(frozen=True)
class CertificateSummary:
    """What may be shown of a certificate (nothing in it is secret): for the CLI and ``status``."""

    sha256_thumbprint: str
    subject: str
    not_before: float
    not_after: float
    chain_length: int
    #: What the Entra portal lists as the certificate's "Thumbprint".
    sha1_thumbprint: str = ""

    @property
    def expires(self) -> str:
        """The expiry, readable: ``2027-01-31 12:00 UTC``."""
        return _date(self.not_after)

    def days_left(self, now: float) -> float:
        return (self.not_after - now) / 86400

    def expiring(self, now: float) -> bool:
        """Valid now, but for less than :data:`EXPIRY_WARNING_DAYS` more days."""
        return now < self.not_after and self.days_left(now) < EXPIRY_WARNING_DAYS

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CertificateSummary:
        """The inverse of :meth:`as_dict`; ValueError when malformed."""
        try:
            return cls(str(data["sha256_thumbprint"]), str(data["subject"]), float(data["not_before"]),
                       float(data["not_after"]), int(data["chain_length"]), str(data.get("sha1_thumbprint", "")))
        except (KeyError, TypeError, ValueError):
            raise ValueError("malformed certificate summary") from None

    def as_dict(self) -> dict[str, object]:
        return {"sha256_thumbprint": self.sha256_thumbprint, "sha1_thumbprint": self.sha1_thumbprint,
                "subject": self.subject,
                "not_before": int(self.not_before), "not_after": int(self.not_after),
                "chain_length": self.chain_length}

    def describe(self, now: float) -> str:
        """One line: the thumbprint and the expiry, with a warning or the error when there is one."""
        line = f"certificate SHA-256 {self.sha256_thumbprint}, expires {self.expires}"
        if now >= self.not_after:
            return f"{line} (EXPIRED)"
        if now < self.not_before:
            return f"{line} (not valid before {_date(self.not_before)})"
        if self.expiring(now):
            return f"{line} (warning: expires in {self.days_left(now):.0f} days: upload a new one)"
        return f"{line} ({self.days_left(now):.0f} days left)"


def load_certificate(data: bytes, password: Secret | None = None, *, source: str,
                     checked: bool = False) -> ClientCertificate:
    """The key and chain in ``data`` (PEM, or PKCS#12/PFX); ``source`` names it in messages ("file x.pem").

    ``checked``: the key is our own copy of one checked before (the keyring's, written by :func:`store_certificate`),
    so cryptography's RSA key consistency check (~40 ms, a third of a refresh) is skipped for it."""
    from cryptography.exceptions import UnsupportedAlgorithm

    if not data.strip():
        raise ConfigError(f"{source} is empty")
    try:
        if _PEM_MARK in data:
            key, certs = _load_pem(data, password, source, checked)
        else:
            key, certs = _load_pkcs12(data, password, source)
        certificate = ClientCertificate(key, _order_chain(key, certs, source))
        certificate.summary()  # cryptography parses some fields on first use: a damaged one fails here, not later
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # What the steps above did not name: a damaged certificate (its subject, its public key's algorithm...).
        raise ConfigError(f"{source}: a certificate in it is damaged or of an unsupported kind") from None
    return certificate


def check_validity(certificate: ClientCertificate | CertificateSummary, now: float, *, source: str,
                   profile: str | None = None, fix: str | None = None) -> None:
    """Refuse a certificate outside its validity period (Entra would refuse its assertions, AADSTS700027)."""
    summary = certificate if isinstance(certificate, CertificateSummary) else certificate.summary()
    hint = fix or "upload a new certificate to the app registration and store it"
    if now >= summary.not_after:
        raise ConfigError(f"{source} (SHA-256 {summary.sha256_thumbprint}) expired on {_date(summary.not_after)}",
                          profile=profile, hint=hint)
    if now < summary.not_before:
        raise ConfigError(f"{source} (SHA-256 {summary.sha256_thumbprint}) is not valid before "
                          f"{_date(summary.not_before)}", profile=profile, hint="check the clock, or wait")


def read_certificate_file(path: str) -> bytes:
    """A certificate file's bytes; refuses a file that is not regular, not the user's, or readable by others."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot read the certificate file {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"the certificate file {path} is not a regular file")
        if info.st_uid not in (os.getuid(), 0):
            raise ConfigError(f"the certificate file {path} belongs to uid {info.st_uid}, not to you; refusing "
                              "to use its private key")
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"the certificate file {path} holds a private key and is open to group or others "
                              f"(mode {stat.S_IMODE(info.st_mode):o}); refusing to use it",
                              hint=f"run `chmod 600 {path}`")
        data = os.read(fd, MAX_CERTIFICATE_BYTES + 1)
        if len(data) > MAX_CERTIFICATE_BYTES:
            raise ConfigError(f"the certificate file {path} is over {MAX_CERTIFICATE_BYTES} bytes; is it the "
                              "right file?")
        return data
    except OSError as exc:
        raise ConfigError(f"cannot read the certificate file {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def store_certificate(profile_name: str, pem_or_pfx_bytes: bytes, password: Secret | str | None,
                      *, now: float | None = None) -> CertificateSummary:
    """Check a certificate (PEM or PFX) and store its key and chain in the keyring as profile ``profile_name``'s.

    Nothing is stored when the input is bad (any :class:`ConfigError` of :func:`load_certificate` and
    :func:`check_validity`); the keyring's own failures are :class:`~aadhelper.errors.SecretStoreError`.
    """
    from . import secret_store

    if isinstance(password, str):
        password = Secret(password) if password else None
    certificate = load_certificate(pem_or_pfx_bytes, password, source="the certificate")
    check_validity(certificate, time.time() if now is None else now, source="the certificate")
    secret_store.open_secret_store().set(profile_name, CERTIFICATE, certificate.to_pem())
    return certificate.summary()


def store_certificate_password(profile_name: str, path: str, password: Secret, *,
                               now: float | None = None) -> CertificateSummary:
    """Check that ``password`` opens the certificate file ``path`` (a profile's ``certificate_path``), then store it
    in the keyring for the fetcher; nothing is stored when it does not."""
    from . import secret_store

    certificate = load_certificate(read_certificate_file(path), password, source=f"the certificate file {path}")
    check_validity(certificate, time.time() if now is None else now, source=f"the certificate file {path}")
    secret_store.open_secret_store().set(profile_name, CERTIFICATE_PASSWORD, password)
    return certificate.summary()


# -- parsing ----------------------------------------------------------------------------------------------


def _load_pem(data: bytes, password: Secret | None, source: str,
              checked: bool) -> tuple[RSAPrivateKey, list[x509.Certificate]]:
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    if b"PRIVATE KEY-----" not in data:
        raise ConfigError(f"{source} holds no private key (PEM without a key block); give the key and the "
                          "certificate in one file, or a PFX")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(f"{source} holds no readable certificate next to its private key") from None
    secret = password.reveal().encode() if password else None
    try:
        try:
            key = load_pem_private_key(data, secret, unsafe_skip_rsa_key_validation=checked)
        except TypeError:
            # cryptography: "Password was not given but private key is encrypted", or given for a plain key (which
            # then loads without it: a PFX habit, not an error).
            if secret is None:
                raise PasswordNeeded(f"{source} holds an encrypted private key and no password was given",
                                     hint="pass the password with --password-stdin or at the prompt") from None
            secret = None
            key = load_pem_private_key(data, None, unsafe_skip_rsa_key_validation=checked)
    except ValueError:
        what = "the password is wrong or the key is damaged" if secret else "the key is damaged or not supported"
        raise ConfigError(f"{source}: cannot read the private key: {what}") from None
    except UnsupportedAlgorithm:
        raise ConfigError(f"{source}: the private key's algorithm is not supported") from None
    return _rsa(key, source), certs


def _load_pkcs12(data: bytes, password: Secret | None, source: str) -> tuple[RSAPrivateKey, list[x509.Certificate]]:
    from cryptography.hazmat.primitives.serialization import pkcs12

    secret = password.reveal().encode() if password else None
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, secret)
    except ValueError:
        if secret is None:
            raise PasswordNeeded(f"{source} is neither PEM nor a PFX readable without a password",
                              hint="if it is a password-protected PFX, pass the password with --password-stdin "
                                   "or at the prompt") from None
        raise ConfigError(f"{source}: wrong PFX password, or not a PFX/PEM file") from None
    if key is None:
        raise ConfigError(f"{source} holds no private key (a PFX with certificates only)")
    certs = ([cert] if cert is not None else []) + list(extra)
    return _rsa(key, source), certs


def _rsa(key: object, source: str) -> RSAPrivateKey:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

    if not isinstance(key, RSAPrivateKey):
        raise ConfigError(f"{source}: the private key is {type(key).__name__.removeprefix('_')}, not RSA; Entra "
                          "client assertions are signed with RSA (PS256 or RS256)")
    return key


def _order_chain(key: RSAPrivateKey, certs: list[x509.Certificate], source: str) -> tuple[x509.Certificate, ...]:
    """The certificate matching ``key`` first, then its issuers in order, then anything else as given."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    if not certs:
        raise ConfigError(f"{source} holds a private key but no certificate")
    public = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    leaf = next((cert for cert in certs
                 if cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) == public), None)
    if leaf is None:
        raise ConfigError(f"{source}: the private key does not match the certificate"
                          f"{'s' if len(certs) > 1 else ''} in it")
    chain = [leaf]
    rest = [cert for cert in certs if cert is not leaf]
    while rest:
        issuer = next((cert for cert in rest if cert.subject == chain[-1].issuer), None)
        if issuer is None or chain[-1].issuer == chain[-1].subject:
            break
        chain.append(issuer)
        rest.remove(issuer)
    return tuple(chain + rest)


def _date(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch))
