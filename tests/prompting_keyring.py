"""A keyring backend that asks for its own password with getpass on first use, as keyrings.alt's EncryptedKeyring
does (``_get_new_password``/``_unlock``), without its crypto dependencies: loaded only by the processes a test
starts with ``PYTHON_KEYRING_BACKEND=tests.prompting_keyring.PromptingKeyring`` (keyring registers every backend
class that is defined, so nothing else imports this module)."""

from __future__ import annotations

import getpass

from keyring.backend import KeyringBackend


class PromptingKeyring(KeyringBackend):
    """Unlocked by a password typed at the terminal, as EncryptedKeyring is; stores nothing."""

    priority = 1

    def _unlock(self) -> None:
        getpass.getpass("Please enter password for encrypted keyring: ")

    def get_password(self, service: str, username: str) -> str | None:
        self._unlock()
        return None

    def set_password(self, service: str, username: str, password: str) -> None:
        self._unlock()

    def delete_password(self, service: str, username: str) -> None:
        self._unlock()
