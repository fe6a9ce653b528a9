"""doctor's checks of the secret store: the keyring backend, and each profile's credential by kind (never its
value).

Per kind (:data:`CREDENTIAL_CHECKS`), what a fetch would meet, found without running one:

- ``client_secret``, ``user``: the secret or sign-in is stored.
- ``certificate``: the key and chain are in the keyring, or ``certificate_path`` is a file only its owner can read,
  that loads (an encrypted one with the password stored for it), and whose certificate is valid now: ``warn``
  within :data:`~aadhelper.certificates.EXPIRY_WARNING_DAYS` days of its expiry, ``fail`` once expired. The same
  functions as the fetcher's (:mod:`aadhelper.certificates`); the key is dropped at once and never shown.
- ``federated``: ``token_file`` is readable, not empty, a JWT, and not past its ``exp`` (``warn`` within
  :data:`FEDERATED_EXPIRY_WARNING` s of it, or when its audience is not Entra's); ``token_command``'s program
  resolves to an executable file. The command is not run: it may ask a CI's OIDC endpoint for a token each time.
- ``managed_identity``: the source and where it came from (the profile, or detected from this shell's
  environment, which the daemon does from its own: ``warn``), the App Service secret header present, and whether
  the endpoint answers as one within :data:`PROBE_TIMEOUT` (asked for no token, and never sent App Service's
  header: see :func:`_probe_identity_endpoint`).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..certificates import CertificateSummary, PasswordNeeded, check_validity, load_certificate, read_certificate_file
from ..config import FEDERATION_AUDIENCE, Profile
from ..errors import AadhelperError, ConfigError, SecretStoreError
from ..secret_chunks import CERTIFICATE, CERTIFICATE_PASSWORD, CLIENT_SECRET, REFRESH_TOKEN, store_command
from ..secret_store import KeyringSecretStore, SecretStore, store_kind
from ..tokens import wipe
from .findings import Finding, from_error

#: A federated token this close (seconds) to its ``exp`` is warned about: its writer (the kubelet renews a projected
#: token at 80 % of its life) should have replaced it well before; if it does not, the next exchange fails.
FEDERATED_EXPIRY_WARNING = 300
#: Seconds the managed-identity probe may take: every endpoint is on this machine or link-local, and off Azure
#: nothing answers at 169.254.169.254 at all (the fetcher's own connect timeout is 2 s).
PROBE_TIMEOUT = 1.0


def open_store() -> SecretStore | None:
    """The store the daemon would use (None: the in-memory one, which no other process can see)."""
    try:
        return KeyringSecretStore() if store_kind() == "keyring" else None
    except ConfigError:
        return None  # the keyring check reports the bad AADHELPER_SECRET_STORE


def check_keyring(store: SecretStore | None) -> list[Finding]:
    """The secret store in use and, for the OS keyring, whether its backend answers and is unlocked."""
    try:
        kind = store_kind()
    except ConfigError as exc:
        return [from_error("keyring", exc)]
    if kind == "memory" or store is None:
        return [Finding("keyring", "warn", "AADHELPER_SECRET_STORE=memory: secrets live in one process's memory "
                                           "only and are lost when it ends", "unset AADHELPER_SECRET_STORE to use "
                                                                             "the OS keyring")]
    assert isinstance(store, KeyringSecretStore)
    try:
        backend = store.check()
    except SecretStoreError as exc:
        return [from_error("keyring", exc)]
    return [Finding("keyring", "ok", f"the OS keyring ({backend}) answers and is unlocked",
                    details={"backend": backend})]


@dataclass(frozen=True)
class StoredCredential:
    """A credential kept in the keyring as one secret: present or not (its value is read and dropped, never shown)."""

    secret_kind: str
    what: str
    fix: str

    def __call__(self, profile: Profile, store: SecretStore | None) -> Finding:
        if store is None:
            return _memory_only(profile, self.what)
        try:
            present = store.get(profile.name, self.secret_kind) is not None
        except SecretStoreError as exc:
            return Finding("credential", "warn", f"cannot tell whether its {self.what} is stored: {exc.message}",
                           exc.hint, profile.name)
        if present:
            return Finding("credential", "ok", f"its {self.what} is stored in the keyring", profile=profile.name)
        return Finding("credential", "fail", f"no {self.what} is stored for profile {profile.name!r}",
                       self.fix.format(name=profile.name), profile.name)


def _memory_only(profile: Profile, what: str) -> Finding:
    return Finding("credential", "warn", f"cannot tell whether its {what} is stored: secrets live in memory only "
                                         "(AADHELPER_SECRET_STORE=memory)", profile=profile.name)


def check_certificate(profile: Profile, store: SecretStore | None) -> Finding:
    """A ``certificate`` profile: present, protected, loadable and valid (module docstring)."""
    from ..grants.certificate import renewal_fix

    name = profile.name
    path = profile.certificate.path if profile.certificate is not None else None
    try:
        if path is not None:
            summary = _file_certificate(profile, path, store)
            where = f"in {path}"
        else:
            if store is None:
                return _memory_only(profile, "certificate")
            stored = store.get(name, CERTIFICATE)
            if stored is None:
                return Finding("credential", "fail", f"no certificate is stored for profile {name!r}",
                               f"store it with `{store_command(CERTIFICATE, name)}`", name)
            data = stored.reveal().encode("ascii")
            try:
                summary = load_certificate(data, checked=True, source=f"the stored certificate of profile "
                                                                      f"{name!r}").summary()
            finally:
                wipe(data)
            where = "in the keyring"
        if summary is None:
            return _memory_only(profile, "certificate password")
        now = time.time()
        check_validity(summary, now, source=f"the certificate of profile {name!r}", profile=name,
                       fix=renewal_fix(profile))
    except SecretStoreError as exc:
        return Finding("credential", "warn", f"cannot tell whether its certificate is stored: {exc.message}",
                       exc.hint, name)
    except ConfigError as exc:
        return from_error("credential", exc, profile=name)
    expiring = summary.expiring(now)
    return Finding("credential", "warn" if expiring else "ok", f"its {summary.describe(now)}, {where}",
                   renewal_fix(profile) if expiring else None, name, details={"certificate": summary.as_dict()})


def _file_certificate(profile: Profile, path: str, store: SecretStore | None) -> CertificateSummary | None:
    """The summary of the certificate in ``path``: the file checked as the fetcher reads it, its stored password
    used when it is encrypted (None: the password cannot be looked up, secrets being in memory only)."""
    source = f"the certificate file {path}"
    data = read_certificate_file(path)  # not the user's, open to others, not a file: ConfigError
    try:
        try:
            return load_certificate(data, source=source).summary()
        except PasswordNeeded as exc:
            if store is None:
                return None
            password = store.get(profile.name, CERTIFICATE_PASSWORD)
            if password is None:
                raise ConfigError(f"{exc.message}, and no password for it is stored", profile=profile.name,
                                  hint=f"store it with `{store_command(CERTIFICATE_PASSWORD, profile.name)}`"
                                  ) from None
            return load_certificate(data, password, source=source).summary()
    finally:
        wipe(data)


def check_federated(profile: Profile, store: SecretStore | None) -> Finding:
    """A ``federated`` profile: its token file or token command (module docstring)."""
    del store  # nothing of a federated profile is in the keyring
    if profile.token_command is not None:
        return _token_command(profile, profile.token_command)
    if profile.token_file is None:
        return Finding("credential", "fail", f"profile {profile.name!r} has neither token_file nor token_command "
                                             "(and AZURE_FEDERATED_TOKEN_FILE was not set where the config was read)",
                       "set token_file (or token_command) in the profile's section of the config file",
                       profile.name)
    from ..grants.federated import jwt_assertion, read_token_file
    from ..grants.http import unverified_claims

    what = f"the federated token file {profile.token_file}"
    try:
        raw = read_token_file(profile.token_file, what, profile.name)
        try:
            claims = unverified_claims(jwt_assertion(raw, what, profile.name))
        finally:
            wipe(raw)
    except AadhelperError as exc:
        return from_error("credential", exc, profile=profile.name)
    shown = {key: claims[key] for key in ("iss", "sub", "aud", "exp") if isinstance(claims.get(key), (str, int))}
    details = {"token_file": profile.token_file, "claims": shown}
    exp, now = claims.get("exp"), time.time()
    who = f"a token of {claims.get('iss', 'an unnamed issuer')} for {claims.get('sub', 'an unnamed subject')}"
    if isinstance(exp, (int, float)) and not isinstance(exp, bool):
        until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(exp))
        if exp <= now:
            return Finding("credential", "fail", f"{what} holds {who} that expired at {until}",
                           "check that its writer (the kubelet, the CI job) still renews it", profile.name, details)
        if exp - now < FEDERATED_EXPIRY_WARNING:
            return Finding("credential", "warn", f"{what} holds {who} that expires at {until}, in "
                                                 f"{(exp - now) / 60:.0f} min", "check that its writer renews it",
                           profile.name, details)
        who += f", valid until {until}"
    audiences = claims.get("aud")
    audiences = audiences if isinstance(audiences, list) else [audiences]
    if FEDERATION_AUDIENCE not in audiences:
        return Finding("credential", "warn", f"{what} holds {who} whose audience is not {FEDERATION_AUDIENCE}",
                       "Entra accepts it only if the app's federated credential names that audience",
                       profile.name, details)
    return Finding("credential", "ok", f"{what} holds {who}", profile=profile.name, details=details)


def _token_command(profile: Profile, argv: tuple[str, ...]) -> Finding:
    program = argv[0]
    # The daemon runs it by the same rule (no shell): a name without a slash is looked up on PATH. This shell's PATH
    # may differ from the daemon's (a systemd unit's is short).
    path = program if os.sep in program else shutil.which(program)
    if path is None:
        return Finding("credential", "fail", f"the federated token command {program!r} is not found on PATH",
                       "give its absolute path in token_command", profile.name)
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        return Finding("credential", "fail", f"the federated token command {path} is not an executable file",
                       f"check the path, or `chmod +x {path}`", profile.name)
    return Finding("credential", "ok", f"the federated token command {path} is executable (not run by doctor)",
                   profile=profile.name, details={"token_command": path})


def check_managed_identity(profile: Profile, store: SecretStore | None) -> Finding:
    """A ``managed_identity`` profile: its source, where that came from, and whether its endpoint answers."""
    del store  # a managed identity holds no secret of ours
    identity = profile.managed_identity
    if identity is None:  # a parsed managed_identity profile always has one
        return Finding("credential", "fail", "no managed identity settings", profile=profile.name)
    details = {"managed_identity": identity.as_dict()}
    origin = ("detected from this shell's environment" if identity.detected else "set in the profile")
    said = f"source {identity.source} ({origin}), endpoint {identity.endpoint or '(none)'}"
    if not identity.endpoint:
        return Finding("credential", "fail", f"{said}: IDENTITY_ENDPOINT is not set", "run the daemon where the "
                       "identity's variables are set, or set `endpoint` in the profile", profile.name, details)
    if identity.source == "app_service" and identity.header is None:
        return Finding("credential", "fail", f"{said}: IDENTITY_HEADER (the endpoint's secret) is not set",
                       "run the daemon where App Service sets IDENTITY_ENDPOINT and IDENTITY_HEADER", profile.name,
                       details)
    problem = _probe_identity_endpoint(profile.name, identity.source, identity.endpoint)
    if problem is not None:
        return Finding("credential", "fail", f"{said}: {problem}",
                       "no managed identity here: is this an Azure VM, App Service or Arc machine?", profile.name,
                       details)
    if identity.detected:
        return Finding("credential", "warn", f"{said}: the endpoint accepts connections; the daemon detects the "
                                             "source from its own environment, which may differ",
                       f"set `source = \"{identity.source}\"` in the profile, or restart the daemon from this "
                       "environment (`aadhelper daemon restart`)", profile.name, details)
    return Finding("credential", "ok", f"{said}: the endpoint accepts connections", profile=profile.name,
                   details=details)


def _probe_identity_endpoint(profile: str, source: str, endpoint: str) -> str | None:
    """None when ``endpoint`` answers as a managed-identity endpoint, else what it did: a GET with the source's
    api-version and no resource (so no token is issued), without App Service's secret header and never through a
    proxy, as the fetcher's requests. Any JSON object answers (the endpoints' refusals are JSON), and so does Arc's
    401 challenge; a plain-text 403 is a firewall or proxy in between, not an identity."""
    import trio

    from ..grants.http import HttpClients, get_json
    from ..grants.managed_identity import API_VERSIONS

    async def probe() -> tuple[int, Mapping[str, str], dict[str, Any] | None]:
        clients = HttpClients()
        try:
            return await get_json(clients.get(None), endpoint, profile=profile,
                                  params={"api-version": API_VERSIONS[source]}, headers={"Metadata": "true"},
                                  peer="the managed identity endpoint", timeout=PROBE_TIMEOUT,
                                  connect_timeout=PROBE_TIMEOUT)
        finally:
            await clients.aclose()

    try:
        status, headers, body = trio.run(probe)
    except AadhelperError as exc:
        return exc.message
    if body is not None or (status == 401 and "www-authenticate" in {name.lower() for name in headers}):
        return None
    return (f"something answers there (HTTP {status}), but not as a managed identity endpoint (a proxy or "
            "firewall in between?)")


#: How each credential kind (a profile's ``credential``) is checked: add a kind's entry with the kind. A kind not
#: listed is reported as a warning, never an error.
CREDENTIAL_CHECKS: dict[str, Callable[[Profile, SecretStore | None], Finding]] = {
    "client_secret": StoredCredential(CLIENT_SECRET, "client secret",
                                      "store it with `aadhelper secret set {name}`"),
    "user": StoredCredential(REFRESH_TOKEN, "sign-in (refresh token)", "sign in with `aadhelper login {name}`"),
    "certificate": check_certificate,
    "federated": check_federated,
    "managed_identity": check_managed_identity,
}


def check_credential(profile: Profile, store: SecretStore | None) -> list[Finding]:
    check = CREDENTIAL_CHECKS.get(profile.credential)
    if check is None:
        return [Finding("credential", "warn", f"credential kind {profile.credential!r} is not one this doctor "
                                              "knows how to check", profile=profile.name)]
    return [check(profile, store)]
