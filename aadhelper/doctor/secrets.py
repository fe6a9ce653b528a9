"""doctor's checks of the secret store: the keyring backend, and each profile's credential by kind (never its
value)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..config import Profile
from ..errors import ConfigError, SecretStoreError
from ..secret_chunks import CLIENT_SECRET, REFRESH_TOKEN
from ..secret_store import KeyringSecretStore, SecretStore, store_kind
from .findings import Finding, from_error


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
            return Finding("credential", "warn", f"cannot tell whether its {self.what} is stored: secrets live in "
                                                 "memory only (AADHELPER_SECRET_STORE=memory)", profile=profile.name)
        try:
            present = store.get(profile.name, self.secret_kind) is not None
        except SecretStoreError as exc:
            return Finding("credential", "warn", f"cannot tell whether its {self.what} is stored: {exc.message}",
                           exc.hint, profile.name)
        if present:
            return Finding("credential", "ok", f"its {self.what} is stored in the keyring", profile=profile.name)
        return Finding("credential", "fail", f"no {self.what} is stored for profile {profile.name!r}",
                       self.fix.format(name=profile.name), profile.name)


#: How each credential kind (a profile's ``credential``) is checked: add a kind's entry with the kind. A kind not
#: listed is reported as a warning, never an error.
CREDENTIAL_CHECKS: dict[str, Callable[[Profile, SecretStore | None], Finding]] = {
    "client_secret": StoredCredential(CLIENT_SECRET, "client secret",
                                      "store it with `aadhelper secret set {name}`"),
    "user": StoredCredential(REFRESH_TOKEN, "sign-in (refresh token)", "sign in with `aadhelper login {name}`"),
}


def check_credential(profile: Profile, store: SecretStore | None) -> list[Finding]:
    check = CREDENTIAL_CHECKS.get(profile.credential)
    if check is None:
        return [Finding("credential", "warn", f"credential kind {profile.credential!r} is not one this doctor "
                                              "knows how to check", profile=profile.name)]
    return [check(profile, store)]
