"""TempKeyring: a keyring backend in one private JSON file, so a daemon in a temporary home never touches yours.

Selected through keyring's own variable, with the file named by a second one (the backend refuses to load without
it, so it can never write plaintext somewhere unplanned)::

    PYTHON_KEYRING_BACKEND=aadhelper.testing.keyring_file.TempKeyring
    AADHELPER_TESTING_KEYRING=/tmp/.../keyring.json

Every process of that environment (``aadhelper secret set``, ``aadhelper login``, the daemon and its fetcher)
then shares the file. Writes replace the file atomically under an exclusive lock; the file is created 0600.
**Plaintext, for tests only.** :func:`keyring_environ` gives the two variables.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator

from jaraco.classes import properties
from keyring.backend import KeyringBackend
from keyring.errors import PasswordDeleteError

#: The variable naming the JSON file.
FILE_ENV = "AADHELPER_TESTING_KEYRING"
#: keyring's name for this backend (the value of ``PYTHON_KEYRING_BACKEND``).
BACKEND = f"{__name__}.TempKeyring"


def keyring_environ(path: str | os.PathLike[str]) -> dict[str, str]:
    """The variables that make aadhelper (through keyring) keep its secrets in the file ``path``."""
    return {"PYTHON_KEYRING_BACKEND": BACKEND, FILE_ENV: os.fspath(path)}


class TempKeyring(KeyringBackend):
    """Entries as ``{"service": {"username": "password"}}`` in the file ``$AADHELPER_TESTING_KEYRING``."""

    # keyring reads ``priority`` to decide whether a backend is viable: only with the file named. Low, so that
    # keyring's own discovery would never prefer it even where this module happens to be imported.
    @properties.classproperty
    def priority(cls) -> float:
        if not os.environ.get(FILE_ENV):
            raise RuntimeError(f"{FILE_ENV} does not name the test keyring's file")
        return 0.1

    def __init__(self) -> None:
        self.priority  # noqa: B018 -- refuses without the file's variable
        super().__init__()  # type: ignore[no-untyped-call]  # keyring's own __init__ is unannotated
        self.path = os.environ[FILE_ENV]

    def get_password(self, service: str, username: str) -> str | None:
        with self._locked() as entries:
            return entries.get(service, {}).get(username)

    def set_password(self, service: str, username: str, password: str) -> None:
        with self._locked(write=True) as entries:
            entries.setdefault(service, {})[username] = password

    def delete_password(self, service: str, username: str) -> None:
        with self._locked(write=True) as entries:
            if username not in entries.get(service, {}):
                raise PasswordDeleteError("no such entry")
            del entries[service][username]

    @contextlib.contextmanager
    def _locked(self, write: bool = False) -> Iterator[dict[str, dict[str, str]]]:
        # A separate lock file: the data file itself is replaced on every write.
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                with open(self.path, encoding="utf-8") as file:
                    entries: dict[str, dict[str, str]] = json.load(file)
            except FileNotFoundError:
                entries = {}
            yield entries
            if write:
                temporary = f"{self.path}.{os.getpid()}.tmp"
                with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w",
                          encoding="utf-8") as file:
                    json.dump(entries, file)
                os.replace(temporary, self.path)
        finally:
            os.close(fd)
