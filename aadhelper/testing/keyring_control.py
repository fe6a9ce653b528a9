"""Locking and unlocking the throwaway gnome-keyring of ``scripts/with-secret-service`` at any point of a test or a
fault case (as a screen lock does, and as the user unlocks it again)."""

from __future__ import annotations

import os
from contextlib import closing

#: The throwaway keyring's password, exported by scripts/with-secret-service.
KEYRING_PASSWORD_ENV = "AADHELPER_TEST_KEYRING_PASSWORD"


def lock_keyring() -> None:
    """Lock the private gnome-keyring's default collection, as a screen lock does."""
    import secretstorage

    with closing(secretstorage.dbus_init()) as connection:
        secretstorage.get_default_collection(connection).lock()


def unlock_keyring() -> None:
    """Unlock the private gnome-keyring's default collection again."""
    import secretstorage
    from secretstorage.util import DBusAddressWrapper, format_secret, open_session

    password = os.environ.get(KEYRING_PASSWORD_ENV)
    assert password, f"{KEYRING_PASSWORD_ENV} is not set: scripts/with-secret-service exports it"
    with closing(secretstorage.dbus_init()) as connection:
        # Unlocking normally needs a prompt (no display here); gnome-keyring's internal interface
        # takes the password directly, as `gnome-keyring-daemon --unlock` does.
        service = DBusAddressWrapper("/org/freedesktop/secrets", "org.freedesktop.Secret.Service", connection)
        (path,) = service.call("ReadAlias", "s", "default")
        internal = DBusAddressWrapper("/org/freedesktop/secrets",
                                      "org.gnome.keyring.InternalUnsupportedGuiltRiddenInterface", connection)
        master = format_secret(open_session(connection), password.encode(), "text/plain")
        internal.call("UnlockWithMasterPassword", "o(oayays)", path, master)
        assert not secretstorage.get_default_collection(connection).is_locked()
