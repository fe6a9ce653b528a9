"""The secret store's backends: how it reaches the Secret Service directly, and how a store and backend are chosen.

The direct path runs on the real gnome-keyring (run under scripts/with-secret-service). It is checked against
keyring itself (each reads what the other wrote, and its items look like keyring's), for keeping one connection
and session, for recovering a broken connection, and for sharing that connection between threads. Choosing and
configuring covers when keyring's SecretService backend is bypassed, keyring's config file and
PYTHON_KEYRING_BACKEND, having no backend at all, AADHELPER_SECRET_STORE, the Windows entry limit, and the
arguments a store refuses. The contract every store keeps is in test_secret_store.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from aadhelper import paths
from aadhelper.errors import ConfigError
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
from tests.harness import GRAPH_PROFILE, KIND, assert_no_secret, cli_env, run, token

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


#: What our line says for keyring's NoKeyringError (its own text is advice for keyring's users: secret_store._describe).
NO_BACKEND = "(keyring found no Secret Service or other usable backend)"


@pytest.mark.parametrize(("setting", "expected"), [
    ("config fail", ("keyring_unavailable", NO_BACKEND)),
    ("config secret service", ("ok", "keyring.backends.SecretService.Keyring (direct)")),
    ("env missing module", ("keyring_unavailable", "cannot load the configured keyring backend "
                                                   "(ModuleNotFoundError: No module named 'nowhere')")),
    ("no bus", ("keyring_unavailable", NO_BACKEND)),
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
        assert "client_secret of profile 'work'" in line and NO_BACKEND in line
        assert "PYTHON_KEYRING_BACKEND" in line and '"Headless machines" in aadhelper\'s README' in line
        assert "\n" not in line
    assert_no_secret(result.stdout + result.stderr, Secret(secret))


def test_backend_asking_for_its_password_without_a_terminal_is_one_line(isolated_env: dict[str, str]) -> None:
    """If the keyring backend asks for its own password with getpass (keyrings.alt's EncryptedKeyring) and there is
    no terminal, then `secret set` ends with one KeyringLocked line (exit 4) naming the profile and what to do, not
    getpass's EOFError traceback, and the secret is not shown."""
    secret = token(40)
    env = cli_env(isolated_env)
    assert run(env, *GRAPH_PROFILE).returncode == 0
    env.update(PYTHON_KEYRING_BACKEND="tests.prompting_keyring.PromptingKeyring", AADHELPER_SECRET_STORE="keyring",
               PYTHONPATH=str(Path(__file__).parent.parent))
    result = subprocess.run([*paths.console_script(), "secret", "set", "graph"], env=env, input=secret + "\n",
                            capture_output=True, text=True, timeout=60, check=False,
                            start_new_session=True)  # no controlling terminal: getpass falls back to stdin
    assert result.returncode == 4 and "Traceback" not in result.stderr, result.stderr
    # Before it, only what getpass itself wrote: its warning and the backend's prompt (no newline after it).
    assert result.stderr.count("aadhelper: ") == 1 and result.stderr.endswith("\n"), result.stderr
    ours = "aadhelper: " + result.stderr.split("aadhelper: ")[1]
    assert ours.count("\n") == 1 and ours.startswith("aadhelper: the OS keyring is locked: cannot store the "
                                                      "client_secret of profile 'graph'")
    assert "run the command in a terminal" in ours
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
