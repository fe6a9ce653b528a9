"""Proof by certificate: the client-credentials grant with a client assertion signed in the fetcher.

For every request :class:`CertificateSource` reads the key and chain again (from the keyring, or from the profile's
``certificate_path``: ``aadhelper secret set`` or a redeployed file take effect at the next refresh, and no parsed
key outlives the exchange), refuses a certificate outside its validity period as a configuration error without
asking the authority (Entra would only answer AADSTS700027), warns once per certificate in the log when it expires
within :data:`~aadhelper.certificates.EXPIRY_WARNING_DAYS` days, and signs a fresh assertion
(:mod:`aadhelper.grants.assertion`). The assertion is never cached or logged; the form that carries it is wiped by
:class:`~aadhelper.grants.client_credentials.AppCredentialSource`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import httpx
import trio

from ..certificates import (
    CertificateSummary,
    PasswordNeeded,
    SigningCertificate,
    check_validity,
    load_certificate,
    load_stored_certificate,
    read_certificate_file,
)
from ..config import CertificateSettings, Profile
from ..errors import ConfigError, SecretMissing
from ..secret_chunks import CERTIFICATE, CERTIFICATE_PASSWORD
from ..tokens import wipe
from .assertion import sign_assertion
from .client_credentials import AppCredentialSource, assertion_proof

if TYPE_CHECKING:
    from . import SecretAccess

log = logging.getLogger("aadhelper.fetcher")

# (profile, thumbprint) already warned about in this process's log: once per certificate, not per request.
_warned: set[tuple[str, str]] = set()


class CertificateSource(AppCredentialSource):
    """Proof by a client assertion signed with the profile's certificate."""

    def __init__(self, profile: Profile, *, client: httpx.AsyncClient, secrets: SecretAccess,
                 clock: Callable[[], float]) -> None:
        super().__init__(profile, client=client, clock=clock)
        self._secrets = secrets
        self._settings = profile.certificate or CertificateSettings()

    async def proof(self) -> dict[str, str]:
        profile = self._profile
        certificate = await self.certificate()
        now = self._clock()
        self._check(certificate.summary(), now)
        return assertion_proof(sign_assertion(certificate, client_id=profile.client_id,
                                              audience=profile.token_endpoint, now=now,
                                              algorithm=self._settings.assertion_alg, x5c=self._settings.x5c))

    async def certificate(self) -> SigningCertificate:
        """The key and chain, read afresh (keyring or file)."""
        profile = self._profile
        path = self._settings.path
        if path is not None:
            source = f"the certificate file {path}"
            # In a worker thread: a full parse includes cryptography's RSA key check (~40 ms) and, for a PFX, its
            # key derivation, during which other profiles' fetches on this loop would wait.
            try:
                data = await trio.to_thread.run_sync(read_certificate_file, path)
                try:
                    try:
                        return await trio.to_thread.run_sync(partial(load_certificate, data, source=source))
                    except PasswordNeeded:
                        # Only an encrypted file costs a keyring read.
                        password = await self._secrets.get(profile.name, CERTIFICATE_PASSWORD)
                        if password is None:
                            raise
                        return await trio.to_thread.run_sync(partial(load_certificate, data, password,
                                                                     source=source))
                finally:
                    wipe(data)  # our copy of the file's key, as for the keyring's below
            except ConfigError as exc:
                error = exc.copy(f"profile {profile.name!r}: {exc.message}")
                error.profile = profile.name
                if isinstance(exc, PasswordNeeded):
                    error.hint = f"store its password with `aadhelper secret set {profile.name} --certificate-password`"
                raise error from None
        stored = await self._secrets.get(profile.name, CERTIFICATE)
        if stored is None:
            raise SecretMissing(f"no certificate is stored for profile {profile.name!r}", profile=profile.name,
                                hint=f"store it with `aadhelper secret set {profile.name} --certificate FILE`")
        data = stored.reveal().encode("ascii")
        try:
            return load_stored_certificate(data, source=f"the stored certificate of profile {profile.name!r}")
        finally:
            wipe(data)  # our own copy of the key's PEM: one less left in freed memory per refresh

    async def state(self) -> dict[str, Any]:
        """The certificate's summary for ``status`` (``certificate``), and ``error`` when a fetch would fail on it
        (expired, not yet valid: the summary is still there to show)."""
        summary = (await self.certificate()).summary()
        try:
            self._check(summary, self._clock(), warn=False)
        except ConfigError as exc:
            return {"certificate": summary.as_dict(), "error": exc.to_wire()}
        return {"certificate": summary.as_dict()}

    def _check(self, summary: CertificateSummary, now: float, *, warn: bool = True) -> None:
        profile = self._profile
        source = f"the certificate of profile {profile.name!r}"
        check_validity(summary, now, source=source, profile=profile.name, fix=renewal_fix(profile))
        key = (profile.name, summary.sha256_thumbprint)
        if warn and summary.expiring(now) and key not in _warned:
            _warned.add(key)
            log.warning("%s (SHA-256 %s) expires in %.0f days, on %s: upload a new one to the app registration "
                        "and store it", source, summary.sha256_thumbprint, summary.days_left(now), summary.expires)

    def __repr__(self) -> str:
        return f"CertificateSource(profile={self._profile.name!r})"


def renewal_fix(profile: Profile) -> str:
    """What to do about the profile's certificate expiring or expired (the file it is deployed to, or the keyring)."""
    if profile.certificate is not None and profile.certificate.path is not None:
        return f"deploy a renewed certificate to {profile.certificate.path} and upload it to the app registration"
    return (f"upload a new certificate to the app registration, then `aadhelper secret set {profile.name} "
            "--certificate FILE`")
