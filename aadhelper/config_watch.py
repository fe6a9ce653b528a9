"""The daemon's view of the configuration file: re-read when it changes, the last good configuration kept while the
file is broken.

**Checking** costs one ``stat`` per request: the file's stamp (device, inode, size, mtime, ctime, mode, owner) is
compared with the one last read. ctime, mode and owner are in it so that ``chmod o-w`` (the fix the daemon itself
suggests for a world-writable file) or a ``chown`` is seen at once, though neither changes mtime or size. When the stamp
changed, the file is read and parsed in a worker thread, one load at a time, and the requests that noticed wait for
that load: parsing a large file takes ~0.5 s and a FUSE or network file system can stall a read, and neither may stop
the event loop. The read itself never blocks on a FIFO or device and is bounded in size
(:func:`aadhelper.config.read_config_file`).

**While the file is broken** (unreadable, not TOML, invalid values, too large, not a regular file, of another user or
writable by everyone, missing or emptied after it held profiles) the daemon keeps serving with the last good
configuration:

- requests for profiles and git URLs it knows are answered from it, so cached tokens stay cached and keep being
  refreshed; a request it cannot answer gets the file's error (exit 3), the likely cause, not "unknown profile";
- the error is logged once per distinct error and shown by ``status`` (``daemon.config_error``, plus
  ``daemon.config_last_good``: when the configuration still in use was read);
- when there has never been a good configuration, every request gets the file's error.

A broken file is read again as soon as its stamp changes. A file that could not be opened or read at all
(:class:`~aadhelper.config.ConfigUnreadable`: out of file descriptors, an I/O error) is also read again every
:data:`RECHECK_BROKEN` seconds while requests come, because such causes leave no trace in the stamp; a bad content
is not re-parsed until the file changes (parsing 1 MiB takes ~0.5 s).

**A deleted file** (or a symlink whose target is gone) counts as broken, not as "no profiles any more": editors,
dotfile managers and sync tools remove and re-create files, a home directory may be briefly unmounted, and dropping
every cached token on such a blip would send each profile back to the authority, or a user back to an interactive
login. This is what users of long-running agents expect (gpg-agent and the systemd units of ssh-agent-like daemons
re-read their configuration when told to); tools that read their configuration per call (aws-vault, Git Credential
Manager) have no tokens in memory to lose. Removing the file on purpose takes effect on an explicit reload
(``systemctl --user reload aadhelper``, SIGHUP, the ``reload`` request) or a restart, which take a missing file as
an empty configuration. A file that has not existed since the daemon started is simply an empty configuration (a new
user has none yet).

Profiles whose definition changed between two good configurations are reported through ``on_profile_changed`` (the
daemon drops their tokens); a broken file reports nothing.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import trio

from .config import Config, ConfigUnreadable, load_config_file, parse_config
from .errors import ConfigError

log = logging.getLogger("aadhelper.daemon")

#: Seconds between two reads of an unreadable file whose stamp did not change (only while requests come).
RECHECK_BROKEN = 1.0

_Stamp = tuple[int, ...]
_NEVER: _Stamp = ()  # no read yet: differs from every stamp


def file_stamp(path: str) -> _Stamp:
    """What tells that the file (or what its symlink points to) changed; one ``stat``."""
    try:
        info = os.stat(path)
    except OSError as exc:
        return (-1, exc.errno or 0)
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_mode, info.st_uid)


class ConfigWatcher:
    """The configuration to serve with: the file's, re-read when it changes, or the last good one while it is broken."""

    def __init__(self, path: str, loader: Callable[[str], Config | None] = load_config_file) -> None:
        self.path = path
        self._loader = loader
        self._stamp = _NEVER
        self._checked = -math.inf  # trio time of the last read
        self._lock = trio.Lock()
        self._config: Config | None = None  # the last good configuration
        self._config_read_at: float | None = None  # wall-clock time it was read
        self._from_file = False  # whether it came from an existing file (so that a missing file is a fault)
        self._error: ConfigError | None = None  # what is wrong with the file now
        self.on_profile_changed: Callable[[str], None] = lambda name: None
        self._lookups = _BlameBrokenFile(self)

    @property
    def error(self) -> ConfigError | None:
        """What is wrong with the file now (None when the configuration in use is the file's)."""
        return self._error

    @property
    def last_good(self) -> Config | None:
        """The configuration in use: the file's, or the last good one while the file is broken."""
        return self._config

    def status(self) -> dict[str, Any]:
        """The ``daemon`` fields of a status reply about the file: nothing while it is fine."""
        if self._error is None:
            return {}
        fields: dict[str, Any] = {"config_error": self._error.to_wire()}
        if self._config_read_at is not None:
            fields["config_last_good"] = int(self._config_read_at)
        return fields

    async def current(self) -> Config:
        """The configuration to serve with; raises the file's ConfigError only when there never was a good one."""
        if self._due():
            async with self._lock:
                if self._due():  # not if another request read it while this one waited
                    await self._load(explicit=False)
        if self._config is None:
            assert self._error is not None
            raise self._error.with_traceback(None)  # see _BlameBrokenFile
        return self._config

    def lookups(self) -> contextlib.AbstractContextManager[None]:
        """Around looking a profile or URL up in :meth:`current`'s configuration: while the file is broken, a
        ConfigError (unknown profile, unmapped URL) becomes the file's own error, its likely cause."""
        return self._lookups

    async def reload(self) -> Config:
        """Read the file now, as the user asked: a missing file is an empty configuration; a broken one raises its
        error (the last good configuration stays in use)."""
        async with self._lock:
            await self._load(explicit=True)
        if self._error is not None:
            raise self._error.with_traceback(None)
        assert self._config is not None
        return self._config

    def _due(self) -> bool:
        if file_stamp(self.path) != self._stamp:
            return True
        return isinstance(self._error, ConfigUnreadable) and trio.current_time() - self._checked >= RECHECK_BROKEN

    async def _load(self, *, explicit: bool) -> None:
        # Stamp first: a change while the file is read then shows up on the next request. Kept only once the
        # read is done, so a read cut short by cancellation is not taken for an up-to-date one.
        stamp, checked = file_stamp(self.path), trio.current_time()
        try:
            new = await trio.to_thread.run_sync(self._loader, self.path)
            from_file = new is not None
            if new is None:
                if self._from_file and not explicit:
                    raise _missing(self.path)
                new = parse_config("", self.path)
            elif not explicit and _emptied(stamp) and not new.profiles and self._config and self._config.profiles:
                # Mid-rewrite (`echo ... > file` truncates first): taking it would drop every profile and make the
                # empty configuration the last good one. Like a deleted file, only an explicit reload empties it.
                raise ConfigError(f"{self.path}: the config file is empty",
                                  hint="write it again; if you emptied it on purpose, reload the daemon (SIGHUP)")
        except ConfigError as exc:
            self._stamp, self._checked = stamp, checked
            self._set_error(exc)
            return
        self._stamp, self._checked = stamp, checked
        old, was_broken = self._config, self._error is not None
        self._config, self._config_read_at, self._from_file, self._error = new, time.time(), from_file, None
        if old is not None:
            for name, profile in old.profiles.items():
                if new.profiles.get(name) != profile:
                    self.on_profile_changed(name)
        log.info("configuration %s%s: %d profile(s)", self.path, " usable again" if was_broken else "",
                 len(new.profiles))

    def _set_error(self, exc: ConfigError) -> None:
        if self._error is None or self._error.message != exc.message:
            kept = "" if self._config is None else \
                f"; still serving the last good configuration ({len(self._config.profiles)} profile(s))"
            log.warning("configuration not usable: %s%s", exc.one_line(), kept)
        self._error = exc


class _BlameBrokenFile(contextlib.AbstractContextManager[None]):
    """:meth:`ConfigWatcher.lookups` (a class, not a generator: it is on every request's path)."""

    def __init__(self, watcher: ConfigWatcher) -> None:
        self._watcher = watcher

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        error = self._watcher.error
        if isinstance(exc, ConfigError) and error is not None:
            # One error object is raised for every request while the file is broken: each raise would add its
            # frames (and their locals) to the traceback it already carries, without bound.
            raise error.with_traceback(None) from None


def _emptied(stamp: _Stamp) -> bool:
    """Whether the stamp is of an existing file of size 0."""
    return len(stamp) > 2 and stamp[2] == 0


def _missing(path: str) -> ConfigError:
    where = "is missing"
    with contextlib.suppress(OSError):
        where = f"is a symlink to {os.readlink(path)!r}, which does not exist"
    return ConfigError(f"{path}: the config file {where}",
                       hint="restore it; if you removed it on purpose, reload the daemon (SIGHUP, e.g. "
                            "`systemctl --user reload aadhelper`) to drop its profiles")


__all__ = ["RECHECK_BROKEN", "ConfigWatcher", "file_stamp"]
