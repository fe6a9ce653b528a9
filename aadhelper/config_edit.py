"""Changing the config file in place (profiles, git URLs, the default) while keeping the user's comments and layout.

Edits go through tomlkit (round-trip TOML); reads elsewhere use tomllib. Each edit runs under an exclusive lock
on the config directory, is validated by :func:`aadhelper.config.parse_config` before anything is written, and
replaces the file atomically (temp file + rename, mode 0600; a missing directory is created 0700). A symlinked
config file (dotfile managers) is edited at its target. Every function returns the new :class:`Config`.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from typing import Any

import tomlkit
import tomlkit.exceptions
from tomlkit.items import AoT

from . import paths
from .config import Config, parse_config, parse_toml, unknown_profile
from .errors import ConfigError
from .urls import normalize_git_url

_Table = MutableMapping[str, Any]


def add_profile(path: str | None, name: str, *, tenant: str | None, client_id: str | None, scopes: Sequence[str],
                authority: str | None = None, credential: str = "client_secret", min_valid: int | None = None,
                ca_bundle: str | None = None, git_urls: Sequence[str] = (), git_username: str | None = None,
                make_default: bool = False, replace: bool = False,
                environ: Mapping[str, str] = os.environ, options: Mapping[str, object] | None = None) -> Config:
    """Add profile ``name`` (an error if it exists, unless ``replace``). The first profile becomes the default.

    ``tenant`` and ``client_id`` may be None for the kinds that need none (managed identity). ``options``: more keys
    of the credential kind (e.g. ``certificate_path``), written as given (None: left out) and checked like the rest
    when the result is parsed."""

    def change(doc: tomlkit.TOMLDocument, where: str) -> None:
        profiles = _profiles(doc, where, create=True)
        if name in profiles and not replace:
            raise ConfigError(f"{where}: profile {name!r} already exists", profile=name,
                              hint="pass --replace to overwrite it, `aadhelper profile set` to change single "
                                   "settings, or choose another name")
        # --replace without --git-url keeps the git mappings: a re-add with new settings must not silently cut git
        # remotes off (what `profile add --replace` once did); given --git-url values replace them.
        kept_git = _git_entries(profiles[name], where, name) if name in profiles and not git_urls else []
        before = list(profiles)
        table = tomlkit.table()
        for key, text in (("tenant", tenant), ("client_id", client_id)):
            if text is not None:
                table[key] = text
        table["scopes"] = list(scopes)
        table["credential"] = credential
        for key, value in (("authority", authority), ("min_valid", min_valid), ("ca_bundle", ca_bundle),
                           *(options or {}).items()):
            if value is not None:
                table[key] = value
        table.add(tomlkit.nl())
        for url in git_urls:
            _set_git_url(table, where, name, url, git_username)
        if kept_git:
            table["git"] = AoT([_copy_table(entry) for entry in kept_git])
        _end_with_blank_line(table)
        profiles[name] = table
        if make_default:
            doc["default_profile"] = name
        elif "default_profile" not in doc and len(before) <= 1:
            # Pin the default that held so far (the only profile) so a second profile does not unset it.
            doc["default_profile"] = before[0] if before else name

    return _edit(path, environ, change)


def set_profile(path: str | None, name: str, settings: Mapping[str, object], unset: Sequence[str] = (), *,
                environ: Mapping[str, str] = os.environ) -> Config:
    """Change single settings of profile ``name`` in place (its git mappings, other keys and comments stay);
    ``unset`` keys are removed, so their default applies again. The result is validated like every edit."""
    if "git" in settings or "git" in unset:
        raise ConfigError("git URL mappings are changed with `aadhelper profile git-url add|remove`", profile=name)

    def change(doc: tomlkit.TOMLDocument, where: str) -> None:
        table = _profile(_profiles(doc, where, create=False), where, name)
        for key in unset:
            if key in table:
                del table[key]
        for key, value in settings.items():
            table[key] = list(value) if isinstance(value, (list, tuple)) else value

    return _edit(path, environ, change)


def _copy_table(entry: object) -> Any:
    """A fresh tomlkit table with ``entry``'s keys (an item cannot belong to two documents' tables)."""
    copy = tomlkit.table()
    if isinstance(entry, Mapping):
        for key, value in entry.items():
            copy[key] = value.unwrap() if hasattr(value, "unwrap") else value
    return copy


def remove_profile(path: str | None, name: str, *, environ: Mapping[str, str] = os.environ) -> Config:
    """Remove profile ``name``; when it was the default, the default key goes too."""

    def change(doc: tomlkit.TOMLDocument, where: str) -> None:
        profiles = _profiles(doc, where, create=False)
        _profile(profiles, where, name)
        del profiles[name]
        if doc.get("default_profile") == name:
            del doc["default_profile"]

    return _edit(path, environ, change)


def set_default_profile(path: str | None, name: str, *, environ: Mapping[str, str] = os.environ) -> Config:
    """Make ``name`` the default profile."""

    def change(doc: tomlkit.TOMLDocument, where: str) -> None:
        _profile(_profiles(doc, where, create=False), where, name)
        doc["default_profile"] = name

    return _edit(path, environ, change)


def add_git_url(path: str | None, name: str, url: str, username: str | None = None, *,
                environ: Mapping[str, str] = os.environ) -> Config:
    """Map git remotes under ``url`` to profile ``name``; an existing mapping of the same URL gets the new username."""

    def change(doc: tomlkit.TOMLDocument, where: str) -> None:
        table = _profile(_profiles(doc, where, create=False), where, name)
        _set_git_url(table, where, name, url, username)
        _end_with_blank_line(table)

    return _edit(path, environ, change)


def remove_git_url(path: str | None, name: str, url: str, *, environ: Mapping[str, str] = os.environ) -> Config:
    """Remove the mapping of ``url`` (compared in normalised form) from profile ``name``."""

    def change(doc: tomlkit.TOMLDocument, where: str) -> None:
        table = _profile(_profiles(doc, where, create=False), where, name)
        entries = _git_entries(table, where, name)
        wanted = _normalise(url, where, name)
        for index, entry in enumerate(entries):
            if _entry_url(entry) == wanted:
                del entries[index]
                break
        else:
            mapped = ", ".join(filter(None, map(_entry_url, entries))) or "none"
            raise ConfigError(f"{where}: profile {name!r}: git URL {wanted!r} is not mapped (mapped: {mapped})",
                              profile=name)
        if not entries:
            del table["git"]

    return _edit(path, environ, change)


def _edit(path: str | None, environ: Mapping[str, str],
          change: Callable[[tomlkit.TOMLDocument, str], None]) -> Config:
    """Read, change, validate, write: the one read-modify-write cycle every edit goes through."""
    where = path or paths.config_file()
    target = os.path.realpath(where)
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        paths.ensure_private_dir(directory)
    try:
        with _locked(directory):
            try:
                with open(target, encoding="utf-8") as file:
                    text = file.read()
            except FileNotFoundError:
                text = ""
            # tomllib first: its syntax errors carry line and column in the same words load_config uses.
            parse_toml(text, where)
            try:
                doc = tomlkit.parse(text)
            except tomlkit.exceptions.TOMLKitError as exc:
                raise ConfigError(f"{where}: cannot edit this TOML: {exc}") from None
            change(doc, where)
            new_text = doc.as_string()
            # The file's own content is checked; not this shell's proxy variables, which are not the daemon's
            # start environment (`proxy_from_environment` reads those where the daemon starts).
            config = parse_config(new_text, where, environ, proxy_environ={})
            paths.write_file_atomically(target, new_text)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not UTF-8 text (bad byte at offset {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot update the config file: {exc.strerror or exc}") from None
    return config


@contextmanager
def _locked(directory: str) -> Iterator[None]:
    # flock on the directory itself: no lock file left behind, released when the fd closes (even on a crash).
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _profiles(doc: tomlkit.TOMLDocument, where: str, *, create: bool) -> _Table:
    if "profiles" not in doc and create:
        # A super table renders as [profiles.NAME] headers without an empty [profiles] above them.
        doc["profiles"] = tomlkit.table(is_super_table=True)
    profiles = doc.get("profiles", {})
    if not isinstance(profiles, MutableMapping):
        raise ConfigError(f"{where}: key 'profiles' must be a table ([profiles.NAME])")
    return profiles


def _profile(profiles: _Table, where: str, name: str) -> _Table:
    table = profiles.get(name)
    if table is None:
        raise unknown_profile(where, name, profiles)
    if not isinstance(table, MutableMapping):
        raise ConfigError(f"{where}: profile {name!r} must be a table ([profiles.NAME])", profile=name)
    return table


def _git_entries(table: _Table, where: str, name: str) -> list[Any]:
    entries = table.get("git")
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: profile {name!r}: key 'git' must be an array of tables ([[profiles.NAME.git]])",
                          profile=name)
    return entries


def _set_git_url(table: _Table, where: str, name: str, url: str, username: str | None) -> None:
    normalised = _normalise(url, where, name)
    for entry in _git_entries(table, where, name):
        if _entry_url(entry) == normalised:
            if username is not None:
                entry["username"] = username
            elif "username" in entry:
                del entry["username"]
            return
    entry = tomlkit.table()
    entry["url"] = normalised
    if username is not None:
        entry["username"] = username
    if "git" not in table:
        table["git"] = AoT([])
    table["git"].append(entry)


def _end_with_blank_line(table: _Table) -> None:
    # tomlkit separates entries it renders itself but not the last one from whatever table follows it.
    entries = table.get("git")
    if entries and not entries[-1].as_string().endswith("\n\n"):
        entries[-1].add(tomlkit.nl())


def _normalise(url: str, where: str, name: str) -> str:
    try:
        return normalize_git_url(url)
    except ValueError as exc:
        raise ConfigError(f"{where}: profile {name!r}: git mapping: key 'url' {exc}", profile=name) from None


def _entry_url(entry: object) -> str | None:
    """An existing entry's URL in normalised form; None for an entry that is not a valid mapping."""
    url = entry.get("url") if isinstance(entry, Mapping) else None
    try:
        return normalize_git_url(url) if isinstance(url, str) else None
    except ValueError:
        return None
