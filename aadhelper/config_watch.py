"""The daemon's view of the configuration file: re-read when it changes, last error kept, changes reported.

One ``stat`` per request tells whether the file changed; a broken file raises its :class:`ConfigError` on
each use (so the user sees it at once) while cached tokens stay in the cache, and profiles whose definition
changed are reported through ``on_profile_changed`` so their tokens are dropped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from .config import Config, load_config
from .errors import ConfigError

log = logging.getLogger("aadhelper.daemon")


class ConfigWatcher:
    """The current configuration, re-read when the file changes (checked with one stat per request)."""

    def __init__(self, path: str, loader: Callable[[str], Config] = load_config) -> None:
        self.path = path
        self._loader = loader
        self._stamp: tuple[int, int, int] | None = None
        self._config: Config | None = None
        self._error: ConfigError | None = None
        self.on_profile_changed: Callable[[str], None] = lambda name: None

    def current(self) -> Config:
        """The configuration now; a broken file raises its ConfigError (cached tokens are kept meanwhile)."""
        stamp = self._file_stamp()
        if stamp != self._stamp or (self._config is None and self._error is None):
            self._load(stamp)
        if self._error is not None:
            raise self._error
        assert self._config is not None
        return self._config

    def reload(self) -> Config:
        self._load(self._file_stamp())
        return self.current()

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_size, info.st_ino)

    def _load(self, stamp: tuple[int, int, int] | None) -> None:
        self._stamp = stamp
        try:
            new = self._loader(self.path)
        except ConfigError as exc:
            if self._error is None or self._error.message != exc.message:
                log.warning("configuration not usable: %s", exc.one_line())
            self._error = exc
            return
        old = self._config
        self._config, self._error = new, None
        if old is not None:
            for name, profile in old.profiles.items():
                if new.profiles.get(name) != profile:
                    self.on_profile_changed(name)
        log.info("configuration %s: %d profile(s)", self.path, len(new.profiles))
