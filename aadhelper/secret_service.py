"""The freedesktop Secret Service over one persistent connection, storing entries as keyring's backend does.

keyring's ``SecretService`` backend opens a new D-Bus connection and a new encrypted session for every call;
the session's Diffie-Hellman key exchange runs in pure Python and holds the GIL for milliseconds, which
stalls the daemon's event loop right before the token request the secret is read for (``scripts/bench``,
row 5). :class:`SecretServiceKeyring` makes the connection, finds the collection and opens the session
once, and reuses them. It offers the three calls of keyring's backend interface that the secret store uses
and stores exactly what keyring's backend stores: the same attributes (``username``, ``service``,
``application``), label and collection (the default one), so ``keyring get aadhelper NAME`` reads what it
writes and it reads what keyring wrote. It wraps rather than subclasses keyring's backend: keyring
registers every subclass as a backend of its own.

A broken connection (the bus or the keyring daemon restarted) is made again, once per call; so is one to
another bus than ``DBUS_SESSION_BUS_ADDRESS`` now names, which is what keyring's backend, connecting anew
each time, would reach. Calls are serialised by a lock: a D-Bus connection carries one exchange at a time.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from .tokens import wipe

if TYPE_CHECKING:
    from secretstorage import Collection, Item

#: The keyring backend whose storage this is: entries written by either are the same entries.
KEYRING_BACKEND = "keyring.backends.SecretService.Keyring"
#: The ``application`` attribute keyring's backend gives the items it creates (its ``appid``).
APPLICATION = "Python keyring library"

_BUS_ENV = "DBUS_SESSION_BUS_ADDRESS"
# The Secret Service's answer when the session a call names is gone (its daemon restarted).
_NO_SESSION = "org.freedesktop.Secret.Error.NoSession"

_T = TypeVar("_T")


@dataclass(frozen=True)
class _Link:
    """One connection to the session bus, with the default collection and an open session on it."""

    collection: Collection
    #: The bus address it was made to (None: the variable was unset, so the connection failed).
    address: str | None
    #: Closes the connection; also run when the keyring object is collected, so no socket is left open.
    close: Callable[[], object]


class SecretServiceKeyring:
    """The Secret Service with keyring's ``get_password``/``set_password``/``delete_password``; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._link: _Link | None = None

    @classmethod
    def open(cls) -> SecretServiceKeyring | None:
        """One connected to the session bus's Secret Service, or None when there is no bus or no Secret Service."""
        try:
            from secretstorage.exceptions import SecretServiceNotAvailableException
        except ImportError:  # keyring installs it on Linux only
            return None
        keyring = cls()
        try:
            with keyring._lock:
                keyring._connect()
        # RuntimeError: a bus address of a kind jeepney cannot connect to (keyring's backend finds none either).
        except (SecretServiceNotAvailableException, OSError, RuntimeError):
            return None
        return keyring

    def get_password(self, service: str, username: str) -> str | None:
        def read(collection: Collection) -> str | None:
            for item in _items(collection, service, username):
                raw = item.get_secret()
                try:
                    return raw.decode("utf-8")
                finally:
                    wipe(raw)  # ours once returned: a copy less per read (see tokens.wipe)
            return None

        return self._call(read)

    def set_password(self, service: str, username: str, password: str) -> None:
        attributes = {"username": username, "service": service, "application": APPLICATION}
        label = f"Password for '{username}' on '{service}'"
        raw = password.encode("utf-8")
        try:
            self._call(lambda collection: collection.create_item(label, attributes, raw, replace=True))
        finally:
            wipe(raw)

    def delete_password(self, service: str, username: str) -> None:
        """Delete every matching item; keyring's PasswordDeleteError when there is none, as keyring raises."""
        def delete(collection: Collection) -> bool:
            found = list(_items(collection, service, username))
            for item in found:
                item.delete()
            return bool(found)

        if not self._call(delete):
            from keyring.errors import PasswordDeleteError

            raise PasswordDeleteError("No such password!")

    def close(self) -> None:
        """Close the connection; the next call makes a new one."""
        with self._lock:
            self._disconnect()

    def _call(self, operation: Callable[[Collection], _T]) -> _T:
        with self._lock:
            link, fresh = self._link, False
            if link is None or link.address != os.environ.get(_BUS_ENV):
                link, fresh = self._connect(), True
            try:
                return operation(_unlocked(link.collection))
            except Exception as exc:
                if fresh or not _is_broken(exc):
                    raise
            return operation(_unlocked(self._connect().collection))

    def _connect(self) -> _Link:
        """A new connection, collection and session in place of the current ones (called under the lock)."""
        import secretstorage
        from secretstorage.util import open_session

        self._disconnect()
        address = os.environ.get(_BUS_ENV)
        connection = secretstorage.dbus_init()
        close = weakref.finalize(self, connection.close)
        try:
            session = open_session(connection)
            collection = secretstorage.get_default_collection(connection, session)
        except BaseException:
            close()
            raise
        # Items found through the collection share its session instead of each negotiating one.
        collection.session = session
        self._link = _Link(collection, address, close)
        return self._link

    def _disconnect(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None

    def __repr__(self) -> str:
        return f"SecretServiceKeyring(connected={self._link is not None})"


def _items(collection: Collection, service: str, username: str) -> Iterator[Item]:
    # The attributes keyring's backend searches by (its default scheme); `application` only marks the creator.
    return collection.search_items({"username": username, "service": service})


def _unlocked(collection: Collection) -> Collection:
    if collection.is_locked():
        # As keyring's backend does: ask for the unlock prompt. Without a display none can be shown, the
        # Secret Service reports it dismissed at once, and the caller hears that the keyring is locked.
        collection.unlock()
        if collection.is_locked():
            from secretstorage.exceptions import LockedException

            raise LockedException("Failed to unlock the collection!")
    return collection


def _is_broken(exc: Exception) -> bool:
    """Whether ``exc`` says the connection or the session is gone, so that a new one may succeed."""
    from secretstorage.exceptions import SecretServiceNotAvailableException

    return isinstance(exc, (OSError, SecretServiceNotAvailableException)) or getattr(exc, "name", None) == _NO_SESSION
