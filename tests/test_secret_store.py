"""The secret store: one contract suite run against every store, plus keyring-specific failure mapping.

The contract runs on MemorySecretStore, a size-limited MemorySecretStore, and KeyringSecretStore on the real
gnome-keyring (run under scripts/with-secret-service) through both of its paths: the Secret Service reached
directly over one persistent connection (what it picks by itself here) and keyring's own SecretService backend;
each with its default limit and with a small one so that chunking happens in the real keyring too. Crashes are
simulated by a store that dies (BaseException, as a kill would) after N writes/deletes; what survives is then
read back. The direct path is also checked against keyring itself (each reads what the other wrote), for how it
chooses a backend, and for how it recovers a broken connection.
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aadhelper.errors import ConfigError, KeyringLocked, KeyringUnavailable, SecretStoreError
from aadhelper.secret_service import APPLICATION, SecretServiceKeyring
from aadhelper.secret_store import (
    MIN_VALUE_CHARS,
    SERVICE,
    KeyringSecretStore,
    MemorySecretStore,
    choose_backend,
    keyring_config_file,
    open_secret_store,
)
from aadhelper.tokens import Secret

PROFILE = "contract"
KIND = "refresh_token"
KEY = f"{PROFILE}/{KIND}"
SMALL_LIMIT = MIN_VALUE_CHARS
WINDOWS_LIMIT = 1280
HEADER_LIKE = "aadhelper-chunked:v1;slot=0;count=1;sha256=" + "0" * 64


class SimulatedCrash(BaseException):
    """The process dies here: nothing may catch it, as nothing catches SIGKILL."""


class CrashAfter:
    """Mixin: with ``budget`` set, the store dies on the write or delete after ``budget`` more of them."""

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


def token(length: int, seed: int = 0) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
    return "".join(random.Random(seed).choices(alphabet, k=length))


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


def assert_no_secret(text: str, *values: Secret) -> None:
    """No 8-character run of any value (past a header-looking prefix, which is public) appears in ``text``."""
    for value in values:
        plain = value.reveal().removeprefix(HEADER_LIKE)
        leaked = [plain[i:i + 8] for i in range(max(1, len(plain) - 7)) if plain[i:i + 8] in text]
        assert not leaked, f"secret material in {text!r}"


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


# -- the Secret Service reached directly ---------------------------------------------------------------------

def keyring_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """keyring's own command line (`keyring get/set/del SERVICE NAME`), as a user would run it."""
    return subprocess.run([sys.executable, "-m", "keyring", *args], input=stdin, capture_output=True, text=True,
                          timeout=60, check=False)


def raw_items(name: str) -> list[tuple[str, dict[str, str]]]:
    """(label, attributes) of every item of the default collection that keyring would find as ``name``.

    Without ``xdg:schema``, which gnome-keyring now and then adds by itself to an item that came without one.
    """
    import secretstorage

    with closing(secretstorage.dbus_init()) as connection:
        collection = secretstorage.get_default_collection(connection)
        return [(item.get_label(), {key: value for key, value in item.get_attributes().items() if key != "xdg:schema"})
                for item in collection.search_items({"service": SERVICE, "username": name})]


def test_direct_entries_are_keyring_entries_both_ways(secret_service: KeyringSecretStore) -> None:
    """If the store writes directly and keyring's command line reads, or keyring writes and the store reads or
    deletes, then each sees exactly the other's value, and the items carry keyring's own label and attributes."""
    ours, theirs = Secret(token(60, 1)), Secret(token(60, 2))
    secret_service.set("work", "client_secret", ours)
    read = keyring_cli("get", SERVICE, "work/client_secret")
    assert (read.returncode, read.stdout) == (0, ours.reveal() + "\n")

    stored = keyring_cli("set", SERVICE, "work/refresh_token", stdin=theirs.reveal())
    assert stored.returncode == 0, stored.stderr
    assert secret_service.get("work", "refresh_token") == theirs
    # Same label, attributes and collection as keyring's backend gives an item (its `application` included).
    (label, attributes), = raw_items("work/client_secret")
    assert raw_items("work/refresh_token") == [(label.replace("client_secret", "refresh_token"),
                                                dict(attributes, username="work/refresh_token"))]
    assert attributes == {"service": SERVICE, "username": "work/client_secret", "application": APPLICATION}
    assert label == "Password for 'work/client_secret' on 'aadhelper'"

    assert secret_service.delete("work", "refresh_token") is True
    assert keyring_cli("get", SERVICE, "work/refresh_token").returncode == 1
    assert keyring_cli("del", SERVICE, "work/client_secret").returncode == 0
    assert secret_service.get("work", "client_secret") is None


def connection_of(store: KeyringSecretStore) -> tuple[str, str]:
    """The unique bus name of the store's D-Bus connection and the object path of its Secret Service session."""
    link = store._backend._link
    assert link is not None, "not connected"
    return link.collection.connection.unique_name, link.collection.session.object_path


def test_direct_path_keeps_one_connection_and_session(secret_service: KeyringSecretStore) -> None:
    """If the store reads, writes and deletes many times, then all of it goes over the one D-Bus connection and
    Secret Service session it opened first (no new connection or key exchange per call)."""
    secret_service.prepare()
    first = connection_of(secret_service)
    for seed in range(5):
        value = Secret(token(80, seed))
        secret_service.set("work", KIND, value)
        assert secret_service.get("work", KIND) == value
    assert secret_service.delete("work", KIND) is True
    assert connection_of(secret_service) == first
    assert "(direct)" in repr(secret_service)


def close_session(store: KeyringSecretStore) -> None:
    """End the store's Secret Service session on the service side, as a restart of the keyring daemon would."""
    from secretstorage.util import DBusAddressWrapper

    collection = store._backend._link.collection
    DBusAddressWrapper(collection.session.object_path, "org.freedesktop.Secret.Session",
                       collection.connection).call("Close", "")


BREAKAGES: dict[str, Callable[[KeyringSecretStore], None]] = {
    "bus connection dropped": lambda store: store._backend._link.collection.connection.sock.shutdown(socket.SHUT_RDWR),
    "session ended": close_session,
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_broken_connection_is_made_again_once(secret_service: KeyringSecretStore, breakage: str) -> None:
    """If the bus connection or the Secret Service session goes away between calls, then the next call connects
    again and succeeds, and later calls use the new connection."""
    value = Secret(token(50))
    secret_service.set("work", KIND, value)
    before = connection_of(secret_service)
    BREAKAGES[breakage](secret_service)
    assert secret_service.get("work", KIND) == value
    after = connection_of(secret_service)
    assert after != before
    secret_service.set("work", KIND, value)
    assert connection_of(secret_service) == after


def test_concurrent_calls_share_the_connection_one_at_a_time(secret_service: KeyringSecretStore) -> None:
    """If eight threads read different entries over the one connection at once, then every read returns its
    own entry's value (the connection carries one exchange at a time)."""
    values = {f"threads/{index}": token(40, index) for index in range(8)}
    backend = secret_service._keyring()
    for name, value in values.items():
        backend.set_password(SERVICE, name, value)
    wrong: list[str] = []

    def read_many(name: str) -> None:
        try:
            for _ in range(15):
                if backend.get_password(SERVICE, name) != values[name]:
                    wrong.append(name)
        except Exception as exc:
            wrong.append(f"{name}: {exc!r}")

    threads = [threading.Thread(target=read_many, args=(name,), daemon=True) for name in values]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    hung = any(thread.is_alive() for thread in threads)
    if hung:
        secret_service.close()  # the stuck reads fail and their threads end
    try:
        assert not hung, "a read never got its reply"
        assert wrong == []
    finally:
        for name in values:
            backend.delete_password(SERVICE, name)


@pytest.fixture
def backend_env(secret_service: KeyringSecretStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The private gnome-keyring, and no keyring setting from the environment."""
    for name in [name for name in os.environ if name.startswith("KEYRING_PROPERTY_")]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("PYTHON_KEYRING_BACKEND", raising=False)


@pytest.mark.usefixtures("backend_env")
@pytest.mark.parametrize(("variables", "direct"), [
    ({}, True),
    ({"PYTHON_KEYRING_BACKEND": "keyring.backends.SecretService.Keyring"}, True),
    ({"PYTHON_KEYRING_BACKEND": "keyring.backends.SecretService.Keyring", "KEYRING_PROPERTY_APPID": "other"}, False),
    ({"KEYRING_PROPERTY_SCHEME": "default"}, False),
])
def test_secret_service_is_reached_directly_only_as_keyring_would_use_it(
        variables: dict[str, str], direct: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """If nothing or keyring's SecretService backend with its defaults is configured, then the store reaches
    the Secret Service directly; if keyring's backend has properties set, then the store uses keyring's backend;
    either way a value round-trips and keyring reads it."""
    import keyring

    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    backend = choose_backend()
    assert isinstance(backend, SecretServiceKeyring) is direct
    assert KeyringSecretStore(backend=backend).backend_name == "keyring.backends.SecretService.Keyring"
    store = KeyringSecretStore(backend=backend)
    store.set("work", KIND, Secret("value-" + token(30)))
    assert store.get("work", KIND) == Secret(keyring.get_password(SERVICE, f"work/{KIND}") or "")


def test_keyring_config_file_is_where_keyring_reads_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """If XDG_CONFIG_HOME is set or not, then the config file the store looks for is keyring's own."""
    from keyring.util import platform_

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert keyring_config_file() == str(platform_.config_root() / "keyringrc.cfg")
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert keyring_config_file() == str(platform_.config_root() / "keyringrc.cfg")


CONFIGURED_SCRIPT = """
import json, sys
from aadhelper.errors import AadhelperError
from aadhelper.secret_store import open_secret_store
store = open_secret_store()
store.prepare()  # a failure is left for the calls to report
try:
    store.get("work", "client_secret")
    print(json.dumps(["ok", repr(store)]))
except AadhelperError as exc:
    print(json.dumps([exc.code, exc.one_line()]))
"""


@pytest.mark.parametrize(("setting", "expected"), [
    ("config fail", ("keyring_unavailable", "NoKeyringError")),
    ("config secret service", ("ok", "keyring.backends.SecretService.Keyring (direct)")),
    ("env missing module", ("keyring_unavailable", "cannot load the configured keyring backend "
                                                   "(ModuleNotFoundError: No module named 'nowhere')")),
    ("no bus", ("keyring_unavailable", "NoKeyringError")),
])
def test_configured_backend_is_honoured(isolated_env: dict[str, str], require: Callable[[str], None],
                                        setting: str, expected: tuple[str, str]) -> None:
    """If keyring's config file or PYTHON_KEYRING_BACKEND names a backend, then the store uses it (the Secret
    Service one directly), a name that does not load is one clear KeyringUnavailable line, and with no bus at all
    keyring's discovery finds nothing: KeyringUnavailable."""
    require("secret-service")
    env = dict(isolated_env)
    config = Path(env["XDG_CONFIG_HOME"]) / "python_keyring" / "keyringrc.cfg"
    config.parent.mkdir()
    if setting.startswith("config"):
        name = "fail.Keyring" if setting.endswith("fail") else "SecretService.Keyring"
        config.write_text(f"[backend]\ndefault-keyring = keyring.backends.{name}\n")
    elif setting == "env missing module":
        env["PYTHON_KEYRING_BACKEND"] = "nowhere.Keyring"
    else:
        del env["DBUS_SESSION_BUS_ADDRESS"]
    result = subprocess.run([sys.executable, "-c", CONFIGURED_SCRIPT], env=env, capture_output=True, text=True,
                            timeout=60, check=True)
    code, line = json.loads(result.stdout)
    assert code == expected[0] and expected[1] in line, line
    assert "Traceback" not in result.stderr


NO_BACKEND_SCRIPT = """
import json, sys
from aadhelper.errors import AadhelperError
from aadhelper.secret_store import open_secret_store
from aadhelper.tokens import Secret
store = open_secret_store()
for name, call in (("get", lambda: store.get("work", "client_secret")),
                   ("set", lambda: store.set("work", "client_secret", Secret(sys.stdin.read()))),
                   ("delete", lambda: store.delete("work", "client_secret"))):
    try:
        call()
    except AadhelperError as exc:
        print(json.dumps([name, exc.code, exc.one_line()]))
"""


def test_no_keyring_backend_is_keyring_unavailable(isolated_env: dict[str, str]) -> None:
    """If keyring has no backend (PYTHON_KEYRING_BACKEND=fail), then get, set and delete each raise
    KeyringUnavailable with a one-line message naming profile and kind and saying how to fix it."""
    secret = token(50)
    env = dict(isolated_env, PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring")
    result = subprocess.run([sys.executable, "-c", NO_BACKEND_SCRIPT], env=env, input=secret, capture_output=True,
                            text=True, timeout=60, check=True)
    replies = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(name, code) for name, code, _ in replies] == [
        ("get", "keyring_unavailable"), ("set", "keyring_unavailable"), ("delete", "keyring_unavailable")]
    for _, _, line in replies:
        assert "client_secret of profile 'work'" in line and "NoKeyringError" in line
        assert "install and start a Secret Service such as gnome-keyring" in line
        assert "\n" not in line
    assert_no_secret(result.stdout + result.stderr, Secret(secret))


def test_importing_and_opening_the_store_does_not_load_keyring(isolated_env: dict[str, str]) -> None:
    """If a process imports the secret store and opens one, then keyring is still not imported (it costs ~55 ms)."""
    code = ("import sys; from aadhelper.secret_store import open_secret_store; store = open_secret_store(); "
            "print(type(store).__name__, 'keyring' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], env=isolated_env, capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.split() == ["KeyringSecretStore", "False"]


# -- choosing and configuring a store ------------------------------------------------------------------------

@pytest.mark.parametrize(("argument", "env", "expected"), [
    (None, None, KeyringSecretStore), (None, "memory", MemorySecretStore), (None, "keyring", KeyringSecretStore),
    ("memory", "keyring", MemorySecretStore), ("keyring", "memory", KeyringSecretStore),
])
def test_open_secret_store_picks_argument_then_environment(argument: str | None, env: str | None,
                                                           expected: type, monkeypatch: pytest.MonkeyPatch) -> None:
    """If a store kind is passed or AADHELPER_SECRET_STORE is set, then the argument wins, then the variable,
    then the keyring."""
    if env is None:
        monkeypatch.delenv("AADHELPER_SECRET_STORE", raising=False)
    else:
        monkeypatch.setenv("AADHELPER_SECRET_STORE", env)
    assert type(open_secret_store(argument)) is expected


def test_unknown_store_kind_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """If AADHELPER_SECRET_STORE names no known store, then a ConfigError names the variable and the choices."""
    monkeypatch.setenv("AADHELPER_SECRET_STORE", "vault")
    with pytest.raises(ConfigError) as caught:
        open_secret_store()
    assert caught.value.one_line() == "unknown AADHELPER_SECRET_STORE 'vault'; use 'keyring' or 'memory'"


def test_windows_backend_gets_the_credential_manager_limit() -> None:
    """If keyring picks the Windows Credential Manager, then entries are limited to 1280 UTF-16 units."""
    from keyring.backends.Windows import WinVaultKeyring

    store = KeyringSecretStore()
    store._backend = WinVaultKeyring()  # what keyring.get_keyring() returns on Windows
    assert store.max_value_chars == 1280
    assert KeyringSecretStore(max_value_chars=4000).max_value_chars == 4000


@pytest.mark.parametrize("limit", [0, MIN_VALUE_CHARS - 1])
def test_limit_too_small_for_a_header_is_refused(limit: int) -> None:
    """If max_value_chars could not hold a chunk header, then the store refuses it at construction."""
    with pytest.raises(ValueError, match="at least 128"):
        MemorySecretStore(max_value_chars=limit)


@pytest.mark.parametrize("kind", ["", "Client", "a/b", "x#1"])
def test_kind_must_be_an_identifier(kind: str) -> None:
    """If a kind is not a lower-case identifier, then the store refuses it (entry names stay unambiguous)."""
    with pytest.raises(ValueError, match="lower-case identifier"):
        MemorySecretStore().get("work", kind)
