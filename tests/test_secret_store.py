"""The secret store: one contract suite run against every store, plus keyring-specific failure mapping.

The contract runs on MemorySecretStore, a size-limited MemorySecretStore, and KeyringSecretStore on the real
gnome-keyring (run under scripts/with-secret-service) through both of its paths: the Secret Service reached
directly over one persistent connection (what it picks by itself here) and keyring's own SecretService backend;
each with its default limit and with a small one so that chunking happens in the real keyring too. Crashes are
simulated by a store that dies (BaseException, as a kill would) after N writes/deletes; what survives is then
read back. How the store reaches the Secret Service directly and how a store is chosen: test_secret_backends.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aadhelper.errors import KeyringLocked, KeyringUnavailable, SecretStoreError
from aadhelper.secret_chunks import ChunkedSecretStore
from aadhelper.secret_service import SecretServiceKeyring
from aadhelper.secret_store import (
    MIN_VALUE_CHARS,
    SERVICE,
    KeyringSecretStore,
    MemorySecretStore,
)
from aadhelper.tokens import Secret
from tests.harness import HEADER_LIKE, KIND, assert_no_secret, token

PROFILE = "contract"
KEY = f"{PROFILE}/{KIND}"
SMALL_LIMIT = MIN_VALUE_CHARS
WINDOWS_LIMIT = 1280


class SimulatedCrash(BaseException):
    """The process dies here: nothing may catch it, as nothing catches SIGKILL."""


class CrashAfter(ChunkedSecretStore):
    """Mixin for a concrete store (listed before it): with ``budget`` set, the store dies on the write or delete
    after ``budget`` more of them."""

    budget: int | None = None
    after_read: Callable[[str], None] | None = None

    def _spend(self) -> None:
        if self.budget is not None:
            if self.budget == 0:
                raise SimulatedCrash
            self.budget -= 1

    def _write_entry(self, name: str, value: str) -> None:
        self._spend()
        super()._write_entry(name, value)

    def _delete_entry(self, name: str) -> bool:
        self._spend()
        return super()._delete_entry(name)

    def _read_entry(self, name: str) -> str | None:
        value: str | None = super()._read_entry(name)
        hook, self.after_read = self.after_read, None
        if hook:
            hook(name)
        return value


class CrashingMemoryStore(CrashAfter, MemorySecretStore):
    pass


class CrashingKeyringStore(CrashAfter, KeyringSecretStore):
    pass


@dataclass
class Case:
    store: Any  # a CrashAfter store
    limit: int | None
    list_entries: Callable[[], set[str]]

    def entries(self) -> set[str]:
        return {name for name in self.list_entries() if name.startswith(PROFILE)}

    @property
    def raw(self) -> Any:
        """The store's own entry primitives, past the crash and race hooks: for inspecting and damaging entries."""
        return super(CrashAfter, self.store)

    def sized(self, chunks: int, seed: int = 0) -> Secret:
        """A value stored as ``chunks`` chunks (a header-looking value of one chunk when there is no limit)."""
        if self.limit is None:
            return Secret(HEADER_LIKE + token(200, seed))
        return Secret(token((chunks - 1) * self.limit + self.limit // 2, seed))


def chunk_count(value: Secret, limit: int | None) -> int:
    """How many chunks the value needs (0: stored as one plain entry)."""
    text = value.reveal()
    units = len(text.encode("utf-16-le")) // 2
    if not text.startswith("aadhelper-chunked:") and (limit is None or units <= limit):
        return 0
    return 1 if limit is None else math.ceil(units / limit)


def layouts(key: str, count: int) -> list[set[str]]:
    """The entry sets a value of ``count`` chunks may leave (either slot)."""
    if count == 0:
        return [{key}]
    return [{key} | {f"{key}#{slot}.{index}" for index in range(count)} for slot in (0, 1)]


# "secret-service": the store's own choice here, the Secret Service directly; "keyring": keyring's own backend.
STORES = ["memory", "memory-limited", "secret-service", "secret-service-limited", "keyring", "keyring-limited"]


def keyring_backend() -> Any:
    """A fresh instance of keyring's own SecretService backend (a new connection and session per call)."""
    from keyring.backends import SecretService

    return SecretService.Keyring()


@pytest.fixture(params=STORES)
def case(request: pytest.FixtureRequest) -> Case:
    limited = request.param.endswith("-limited")
    store: Any
    if not request.param.startswith("memory"):
        # Windows' limit: real chunking without hundreds of slow D-Bus round trips.
        limit = WINDOWS_LIMIT if limited else None
        request.getfixturevalue("secret_service")
        list_entries = request.getfixturevalue("keyring_entries")
        direct = request.param.startswith("secret-service")
        store = CrashingKeyringStore(max_value_chars=limit, backend=None if direct else keyring_backend())
        assert store.max_value_chars == limit  # the Secret Service has no per-entry limit of its own
        assert store.backend_name == "keyring.backends.SecretService.Keyring"
        assert isinstance(store._backend, SecretServiceKeyring) is direct
        return Case(store, limit, list_entries)
    limit = SMALL_LIMIT if limited else None
    store = CrashingMemoryStore(max_value_chars=limit)
    return Case(store, limit, lambda: set(store.entry_names()))


def assert_stored(case: Case, value: Secret, key: str = KEY) -> None:
    """The value reads back, and its entries are exactly its own: header/plain plus its chunks, each in the limit."""
    profile, kind = key.rsplit("/", 1)
    assert case.store.get(profile, kind) == value
    names = {name for name in case.list_entries() if name == key or name.startswith(key + "#")}
    assert names in layouts(key, chunk_count(value, case.limit))
    if case.limit is not None:
        for name in names:
            raw = case.raw._read_entry(name)
            assert raw is not None and len(raw.encode("utf-16-le")) // 2 <= case.limit, name


# -- the contract --------------------------------------------------------------------------------------------

def test_missing_value_reads_as_none(case: Case) -> None:
    """If nothing was stored for a profile and kind, then get returns None and delete returns False."""
    assert case.store.get(PROFILE, KIND) is None
    assert case.store.delete(PROFILE, KIND) is False
    assert case.entries() == set()


def test_round_trip_is_per_profile_and_kind(case: Case) -> None:
    """If a value is stored, then get returns it for that profile and kind, and None for any other."""
    value = Secret(token(40))
    case.store.set(PROFILE, KIND, value)
    assert_stored(case, value)
    assert case.store.get(PROFILE, "client_secret") is None
    assert case.store.get(PROFILE + "-other", KIND) is None


def test_overwrite_replaces_value_and_leaves_no_stale_entries(case: Case) -> None:
    """If values of changing sizes overwrite each other, then each reads back and only its own entries remain."""
    values = [Secret(token(40, 1)), case.sized(3, 2), case.sized(5, 3), case.sized(2, 4), Secret(token(30, 5)),
              Secret(HEADER_LIKE), case.sized(4, 6)]
    for value in values:
        case.store.set(PROFILE, KIND, value)
        assert_stored(case, value)


def test_delete_removes_the_value_and_every_chunk(case: Case) -> None:
    """If a chunked value is deleted, then get returns None, no entry is left, and a second delete returns False."""
    case.store.set(PROFILE, KIND, case.sized(4))
    assert case.store.delete(PROFILE, KIND) is True
    assert case.store.get(PROFILE, KIND) is None
    assert case.entries() == set()
    assert case.store.delete(PROFILE, KIND) is False


def test_unicode_round_trips_without_splitting_characters(case: Case) -> None:
    """If a value mixes accents, CJK and characters outside the BMP, then it reads back exactly, chunks in limit."""
    value = Secret(("pässwörd-ключ-秘密-🔑𝄞-" * 40)[: 3 * (case.limit or 100)])
    case.store.set(PROFILE, KIND, value)
    assert_stored(case, value)


def test_large_value_is_chunked_only_where_the_backend_needs_it(case: Case) -> None:
    """If a 20 000-character token is stored, then it round-trips, chunked only when the store has a limit."""
    value = Secret(token(20_000))
    case.store.set(PROFILE, KIND, value)
    assert_stored(case, value)
    expected = 1 if case.limit is None else 1 + math.ceil(20_000 / case.limit)
    assert len(case.entries()) == expected


def test_value_that_looks_like_a_header_is_stored_verbatim(case: Case) -> None:
    """If a value happens to look like a chunk header, then it still reads back as itself."""
    value = Secret(HEADER_LIKE)
    case.store.set(PROFILE, KIND, value)
    assert_stored(case, value)


def test_profiles_and_kinds_never_collide(case: Case) -> None:
    """If profiles whose names contain '/', '#' or non-ASCII store values, then each reads back its own."""
    keys = [(PROFILE, "client_secret"), (PROFILE, KIND), (f"{PROFILE}/client_secret", KIND),
            (f"{PROFILE}/{KIND}#0.0", "client_secret"), (f"{PROFILE} ünïcode", KIND)]
    values = {key: case.sized(2, seed) for seed, key in enumerate(keys)}
    for (profile, kind), value in values.items():
        case.store.set(profile, kind, value)
    case.store.delete(PROFILE, "client_secret")
    for (profile, kind), value in values.items():
        expected = None if (profile, kind) == (PROFILE, "client_secret") else value
        assert case.store.get(profile, kind) == expected, (profile, kind)


DAMAGES: dict[str, Callable[[Case, str], object]] = {
    "missing chunk": lambda case, chunk: case.raw._delete_entry(chunk),
    "altered chunk": lambda case, chunk: case.raw._write_entry(chunk, token(len(case.raw._read_entry(chunk)), 99)),
    "malformed header": lambda case, chunk: case.raw._write_entry(KEY, "aadhelper-chunked:v1;slot=0;count=x"),
    "count too high": lambda case, chunk: case.raw._write_entry(
        KEY, case.raw._read_entry(KEY).replace(";count=", ";count=9")),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_corrupted_chunk_set_is_an_error_not_a_partial_value(case: Case, damage: str) -> None:
    """If a chunked value's entries are damaged, then get raises a SecretStoreError naming profile and kind only."""
    value = case.sized(3)
    case.store.set(PROFILE, KIND, value)
    chunk = max(case.entries() - {KEY})  # one of the chunks (the last when there are several)
    DAMAGES[damage](case, chunk)
    with pytest.raises(SecretStoreError) as caught:
        case.store.get(PROFILE, KIND)
    error = caught.value
    assert type(error) is SecretStoreError and error.code == "secret_store" and error.exit_code == 4
    line = error.one_line()
    assert f"{KIND} of profile {PROFILE!r} is corrupted" in line
    assert f"aadhelper login {PROFILE}" in line
    assert_no_secret(line + repr(error), value)
    # Storing it again repairs it, and deleting leaves nothing behind.
    case.store.set(PROFILE, KIND, value)
    assert_stored(case, value)
    assert case.store.delete(PROFILE, KIND) is True
    assert case.entries() == set()


# Chunk counts before and after; 0 is a plain value. Every transition runs in memory; on the (slow) keyring,
# where only the primitives differ, the one that exercises both slots' writes and purges.
TRANSITIONS = [(3, 2), (2, 4), (0, 3), (3, 0), (0, 0)]
CRASH_CASES = [(store, *transition) for store in STORES for transition in TRANSITIONS
               if store.startswith("memory") or transition == (3, 2)]


def replacement_values(case: Case, old_chunks: int, new_chunks: int) -> tuple[Secret, Secret]:
    def value(chunks: int, seed: int) -> Secret:
        return Secret(token(60, seed)) if chunks == 0 else case.sized(chunks, seed)

    return value(old_chunks, 1), value(new_chunks, 2)


def steps_of(case: Case, action: Callable[[], object]) -> int:
    """How many writes and deletes ``action`` makes."""
    case.store.budget = 10_000
    action()
    used: int = 10_000 - case.store.budget
    case.store.budget = None
    return used


@pytest.mark.parametrize(("case", "old_chunks", "new_chunks"), CRASH_CASES, indirect=["case"])
def test_crash_during_replacement_leaves_old_or_new_value(case: Case, old_chunks: int, new_chunks: int) -> None:
    """If the process dies at any step of a replacement, then the old or the new value reads back whole,
    and the next set leaves no orphaned chunks."""
    old, new = replacement_values(case, old_chunks, new_chunks)
    case.store.set(PROFILE, KIND, old)
    steps = steps_of(case, lambda: case.store.set(PROFILE, KIND, new))
    assert steps >= 1
    survivors = []
    for crash_at in range(steps):
        case.store.set(PROFILE, KIND, old)
        case.store.budget = crash_at
        with pytest.raises(SimulatedCrash):
            case.store.set(PROFILE, KIND, new)
        case.store.budget = None
        survivor = case.store.get(PROFILE, KIND)
        assert survivor in (old, new), f"crash after {crash_at} of {steps} steps left {survivor!r}"
        survivors.append("old" if survivor == old else "new")
    # One commit point: crashes before it keep the old value, crashes after it the new one.
    kept_old = survivors.count("old")
    assert kept_old >= 1 and survivors == ["old"] * kept_old + ["new"] * (steps - kept_old)
    case.store.set(PROFILE, KIND, new)
    assert_stored(case, new)


def test_crash_during_delete_leaves_the_value_or_nothing(case: Case) -> None:
    """If the process dies at any step of a delete, then the value reads back whole or not at all,
    and the next delete removes every entry."""
    value = case.sized(3)
    case.store.set(PROFILE, KIND, value)
    steps = steps_of(case, lambda: case.store.delete(PROFILE, KIND))
    for crash_at in range(steps):
        case.store.set(PROFILE, KIND, value)
        case.store.budget = crash_at
        with pytest.raises(SimulatedCrash):
            case.store.delete(PROFILE, KIND)
        case.store.budget = None
        assert case.store.get(PROFILE, KIND) == (value if crash_at == 0 else None)
        assert case.store.delete(PROFILE, KIND) is True
        assert case.entries() == set()


def test_read_racing_a_replacement_by_another_process_returns_the_new_value(case: Case) -> None:
    """If another process replaces a chunked value between our reading its header and its chunks,
    then get returns the new value instead of calling it corrupted."""
    old, new = case.sized(3, 1), case.sized(2, 2)
    case.store.set(PROFILE, KIND, old)
    # Right after get reads the header, a full replacement lands (its set and purge), as from another process.
    case.store.after_read = lambda name: case.store.set(PROFILE, KIND, new)
    assert case.store.get(PROFILE, KIND) == new


def test_repr_shows_no_secret(case: Case) -> None:
    """If values are stored, then the store's repr and the values' reprs show no secret material."""
    value = case.sized(2)
    case.store.set(PROFILE, KIND, value)
    got = case.store.get(PROFILE, KIND)
    assert_no_secret(repr(case.store) + str(case.store) + repr(got) + str(got), value)


# -- the real Secret Service ---------------------------------------------------------------------------------

@pytest.fixture(params=["secret-service", "keyring"])
def keyring_store(request: pytest.FixtureRequest, secret_service: KeyringSecretStore) -> KeyringSecretStore:
    """The store on the private gnome-keyring, directly ("secret-service") and through keyring's backend."""
    if request.param == "secret-service":
        assert isinstance(secret_service._backend, SecretServiceKeyring)
        return secret_service
    return KeyringSecretStore(backend=keyring_backend())


def test_secret_service_stores_one_plain_entry_per_secret(keyring_store: KeyringSecretStore,
                                                          keyring_entries: Callable[[], set[str]]) -> None:
    """If a large token is stored in gnome-keyring, then it is one entry under service 'aadhelper' that other
    keyring clients read as is."""
    import keyring

    value = Secret(token(20_000))
    assert keyring_store.max_value_chars is None
    keyring_store.set("work", KIND, value)
    assert keyring_entries() == {f"work/{KIND}"}
    assert keyring.get_password(SERVICE, f"work/{KIND}") == value.reveal()
    assert KeyringSecretStore().get("work", KIND) == value


def test_missing_bus_socket_is_keyring_unavailable(keyring_store: KeyringSecretStore, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """If the D-Bus session bus vanishes under a loaded Secret Service backend, then every operation raises
    KeyringUnavailable naming the profile and kind, with a hint to start a Secret Service."""
    value = Secret(token(50))
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", f"unix:path={tmp_path}/no-such-bus")
    for operation in (lambda: keyring_store.get("work", "client_secret"),
                      lambda: keyring_store.set("work", "client_secret", value),
                      lambda: keyring_store.delete("work", "client_secret")):
        with pytest.raises(KeyringUnavailable) as caught:
            operation()
        line = caught.value.one_line()
        assert "client_secret of profile 'work'" in line and "FileNotFoundError" in line
        assert "gnome-keyring" in line and "PYTHON_KEYRING_BACKEND" in line
        assert caught.value.__suppress_context__ and caught.value.__cause__ is None
        assert_no_secret(line, value)


def test_locked_collection_is_keyring_locked(keyring_store: KeyringSecretStore, locked_keyring: None) -> None:
    """If the login collection is locked and no prompt can be shown, then get/set/delete raise KeyringLocked
    naming the profile and kind, with a hint to unlock it."""
    value = Secret(token(50))
    for action, operation in (("read", lambda: keyring_store.get("work", KIND)),
                              ("store", lambda: keyring_store.set("work", KIND, value)),
                              ("delete", lambda: keyring_store.delete("work", KIND))):
        with pytest.raises(KeyringLocked) as caught:
            operation()
        line = caught.value.one_line()
        assert f"cannot {action} the {KIND} of profile 'work'" in line and "unlock your login keyring" in line
        assert caught.value.exit_code == 4
        assert_no_secret(line, value)
