"""doctor's check of git's configuration for each mapped URL, read as git reads it."""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import urllib.parse
from collections.abc import Sequence

from .. import git_helper, paths
from ..config import Profile
from .findings import COMMAND_TIMEOUT, Finding, Status, worst

#: What ``git config --get-regexp`` is asked for: every helper and useHttpPath setting, for any URL or none.
_GIT_KEYS = r"^credential\..*(helper|usehttppath)$"
_TRUE = frozenset({"true", "yes", "on", "1"})


def check_git(profiles: Sequence[Profile]) -> list[Finding]:
    """For each git URL mapping: the helper list git builds for it (as git does: every matching entry, in order, an
    empty value resetting it) must hold aadhelper alone after a reset, and useHttpPath must be on for a prefix with
    a path."""
    git = shutil.which("git")
    if git is None:
        return [Finding("git", "warn", "git is not on PATH: cannot check its configuration")]
    try:
        result = subprocess.run([git, "config", "--null", "--get-regexp", _GIT_KEYS], capture_output=True,
                                timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return [Finding("git", "warn", f"`git config` did not answer within {COMMAND_TIMEOUT:g} s")]
    if result.returncode not in (0, 1):  # 1: no such keys
        reason = result.stderr.decode(errors="replace").strip().partition("\n")[0]
        return [Finding("git", "fail", f"git cannot read its configuration: {reason}", "fix the file git names")]
    entries = _parse_git_entries(result.stdout)
    return [_check_mapping(profile, url.url, entries) for profile in profiles for url in profile.git_urls]


def _parse_git_entries(output: bytes) -> list[tuple[str, str, str | None]]:
    """(URL pattern or "", "helper" or "usehttppath", value or None) for each entry, in git's order."""
    entries = []
    for item in output.decode(errors="replace").split("\0"):
        if not item:
            continue
        key, newline, value = item.partition("\n")
        middle, _, name = key.removeprefix("credential.").rpartition(".")
        entries.append((middle, name.lower(), value if newline else None))
    return entries


def _check_mapping(profile: Profile, prefix: str, entries: list[tuple[str, str, str | None]]) -> Finding:
    origin, needs_path = git_helper.helper_config(prefix)
    helpers: list[str] = []
    reset = use_path = False
    for pattern, name, value in entries:
        if pattern and not git_url_matches(pattern, prefix):
            continue
        if name == "usehttppath":
            use_path = value is None or value.strip().lower() in _TRUE
        elif value:
            helpers.append(value)
        else:  # an empty value resets the list
            helpers, reset = [], True
    reset_commands = (f"`git config --global --replace-all credential.{origin}.helper ''` then "
                      f"`git config --global --add credential.{origin}.helper {git_helper.HELPER}`")
    problems: list[tuple[Status, str, str]] = []
    ours = [index for index, helper in enumerate(helpers) if is_aadhelper(helper)]
    others = [helper for helper in helpers if not is_aadhelper(helper)]
    if not ours:
        problems.append(("fail", f"git asks no aadhelper helper for {prefix} (its helpers there: "
                                 f"{', '.join(helpers) or 'none'})", reset_commands))
    elif ours[0] > 0:
        problems.append(("fail", f"git asks {', '.join(helpers[:ours[0]])} before aadhelper for {prefix}: it may "
                                 "answer with a stale stored password", reset_commands))
    elif others:
        problems.append(("warn", f"{', '.join(others)} also receive(s) every token git gets for {prefix} (git hands "
                                 "a working credential to all its helpers)", reset_commands))
    elif not reset:
        problems.append(("warn", f"the helper list for {origin} is not reset: a storing helper configured later "
                                 "(credential.helper=store) would also receive the tokens", reset_commands))
    if needs_path and not use_path:
        problems.append(("fail", f"git sends helpers no path for {origin}, so the mapping {prefix} never matches",
                         f"`git config --global credential.{origin}.useHttpPath true`"))
    # A plain name makes git run `git credential-NAME`: git-credential-aadhelper must be on PATH.
    if any(helper.split()[:1] == [git_helper.HELPER] for helper in helpers) \
            and shutil.which(f"git-credential-{git_helper.HELPER}") is None:
        where = os.path.dirname(paths.console_script()[0])
        problems.append(("fail", f"git runs `git credential-{git_helper.HELPER}`, which is not on PATH",
                         f"add {where} to PATH"))
    details = {"url": prefix, "helpers": helpers, "reset": reset, "use_http_path": use_path}
    if not problems:
        path_note = ", useHttpPath on" if needs_path else ""
        return Finding("git", "ok", f"git asks aadhelper alone for {prefix} (list reset{path_note})",
                       profile=profile.name, details=details)
    status = worst(Finding("git", s, "") for s, _, _ in problems)
    return Finding("git", status, "; ".join(text for _, text, _ in problems),
                   "; ".join(dict.fromkeys(fix for _, _, fix in problems)), profile.name, details)


def is_aadhelper(helper: str) -> bool:
    """Whether a ``credential.helper`` value runs aadhelper: ``aadhelper`` (git runs git-credential-aadhelper), a
    path to git-credential-aadhelper, or ``!aadhelper git-credential`` / ``!/path/git-credential-aadhelper``."""
    words = helper.strip().removeprefix("!").split()
    if not words:
        return False
    program = os.path.basename(words[0])
    return program == f"git-credential-{git_helper.HELPER}" or (program == git_helper.HELPER and (
        not helper.strip().startswith("!") or words[1:2] == ["git-credential"]))


def git_url_matches(pattern: str, url: str) -> bool:
    """git's urlmatch rule for a ``credential.<url>.*`` key: same scheme, host (``*`` matches one label), port and
    user when the key names one, and a path that is a prefix of the URL's on whole segments."""
    try:
        want, have = urllib.parse.urlsplit(pattern), urllib.parse.urlsplit(url)
        ports = (want.port, have.port)
    except ValueError:
        return False
    if not want.scheme or want.scheme.lower() != have.scheme.lower():
        return False
    if want.username and want.username != have.username:
        return False
    labels, host = (want.hostname or "").split("."), (have.hostname or "").split(".")
    if len(labels) != len(host) or not all(fnmatch.fnmatchcase(h, w) for w, h in zip(labels, host, strict=True)):
        return False
    default = 443 if have.scheme.lower() == "https" else 80
    if (ports[0] or default) != (ports[1] or default):
        return False
    prefix = [s for s in want.path.split("/") if s]
    return [s for s in have.path.split("/") if s][:len(prefix)] == prefix
