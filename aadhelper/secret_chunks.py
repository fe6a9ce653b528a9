"""The chunking layer under every secret store: values too large for one keyring entry, replaced crash-safely.

Windows Credential Manager holds ~1280 characters per entry, macOS Keychain a few KB, while refresh tokens
can be larger, so :class:`ChunkedSecretStore` splits a value over several entries. Entries, all under the
keyring service ``aadhelper``::

    <profile>/<kind>               the value itself, or a header "aadhelper-chunked:v1;slot=S;count=N;sha256=H"
    <profile>/<kind>#<S>.<i>       chunk i (0-based) of a chunked value; S alternates 0/1 between replacements

A replacement writes the new chunks under the other slot, then the header (the commit point: one entry
replaced whole), then deletes the old slot's chunks, so a process killed at any moment leaves the old or
the new value readable. Reading is all-or-nothing: a missing chunk or a hash mismatch raises
:class:`~aadhelper.errors.SecretStoreError`, never a partial value.
"""

from __future__ import annotations

import re
import threading
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from .errors import SecretStoreError
from .tokens import Secret

#: The smallest per-entry limit a store accepts: a header entry must fit in one entry.
MIN_VALUE_CHARS = 128

_KIND = re.compile(r"[a-z][a-z0-9_]*")
_HEADER_PREFIX = "aadhelper-chunked:"
_HEADER = re.compile(r"aadhelper-chunked:v1;slot=([01]);count=([1-9][0-9]{0,5});sha256=([0-9a-f]{64})")
# How often a read starts over when the header changed under it (another process replacing the value).
_READ_ATTEMPTS = 3
#: The kinds of secret stored per profile (part of each entry's name): one home for their spelling.
CLIENT_SECRET = "client_secret"
REFRESH_TOKEN = "refresh_token"
#: A client certificate: its private key (unencrypted PKCS#8) and chain, one PEM text (see aadhelper.certificates).
CERTIFICATE = "certificate"
#: The password of a profile's ``certificate_path`` file, when that file is encrypted.
CERTIFICATE_PASSWORD = "certificate_password"
SECRET_KINDS = (CLIENT_SECRET, REFRESH_TOKEN, CERTIFICATE, CERTIFICATE_PASSWORD)
# Where to tell the user to store each kind again.
_FIXES = {CLIENT_SECRET: "aadhelper secret set {}", REFRESH_TOKEN: "aadhelper login {}",
          CERTIFICATE: "aadhelper secret set {} --certificate FILE",
          CERTIFICATE_PASSWORD: "aadhelper secret set {} --certificate-password"}



def store_command(kind: str, profile: str) -> str:
    """The command that stores a secret of ``kind`` for ``profile`` (``aadhelper secret set NAME --certificate FILE``);
    empty for an unknown kind."""
    return _FIXES.get(kind, "").format(profile)


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
    """The chunking layer every store shares, over three primitives on single entries.

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

    def prepare(self) -> None:
        """Get ready for the first call (the daemon calls it at start); a store with a backend connects here."""

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
        fix = store_command(kind, profile)
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
