"""Long-lived secrets (client secrets, refresh tokens) in the OS keyring, or in memory for tests and the demo.

The keyring is python ``keyring``'s: each entry is a keyring entry under the service ``aadhelper``, which
``keyring get aadhelper NAME`` reads too (entry names and chunking: :mod:`aadhelper.secret_chunks`). Which
backend, decided on first use by :func:`choose_backend` without keyring's discovery (it imports every
backend, ~45 ms, and keyring itself costs ~60 ms to import):

1. the backend ``PYTHON_KEYRING_BACKEND`` or keyring's config file names, loaded by keyring itself;
2. else, on Linux, the Secret Service directly, over one persistent connection
   (:mod:`aadhelper.secret_service`), when keyring's discovery would pick keyring's own backend for it;
3. else keyring's discovery.

A configured ``keyring.backends.SecretService.Keyring`` with its default settings is reached directly too:
it is the same storage. Keyring failures are mapped to our errors in one function,
:func:`_map_keyring_error`; no message or repr ever contains a secret. This module imports neither keyring
nor secretstorage until a store is used.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from .errors import ConfigError, KeyringLocked, KeyringUnavailable, SecretStoreError
from .secret_chunks import MIN_VALUE_CHARS, ChunkedSecretStore
from .secret_service import KEYRING_BACKEND, SecretServiceKeyring
from .tokens import Secret

if TYPE_CHECKING:
    from collections.abc import Iterator

#: The keyring service name every entry is stored under.
SERVICE = "aadhelper"
#: Environment variable choosing the store: ``keyring`` (default) or ``memory``.
STORE_ENV = "AADHELPER_SECRET_STORE"
#: keyring's variable naming its backend.
BACKEND_ENV = "PYTHON_KEYRING_BACKEND"

# Per-backend entry limits in UTF-16 code units. Windows stores 2560 bytes of UTF-16; macOS Keychain items
# above a few KB are reported to fail. Backends not listed (Secret Service, KWallet) take values of any size.
_BACKEND_LIMITS = {
    "keyring.backends.Windows.WinVaultKeyring": 1280,
    "keyring.backends.macOS.Keyring": 2048,
}
# An entry name no profile's entry can have (profile names have no spaces): what KeyringSecretStore.check reads.
_PROBE_ENTRY = "aadhelper doctor/probe"
# keyring sets each KEYRING_PROPERTY_<NAME> variable as property <name> of its backend (scheme, collection...).
_PROPERTY_ENV_PREFIX = "KEYRING_PROPERTY_"


class SecretStore(Protocol):
    """Where long-lived secrets live; ``kind`` is ``client_secret``, ``refresh_token``, ..."""

    def get(self, profile: str, kind: str) -> Secret | None:
        """The stored value, or None when there is none."""
        ...

    def set(self, profile: str, kind: str, value: Secret) -> None:
        """Store ``value``, replacing any previous one."""
        ...

    def delete(self, profile: str, kind: str) -> bool:
        """Remove the value and every chunk of it; True if something was removed."""
        ...


class MemorySecretStore(ChunkedSecretStore):
    """Secrets in this process's memory, for tests and the demo; ``max_value_chars`` simulates a small keyring."""

    def __init__(self, *, max_value_chars: int | None = None) -> None:
        super().__init__(max_value_chars)
        self._entries: dict[str, str] = {}

    def entry_names(self) -> list[str]:
        """The names of the raw entries, sorted (chunks included): what a keyring browser would list."""
        with self._lock:
            return sorted(self._entries)

    def _read_entry(self, name: str) -> str | None:
        return self._entries.get(name)

    def _write_entry(self, name: str, value: str) -> None:
        self._entries[name] = value

    def _delete_entry(self, name: str) -> bool:
        return self._entries.pop(name, None) is not None

    def __repr__(self) -> str:
        return f"MemorySecretStore(entries={len(self._entries)}, max_value_chars={self._max_value_chars})"


class KeyringSecretStore(ChunkedSecretStore):
    """Secrets in the OS keyring: a keyring backend, or :class:`SecretServiceKeyring` in its place.

    ``backend`` is one to use as is (any object with keyring's backend interface); None chooses one on first
    use with :func:`choose_backend`. ``max_value_chars`` None means the limit known for the backend (1280
    on Windows).
    """

    def __init__(self, *, max_value_chars: int | None = None, backend: Any = None) -> None:
        super().__init__(max_value_chars)
        self._backend: Any = backend

    @property
    def backend_name(self) -> str:
        """The keyring backend whose storage is in use, e.g. ``keyring.backends.SecretService.Keyring``."""
        with self._guard("open", None, None):
            return _backend_name(self._keyring())

    def prepare(self) -> None:
        """Choose the backend and connect to it now, so that the first call does not wait for that.

        A keyring failure is not raised here: the next call meets it again and reports it with its profile.
        """
        with contextlib.suppress(SecretStoreError), self._guard("open", None, None):
            self._keyring()

    def check(self) -> str:
        """Whether the keyring answers and is unlocked, without reading a secret (``aadhelper doctor``): choose and
        reach the backend and look up an entry no profile can have. Returns the backend's name; raises
        KeyringUnavailable, KeyringLocked or SecretStoreError, naming no profile."""
        with self._guard("read", None, None), self._lock:
            backend = self._keyring()
            backend.get_password(SERVICE, _PROBE_ENTRY)
            return _backend_name(backend)

    def close(self) -> None:
        """Close the backend's connection if it keeps one open; a later call opens it again."""
        if isinstance(self._backend, SecretServiceKeyring):
            self._backend.close()

    def _keyring(self) -> Any:
        with self._lock:
            if self._backend is None:
                self._backend = choose_backend()
            return self._backend

    def _limit(self) -> int | None:
        if self._max_value_chars is not None:
            return self._max_value_chars
        return _backend_limit(self._keyring())

    def _read_entry(self, name: str) -> str | None:
        value: str | None = self._keyring().get_password(SERVICE, name)
        return value

    def _write_entry(self, name: str, value: str) -> None:
        self._keyring().set_password(SERVICE, name, value)

    def _delete_entry(self, name: str) -> bool:
        from keyring.errors import PasswordDeleteError

        try:
            self._keyring().delete_password(SERVICE, name)
        except PasswordDeleteError:
            # Backends report a missing entry this way; an entry that is still there is a real failure.
            if self._read_entry(name) is None:
                return False
            raise
        return True

    def _guard(self, action: str, profile: str | None, kind: str | None) -> AbstractContextManager[None]:
        return _keyring_errors(action, profile, kind)

    def __repr__(self) -> str:
        backend = self._backend
        name = "not loaded" if backend is None else _backend_name(backend)
        if isinstance(backend, SecretServiceKeyring):
            name += " (direct)"
        return f"KeyringSecretStore(backend={name}, max_value_chars={self._max_value_chars})"


def store_kind(kind: str | None = None) -> str:
    """The kind of store to use: ``kind``, else ``$AADHELPER_SECRET_STORE``, else ``keyring``; checked."""
    source = "secret store"
    if kind is None:
        kind = os.environ.get(STORE_ENV) or "keyring"
        source = STORE_ENV
    if kind not in ("keyring", "memory"):
        raise ConfigError(f"unknown {source} {kind!r}", hint="use 'keyring' or 'memory'")
    return kind


def open_secret_store(kind: str | None = None) -> SecretStore:
    """The store :func:`store_kind` names."""
    return KeyringSecretStore() if store_kind(kind) == "keyring" else MemorySecretStore()


# -- choosing the backend -------------------------------------------------------------------------------

def choose_backend() -> Any:
    """The backend to use, in the order the module docstring gives; may raise keyring's errors."""
    if not sys.platform.startswith("linux"):
        import keyring

        return keyring.get_keyring()
    if os.environ.get(BACKEND_ENV) or os.path.exists(keyring_config_file()):
        configured = _configured_backend()
        if configured is not None:
            if _backend_name(configured) == KEYRING_BACKEND and not vars(configured):
                return SecretServiceKeyring.open() or configured
            return configured
    if _discovery_picks_secret_service():
        direct = SecretServiceKeyring.open()
        if direct is not None:
            return direct
    import keyring

    return keyring.get_keyring()


def keyring_config_file() -> str:
    """keyring's config file on Linux (``keyring.core``'s), found without importing keyring."""
    root = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(root, "python_keyring", "keyringrc.cfg")


def _configured_backend() -> Any:
    from keyring import core

    try:
        return core.load_env() or core.load_config()
    except (ImportError, AttributeError, RuntimeError) as exc:
        # A name that does not import, or a backend that is not usable here (keyring checks its priority).
        from keyring.errors import InitError

        raise InitError(f"cannot load the configured keyring backend ({_describe(exc)})") from None


def _discovery_picks_secret_service() -> bool:
    """Whether keyring's discovery would pick its Secret Service backend with its default settings (when a
    Secret Service answers): no backend properties are set, and KWallet's backend, which outranks it where
    KWallet runs, cannot load because dbus-python is missing."""
    if any(name.startswith(_PROPERTY_ENV_PREFIX) for name in os.environ):
        return False
    return importlib.util.find_spec("dbus") is None


def _backend_limit(backend: Any) -> int | None:
    # keyring's ChainerBackend writes through several backends: the smallest limit among them applies.
    children = getattr(backend, "backends", None)
    if isinstance(children, (list, tuple)):
        limits = [limit for child in children if (limit := _backend_limit(child)) is not None]
        return min(limits, default=None)
    return _BACKEND_LIMITS.get(_backend_name(backend))


def _backend_name(backend: Any) -> str:
    if isinstance(backend, SecretServiceKeyring):
        return KEYRING_BACKEND
    return f"{type(backend).__module__}.{type(backend).__qualname__}"


# -- errors ---------------------------------------------------------------------------------------------

@contextmanager
def _keyring_errors(action: str, profile: str | None, kind: str | None) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        mapped = _map_keyring_error(exc, action, profile, kind)
        if mapped is None:
            raise
        # `from None`: the backend's exception stays out of the printed chain; its type and first line
        # (which keyring and secretstorage never fill with the secret) are in the message.
        raise mapped from None


_BACKEND_PACKAGES = frozenset({"keyring", "keyrings", "secretstorage", "jeepney", "dbus", "pywintypes", "win32ctypes"})


def _map_keyring_error(exc: Exception, action: str, profile: str | None, kind: str | None) -> SecretStoreError | None:
    """Our error for a keyring failure, or None when ``exc`` did not come from the keyring at all."""
    from keyring import errors as kr

    what = f"the {kind} of profile {profile!r}" if profile is not None else "secrets"
    unavailable: tuple[type[Exception], ...] = (kr.NoKeyringError, kr.InitError, ConnectionError, FileNotFoundError)
    locked: tuple[type[Exception], ...] = (kr.KeyringLocked,)
    try:
        from secretstorage import exceptions as ss

        unavailable += (ss.SecretServiceNotAvailableException,)
        locked += (ss.LockedException,)
    except ImportError:  # not on Linux
        pass
    if isinstance(exc, EOFError):
        # A backend that asks for its own password with getpass (keyrings.alt's EncryptedKeyring) and finds no
        # terminal: getpass falls back to stdin, which is closed or was already read (`secret set`'s value).
        return KeyringLocked(
            f"the OS keyring is locked: cannot {action} {what}: its backend asked for its password and had no "
            "terminal to read it from",
            profile=profile,
            hint="run the command in a terminal to type the keyring's password, or use a backend that needs none "
            "(see \"Headless machines\" in aadhelper's README)",
        )
    if isinstance(exc, locked):
        return KeyringLocked(
            f"the OS keyring is locked: cannot {action} {what}",
            profile=profile,
            hint="unlock your login keyring (e.g. log in to the desktop session), then try again",
        )
    if isinstance(exc, unavailable):
        return KeyringUnavailable(
            f"no usable OS keyring to {action} {what} ({_describe(exc)})",
            profile=profile,
            hint="start a Secret Service for the daemon (gnome-keyring under `systemd --user`, or "
            "`scripts/keyring-session aadhelper daemon`) or choose a backend with PYTHON_KEYRING_BACKEND: "
            "see \"Headless machines\" in aadhelper's README",
        )
    if isinstance(exc, OSError) or type(exc).__module__.partition(".")[0] in _BACKEND_PACKAGES:
        return SecretStoreError(f"the OS keyring failed to {action} {what} ({_describe(exc)})", profile=profile)
    return None


def _describe(exc: Exception) -> str:
    """The backend's exception in a few words: its type and first sentence. The rest of keyring's messages is
    advice for keyring's own users ("install keyrings.alt ...") that, cut to fit, used to leak into our line;
    our hint says what to do instead. NoKeyringError's first sentence is no better: it gets ours."""
    if type(exc).__name__ == "NoKeyringError":
        return "keyring found no Secret Service or other usable backend"
    first_line = str(exc).strip().partition("\n")[0]
    sentence = re.split(r"(?<=[.;!?])\s", first_line, maxsplit=1)[0].rstrip(".;")
    text = f"{type(exc).__name__}: {sentence}" if sentence else type(exc).__name__
    return text if len(text) <= 160 else text[:157].rsplit(" ", 1)[0] + "..."


__all__ = ["MIN_VALUE_CHARS", "SERVICE", "ChunkedSecretStore", "KeyringSecretStore", "MemorySecretStore",
           "SecretStore", "choose_backend", "open_secret_store", "store_kind"]
