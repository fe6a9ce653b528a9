"""Who each user profile is signed in as: the account (UPN) and tenant the id token named at ``aadhelper login``,
kept so that ``status`` and ``profile show`` can say it without asking the keyring or the authority.

Not secret (an account name and a tenant id, as ``az account show`` prints), but private: one JSON file,
``<state dir>/accounts.json``, mode 0600 in the 0700 state directory, replaced atomically. ``login`` records,
``logout`` and ``profile remove`` forget. The refresh token itself lives only in the keyring; this file is a
label beside it and decides nothing (a missing or unreadable file only means "account unknown").
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from . import paths

FILE_NAME = "accounts.json"
#: A sign-in record: at most this many bytes of file are read (a real one holds a few hundred per profile).
MAX_BYTES = 1024 * 1024


def file_path() -> str:
    return os.path.join(paths.state_dir(), FILE_NAME)


def read_all() -> dict[str, dict[str, Any]]:
    """Profile name -> {"account", "tenant", "signed_in_at"}; empty when there is no (usable) file."""
    try:
        with open(file_path(), "rb") as file:
            data = json.loads(file.read(MAX_BYTES + 1)[:MAX_BYTES])
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {name: entry for name, entry in data.items() if isinstance(name, str) and isinstance(entry, dict)}


def sign_in_of(profile: str) -> dict[str, Any] | None:
    """The recorded sign-in of ``profile``, or None."""
    return read_all().get(profile)


def record(profile: str, *, account: str | None, tenant: str | None) -> None:
    """Remember who signed in to ``profile`` (now)."""
    entries = read_all()
    entries[profile] = {"account": account, "tenant": tenant, "signed_in_at": int(time.time())}
    _write(entries)


def forget(profile: str) -> None:
    """Drop ``profile``'s record, if any."""
    entries = read_all()
    if entries.pop(profile, None) is not None:
        _write(entries)


def _write(entries: dict[str, dict[str, Any]]) -> None:
    directory = paths.ensure_private_dir(paths.state_dir())
    paths.write_file_atomically(os.path.join(directory, FILE_NAME), json.dumps(entries, indent=1, sort_keys=True))
