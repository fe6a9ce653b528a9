"""Long-lived secrets (client secrets, refresh tokens) in the OS keyring, or in memory for tests and the demo.

This is the only module that imports ``keyring``, and it does so lazily, on first use, so that importing it
stays cheap. Both stores share one layer, :class:`ChunkedSecretStore`, which splits a value too large for
one keyring entry (Windows Credential Manager holds ~1280 characters) into chunks. Entries, all under the
keyring service ``aadhelper``::

    <profile>/<kind>               the value itself, or a header "aadhelper-chunked:v1;slot=S;count=N;sha256=H"
    <profile>/<kind>#<S>.<i>       chunk i (0-based) of a chunked value; S alternates 0/1 between replacements

A replacement writes the new chunks under the other slot, then the header (the commit point: one entry
replaced whole), then deletes the old slot's chunks, so a process killed at any moment leaves the old or
the new value readable. Reading is all-or-nothing: a missing chunk or a hash mismatch raises
:class:`~aadhelper.errors.SecretStoreError`, never a partial value. Keyring failures are mapped to our
errors in one function, :func:`_map_keyring_error`; no message or repr ever contains a secret.
"""

from __future__ import annotations

import os
import re
import threading
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .errors import ConfigError, KeyringLocked, KeyringUnavailable, SecretStoreError
from .tokens import Secret

if TYPE_CHECKING:
    from collections.abc import Iterator

#: The keyring service name every entry is stored under.
SERVICE = "aadhelper"
#: Environment variable choosing the store: ``keyring`` (default) or ``memory``.
STORE_ENV = "AADHELPER_SECRET_STORE"
#: The smallest per-entry limit a store accepts: a header entry must fit in one entry.
MIN_VALUE_CHARS = 128

# Per-backend entry limits in UTF-16 code units. Windows stores 2560 bytes of UTF-16; macOS Keychain items
# above a few KB are reported to fail. Backends not listed (Secret Service, KWallet) take values of any size.
_BACKEND_LIMITS = {
    "keyring.backends.Windows.WinVaultKeyring": 1280,
    "keyring.backends.macOS.Keyring": 2048,
}
_KIND = re.compile(r"[a-z][a-z0-9_]*")
_HEADER_PREFIX = "aadhelper-chunked:"
_HEADER = re.compile(r"aadhelper-chunked:v1;slot=([01]);count=([1-9][0-9]{0,5});sha256=([0-9a-f]{64})")
# How often a read starts over when the header changed under it (another process replacing the value).
_READ_ATTEMPTS = 3
# Where to tell the user to store each kind again.
_FIXES = {"client_secret": "aadhelper secret set {}", "refresh_token": "aadhelper login {}"}


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


@dataclass(frozen=True)
class _Header:
    slot: int
    count: int
    sha256: str

    def render(self) -> str:
        return f"{_HEADER_PREFIX}v1;slot={self.slot};count={self.count};sha256={self.sha256}"

    @classmethod
    def parse(cls, text: str | None) -> _Header | None:
        match = _HEADER.fullmatch(text or "")
        return cls(int(match[1]), int(match[2]), match[3]) if match else None


class _Corrupted(Exception):
    """A chunked value cannot be reassembled; ``reason`` says why (never containing the value)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ChunkedSecretStore:
    """The chunking layer both stores share, over three primitives on single entries.

    Subclasses implement :meth:`_read_entry`, :meth:`_write_entry` and :meth:`_delete_entry`, may compute
    the entry size limit in :meth:`_limit`, and may wrap every operation in :meth:`_guard` to translate
    their backend's errors. Operations are serialised by a lock, because the daemon calls a store from
    worker threads.
    """

    def __init__(self, max_value_chars: int | None = None) -> None:
        if max_value_chars is not None and max_value_chars < MIN_VALUE_CHARS:
            raise ValueError(f"max_value_chars must be at least {MIN_VALUE_CHARS}, not {max_value_chars}")
        self._max_value_chars = max_value_chars
        self._lock = threading.RLock()

    # -- the primitives -------------------------------------------------------------------------------

    def _read_entry(self, name: str) -> str | None:
        raise NotImplementedError

    def _write_entry(self, name: str, value: str) -> None:
        raise NotImplementedError

    def _delete_entry(self, name: str) -> bool:
        raise NotImplementedError

    def _guard(self, action: str, profile: str | None, kind: str | None) -> AbstractContextManager[None]:
        return nullcontext()

    def _limit(self) -> int | None:
        return self._max_value_chars

    @property
    def max_value_chars(self) -> int | None:
        """The most UTF-16 code units one entry holds (longer values are chunked), or None for no limit."""
        with self._guard("open", None, None):
            return self._limit()

    # -- the SecretStore protocol ---------------------------------------------------------------------

    def get(self, profile: str, kind: str) -> Secret | None:
        key = _entry_name(profile, kind)
        with self._guard("read", profile, kind), self._lock:
            stored = self._read_entry(key)
            reason = ""
            for _ in range(_READ_ATTEMPTS):
                try:
                    return self._assemble(key, stored)
                except _Corrupted as exc:
                    reason = exc.reason
                # Another process may have replaced the value between our reads: look again before
                # calling it corrupted.
                again = self._read_entry(key)
                if again == stored:
                    break
                stored = again
        fix = _FIXES.get(kind, "").format(profile)
        raise SecretStoreError(
            f"the stored {kind} of profile {profile!r} is corrupted: {reason}",
            profile=profile,
            hint=f"store it again with `{fix}`" if fix else "store it again",
        )

    def set(self, profile: str, kind: str, value: Secret) -> None:
        key = _entry_name(profile, kind)
        text = value.reveal()
        with self._guard("store", profile, kind), self._lock:
            limit = self._limit()
            # A value that looks like a header is chunked too, so that reading it back is unambiguous.
            if not text.startswith(_HEADER_PREFIX) and (limit is None or _utf16_units(text) <= limit):
                self._write_entry(key, text)
                self._purge_chunks(key, keep_slot=None, keep_count=0)
                return
            current = _Header.parse(self._read_entry(key))
            slot = 1 - current.slot if current else 0
            chunks = _split(text, limit)
            for index, chunk in enumerate(chunks):
                self._write_entry(_chunk_name(key, slot, index), chunk)
            self._write_entry(key, _Header(slot, len(chunks), _sha256(text)).render())
            self._purge_chunks(key, keep_slot=slot, keep_count=len(chunks))

    def delete(self, profile: str, kind: str) -> bool:
        key = _entry_name(profile, kind)
        with self._guard("delete", profile, kind), self._lock:
            # The header goes first: once it is gone no reader can find a partial set of chunks.
            removed = self._delete_entry(key)
            return self._purge_chunks(key, keep_slot=None, keep_count=0) or removed

    # -- chunking -------------------------------------------------------------------------------------

    def _assemble(self, key: str, stored: str | None) -> Secret | None:
        if stored is None:
            return None
        if not stored.startswith(_HEADER_PREFIX):
            return Secret(stored)
        header = _Header.parse(stored)
        if header is None:
            raise _Corrupted("its header entry is malformed")
        parts = []
        for index in range(header.count):
            part = self._read_entry(_chunk_name(key, header.slot, index))
            if part is None:
                raise _Corrupted(f"chunk {index + 1} of {header.count} is missing")
            parts.append(part)
        value = "".join(parts)
        if _sha256(value) != header.sha256:
            raise _Corrupted("its chunks do not match the recorded hash")
        return Secret(value)

    def _purge_chunks(self, key: str, *, keep_slot: int | None, keep_count: int) -> bool:
        """Delete every chunk except the first ``keep_count`` of ``keep_slot``; True if any was deleted.

        Chunks are written upwards from 0 and deleted downwards, so whatever an interrupted write or purge
        left behind is a run without gaps, and probing upwards until the first missing index finds it all.
        """
        removed = False
        for slot in (0, 1):
            start = keep_count if slot == keep_slot else 0
            end = start
            while self._read_entry(_chunk_name(key, slot, end)) is not None:
                end += 1
            for index in reversed(range(start, end)):
                removed = self._delete_entry(_chunk_name(key, slot, index)) or removed
        return removed


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
    """Secrets in the OS keyring through python ``keyring`` (wrapped: its backends are never subclassed).

    ``max_value_chars`` None means the limit known for the backend keyring picks (1280 on Windows).
    """

    def __init__(self, *, max_value_chars: int | None = None) -> None:
        super().__init__(max_value_chars)
        self._backend: Any = None

    @property
    def backend_name(self) -> str:
        """The keyring backend in use, e.g. ``keyring.backends.SecretService.Keyring``."""
        with self._guard("open", None, None):
            return _qualified_name(self._keyring())

    def _keyring(self) -> Any:
        # Loaded on first use: importing keyring costs ~55 ms and probing for a backend talks to D-Bus.
        if self._backend is None:
            import keyring

            self._backend = keyring.get_keyring()
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
        backend = _qualified_name(self._backend) if self._backend is not None else "not loaded"
        return f"KeyringSecretStore(backend={backend}, max_value_chars={self._max_value_chars})"


def open_secret_store(kind: str | None = None) -> SecretStore:
    """The store to use: ``kind``, else ``$AADHELPER_SECRET_STORE``, else ``keyring``."""
    source = "secret store"
    if kind is None:
        kind = os.environ.get(STORE_ENV) or "keyring"
        source = STORE_ENV
    if kind == "keyring":
        return KeyringSecretStore()
    if kind == "memory":
        return MemorySecretStore()
    raise ConfigError(f"unknown {source} {kind!r}", hint="use 'keyring' or 'memory'")


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
            hint="install and start a Secret Service such as gnome-keyring in a D-Bus session, "
            "or choose a backend with PYTHON_KEYRING_BACKEND",
        )
    if isinstance(exc, OSError) or type(exc).__module__.partition(".")[0] in _BACKEND_PACKAGES:
        return SecretStoreError(f"the OS keyring failed to {action} {what} ({_describe(exc)})", profile=profile)
    return None


def _describe(exc: Exception) -> str:
    first_line = str(exc).strip().partition("\n")[0]
    text = f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _backend_limit(backend: Any) -> int | None:
    # keyring's ChainerBackend writes through several backends: the smallest limit among them applies.
    children = getattr(backend, "backends", None)
    if isinstance(children, (list, tuple)):
        limits = [limit for child in children if (limit := _backend_limit(child)) is not None]
        return min(limits, default=None)
    return _BACKEND_LIMITS.get(_qualified_name(backend))


def _qualified_name(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _entry_name(profile: str, kind: str) -> str:
    # Kinds are plain identifiers, so "<profile>/<kind>" and "<...>#<slot>.<i>" can never collide
    # whatever characters a profile name has: the part after the last "/" tells them apart.
    if not _KIND.fullmatch(kind):
        raise ValueError(f"a secret kind is a lower-case identifier, not {kind!r}")
    if not profile:
        raise ValueError("a profile name must not be empty")
    return f"{profile}/{kind}"


def _chunk_name(key: str, slot: int, index: int) -> str:
    return f"{key}#{slot}.{index}"


def _sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def _utf16_units(text: str) -> int:
    # What Windows counts: a character outside the Basic Multilingual Plane takes two units.
    return len(text) if text.isascii() else len(text.encode("utf-16-le")) // 2


def _split(text: str, limit: int | None) -> list[str]:
    """``text`` in pieces of at most ``limit`` UTF-16 units, never splitting a character."""
    if limit is None:
        return [text]
    if text.isascii():
        return [text[start : start + limit] for start in range(0, len(text), limit)]
    chunks: list[str] = []
    start = used = 0
    for index, char in enumerate(text):
        cost = 2 if ord(char) > 0xFFFF else 1
        if used + cost > limit:
            chunks.append(text[start:index])
            start, used = index, 0
        used += cost
    chunks.append(text[start:])
    return chunks
