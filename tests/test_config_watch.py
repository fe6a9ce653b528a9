"""ConfigWatcher on real files: the last good configuration serves while the file is broken, errors clear as soon as
the file is fixed, and reading never stalls the event loop."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from aadhelper import config_watch
from aadhelper.config import Config, ConfigUnreadable, load_config_file, parse_config
from aadhelper.config_watch import RECHECK_BROKEN, ConfigWatcher, file_stamp
from aadhelper.errors import ConfigError, UnknownProfile
from tests.harness import in_order

PROFILE = """
[profiles.{name}]
tenant = "contoso.onmicrosoft.com"
client_id = "11111111-2222-3333-4444-555555555555"
scopes = ["https://graph.microsoft.com/.default"]
"""
TWO = PROFILE.format(name="a") + PROFILE.format(name="b")

#: Every way to break a file that held a good configuration, as (description, break it, words of the error).
BREAKERS: dict[str, tuple[Callable[[Path], object], str]] = {
    "garbage": (lambda p: p.write_text("[profiles.a\ntenant = "), "not valid TOML"),
    "invalid value": (lambda p: p.write_text(PROFILE.format(name="a") + "min_valid = -1\n"), "'min_valid'"),
    "not UTF-8": (lambda p: p.write_bytes(b"# \xff\n"), "not UTF-8"),
    # A symlink loop: unreadable even for root (who reads a file of mode 000), as CI runs.
    "unreadable": (in_order(Path.unlink, lambda p: p.symlink_to(p)), "cannot read the config file"),
    "world-writable": (lambda p: p.chmod(0o666), "writable by everyone"),
    "huge": (lambda p: os.truncate(p, 64 * 1024**2), "over the limit"),
    "deleted": (lambda p: p.unlink(), "the config file is missing"),
    "dangling symlink": (in_order(Path.unlink, lambda p: p.symlink_to(p.parent / "gone.toml")), "is a symlink to"),
    "FIFO": (in_order(Path.unlink, lambda p: os.mkfifo(p)), "is a FIFO"),
    "directory": (in_order(Path.unlink, lambda p: p.mkdir()), "is a directory"),
}


def write(path: Path, text: str) -> None:
    """Replace the file as editors do (new inode), private to its owner."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    tmp.replace(path)


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    write(path, TWO)
    return path


@pytest.mark.parametrize("how", list(BREAKERS))
async def test_broken_file_keeps_the_last_good_configuration(config_path: Path, how: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """If a file that held a good configuration breaks (in any of these ways), then the watcher keeps serving that
    configuration without reporting any profile as changed, exposes the error for status, and logs it once."""
    watcher = ConfigWatcher(str(config_path))
    changed: list[str] = []
    watcher.on_profile_changed = changed.append
    good = await watcher.current()
    breaker, words = BREAKERS[how]
    breaker(config_path)
    caplog.set_level(logging.WARNING, "aadhelper.daemon")
    with trio.fail_after(10):
        for _ in range(3):
            assert await watcher.current() is good
    assert changed == []
    assert watcher.error is not None and words in watcher.error.message
    status = watcher.status()
    assert status["config_error"]["code"] == "config" and words in status["config_error"]["message"]
    assert isinstance(status["config_last_good"], int)
    assert [r.getMessage().count(words) for r in caplog.records] == [1]
    assert "still serving the last good configuration (2 profile(s))" in caplog.records[0].getMessage()


async def test_unknown_lookups_while_broken_get_the_file_error(config_path: Path) -> None:
    """If the file is broken, then a profile the last good configuration lacks gets the file's error (the likely
    cause), while one it has is answered; once the file is fine again, an unknown profile is UnknownProfile."""
    watcher = ConfigWatcher(str(config_path))
    await watcher.current()
    config_path.write_text(TWO + PROFILE.format(name="new") + "oops")
    config = await watcher.current()
    with watcher.lookups():
        assert config.profile("a").name == "a"
    with pytest.raises(ConfigError) as caught, watcher.lookups():
        config.profile("new")
    assert type(caught.value) is ConfigError and "not valid TOML" in caught.value.message
    write(config_path, TWO)
    config = await watcher.current()
    with pytest.raises(UnknownProfile), watcher.lookups():
        config.profile("new")


async def test_broken_file_without_a_good_one_raises(tmp_path: Path) -> None:
    """If the file has been broken since the start, then every use raises its ConfigError and status shows it
    without a last good time."""
    path = tmp_path / "config.toml"
    path.write_text("[x")
    watcher = ConfigWatcher(str(path))
    for _ in range(2):
        with pytest.raises(ConfigError, match="not valid TOML"):
            await watcher.current()
    assert "config_last_good" not in watcher.status()
    assert watcher.last_good is None


async def test_fixing_the_file_clears_the_error_and_reports_changed_profiles(config_path: Path) -> None:
    """If a broken file is fixed with one profile edited and one removed, then the error clears at once and exactly
    those two profiles are reported as changed (against the last good configuration)."""
    watcher = ConfigWatcher(str(config_path))
    changed: list[str] = []
    watcher.on_profile_changed = changed.append
    await watcher.current()
    write(config_path, "[x")
    await watcher.current()
    assert changed == []
    write(config_path, PROFILE.format(name="a").replace("contoso", "fabrikam") + PROFILE.format(name="c"))
    config = await watcher.current()
    assert watcher.error is None and watcher.status() == {}
    assert sorted(config.profiles) == ["a", "c"] and sorted(changed) == ["a", "b"]


async def test_chmod_o_w_clears_the_world_writable_error_at_once(config_path: Path) -> None:
    """If the file was refused as world-writable and the user runs the suggested `chmod o-w` (which changes neither
    mtime nor size), then the very next use reads the file again and the error is gone (regression: the error
    stayed until the content changed)."""
    watcher = ConfigWatcher(str(config_path))
    await watcher.current()
    config_path.chmod(0o666)
    await watcher.current()
    assert watcher.error is not None and "chmod o-w" in watcher.error.one_line()
    config_path.chmod(0o644)
    await watcher.current()
    assert watcher.error is None


async def test_deleted_file_is_dropped_only_by_an_explicit_reload(config_path: Path) -> None:
    """If the file is deleted, then the last good configuration keeps serving (no profile reported changed) until an
    explicit reload, which takes the missing file as an empty configuration and reports every profile."""
    watcher = ConfigWatcher(str(config_path))
    changed: list[str] = []
    watcher.on_profile_changed = changed.append
    await watcher.current()
    config_path.unlink()
    assert sorted((await watcher.current()).profiles) == ["a", "b"] and changed == []
    config = await watcher.reload()
    assert dict(config.profiles) == {} and watcher.error is None and sorted(changed) == ["a", "b"]
    assert await watcher.current() is config


async def test_file_emptied_while_rewritten_in_place_is_not_an_empty_configuration(config_path: Path) -> None:
    """If the file is emptied in place (``echo ... > config.toml`` truncates, then writes) and a request reads it in
    between, then the last good configuration keeps serving (no profile reported changed) and stays the one kept
    when garbage follows; an explicit reload still takes the empty file as an empty configuration. (Found by the
    fault suite: every profile was dropped, and the garbage that followed kept the empty one as the last good.)"""
    watcher = ConfigWatcher(str(config_path))
    changed: list[str] = []
    watcher.on_profile_changed = changed.append
    await watcher.current()
    with config_path.open("w"):
        pass
    assert sorted((await watcher.current()).profiles) == ["a", "b"] and changed == []
    assert watcher.error is not None and "is empty" in watcher.error.message
    config_path.write_text("[profiles.a\ntenant = ")
    assert sorted((await watcher.current()).profiles) == ["a", "b"] and changed == []
    with config_path.open("w"):
        pass
    config = await watcher.reload()
    assert dict(config.profiles) == {} and watcher.error is None and sorted(changed) == ["a", "b"]


async def test_file_that_never_existed_is_an_empty_configuration(tmp_path: Path) -> None:
    """If there is no config file (a new user), then the configuration is empty and no error is reported; a file
    written later is picked up."""
    path = tmp_path / "config.toml"
    watcher = ConfigWatcher(str(path))
    assert dict((await watcher.current()).profiles) == {} and watcher.error is None
    write(path, TWO)
    assert sorted((await watcher.current()).profiles) == ["a", "b"]


async def test_reload_of_a_broken_file_raises_but_keeps_the_last_good(config_path: Path) -> None:
    """If the user asks for a reload while the file is broken, then the reload raises the file's error and the last
    good configuration still serves."""
    watcher = ConfigWatcher(str(config_path))
    good = await watcher.current()
    write(config_path, "[x")
    with pytest.raises(ConfigError, match="not valid TOML"):
        await watcher.reload()
    assert await watcher.current() is good


async def test_unchanged_file_is_read_once_and_each_request_costs_one_stat(config_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """If the file does not change, then it is read once, however many requests use it, and each request costs
    exactly one stat (the hot path that scripts/bench measures)."""
    reads: list[str] = []
    stats: list[str] = []

    def loader(path: str) -> Config | None:
        reads.append(path)
        return load_config_file(path)

    def counting_stamp(path: str) -> tuple[int, ...]:
        stats.append(path)
        return file_stamp(path)

    monkeypatch.setattr(config_watch, "file_stamp", counting_stamp)
    watcher = ConfigWatcher(str(config_path), loader)
    await watcher.current()
    stats.clear()
    for _ in range(50):
        await watcher.current()
    assert len(reads) == 1 and len(stats) == 50


async def test_unreadable_file_with_an_unchanged_stamp_is_retried_after_a_pause(
        config_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """If reading fails for a cause the file's stamp does not show (out of file descriptors, I/O error), then the
    file is read again after RECHECK_BROKEN seconds, not on every request and not only after the file changes."""
    too_many = ConfigUnreadable("cannot read the config file: Too many open files")
    outcomes: list[Config | ConfigError] = [too_many]

    def loader(path: str) -> Config | None:
        outcome = outcomes.pop(0) if outcomes else parse_config(TWO, path, {})
        if isinstance(outcome, ConfigError):
            raise outcome
        return outcome

    watcher = ConfigWatcher(str(config_path), loader)
    with pytest.raises(ConfigUnreadable):
        await watcher.current()
    outcomes.append(too_many)
    await trio.sleep(RECHECK_BROKEN / 2)
    with pytest.raises(ConfigUnreadable):
        await watcher.current()
    assert len(outcomes) == 1  # not read again yet
    await trio.sleep(RECHECK_BROKEN / 2)
    with pytest.raises(ConfigUnreadable):
        await watcher.current()
    assert outcomes == []
    await trio.sleep(RECHECK_BROKEN)
    assert sorted((await watcher.current()).profiles) == ["a", "b"] and watcher.error is None


async def test_bad_content_is_not_parsed_again_until_the_file_changes(config_path: Path,
                                                                     autojump_clock: trio.testing.MockClock) -> None:
    """If the file's content is bad, then requests do not parse it again while its stamp stays the same (a 1 MiB
    file takes ~0.5 s to parse), however long they keep coming; a change is read at once."""
    reads: list[str] = []

    def loader(path: str) -> Config | None:
        reads.append(path)
        return load_config_file(path)

    config_path.write_text("[x")
    watcher = ConfigWatcher(str(config_path), loader)
    for _ in range(20):
        with pytest.raises(ConfigError, match="not valid TOML"):
            await watcher.current()
        await trio.sleep(RECHECK_BROKEN)
    assert len(reads) == 1
    write(config_path, TWO)
    assert sorted((await watcher.current()).profiles) == ["a", "b"] and len(reads) == 2


async def test_reading_runs_off_the_event_loop_once_for_concurrent_requests(config_path: Path) -> None:
    """If reading the file stalls (a slow file system), then other tasks keep running meanwhile, and all the requests
    that arrive during the read wait for that one read instead of starting their own."""
    release = threading.Event()
    reads: list[str] = []

    def slow_loader(path: str) -> Config | None:
        reads.append(path)
        assert release.wait(10)
        return load_config_file(path)

    watcher = ConfigWatcher(str(config_path), slow_loader)
    results: list[Config] = []

    async def request() -> None:
        results.append(await watcher.current())

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(request)
            while not reads:
                await trio.sleep(0.01)  # the loop runs while the read is stalled
            await trio.sleep(0.05)
            release.set()
    assert len(reads) == 1 and len(results) == 5 and len({id(r) for r in results}) == 1


def traceback_length(exc: BaseException) -> int:
    length, tb = 0, exc.__traceback__
    while tb is not None:
        length, tb = length + 1, tb.tb_next
    return length


@pytest.mark.parametrize("good_first", [False, True])
async def test_raising_the_file_error_again_and_again_holds_no_more_memory(config_path: Path,
                                                                          good_first: bool) -> None:
    """If requests keep hitting a broken file's error (never a good one, or an unknown profile while the last good
    one serves), then the one error object they all get does not grow: its traceback is that of one raise, not a
    chain of every request's frames."""
    watcher = ConfigWatcher(str(config_path))
    if good_first:
        await watcher.current()
    write(config_path, "[x")
    lengths = []
    for _ in range(200):
        with pytest.raises(ConfigError) as caught:
            config = await watcher.current()
            with watcher.lookups():
                config.profile("nosuch")
        lengths.append(traceback_length(caught.value))
    assert caught.value is watcher.error and max(lengths) == lengths[0]
