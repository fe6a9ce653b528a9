"""The configuration: parsing and validation, authority resolution, git URL matching, loading and in-place editing."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import tomlkit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aadhelper import config_edit
from aadhelper.config import (
    DEFAULT_GIT_USERNAME,
    MAX_CONFIG_BYTES,
    Config,
    GitUrl,
    load_config,
    load_config_file,
    parse_config,
)
from aadhelper.errors import ConfigError, UnknownProfile
from aadhelper.urls import normalize_git_url, resolve_authority

PATH = "/home/u/.config/aadhelper/config.toml"
NO_ENV: dict[str, str] = {}
PROFILE = """
[profiles.p]
tenant = "contoso.onmicrosoft.com"
client_id = "11111111-2222-3333-4444-555555555555"
scopes = ["https://graph.microsoft.com/.default"]
"""

FULL = """\
default_profile = "graph"

[daemon]
autostart = false
idle_exit = 600

[profiles.graph]
tenant = "contoso.onmicrosoft.com"
client_id = "11111111-2222-3333-4444-555555555555"
scopes = ["https://graph.microsoft.com/.default", "offline_access"]
authority = "usgov"
credential = "client_secret"
min_valid = 120
ca_bundle = "/etc/ssl/my-ca.pem"

[profiles.ado]
tenant = "common"
client_id = "22222222-2222-3333-4444-555555555555"
scopes = ["499b84ac-1321-427f-aa17-267ca6975798/.default"]
credential = "user"

[[profiles.ado.git]]
url = "HTTPS://Dev.Azure.com:443/contoso"
username = "me@contoso.com"

[[profiles.ado.git]]
url = "https://contoso.visualstudio.com/"
"""


def parse(text: str, environ: dict[str, str] | None = None) -> Config:
    return parse_config(text, PATH, NO_ENV if environ is None else environ)


def profile_with(**overrides: str) -> str:
    """The minimal valid profile 'p' with some lines replaced or added (TOML values as written)."""
    lines = {"tenant": '"contoso.onmicrosoft.com"', "client_id": '"11111111-2222-3333-4444-555555555555"',
             "scopes": '["https://graph.microsoft.com/.default"]'}
    lines.update(overrides)
    body = "".join(f"{key} = {value}\n" for key, value in lines.items() if value != "<omit>")
    return "[profiles.p]\n" + body


# ---------------------------------------------------------------- parsing good input

def test_full_config_parses_into_every_field() -> None:
    """If every setting is given, then each lands in its field, hosts are normalised and endpoints follow."""
    config = parse(FULL)
    assert config.default_profile == "graph"
    assert (config.autostart, config.idle_exit) == (False, 600)
    graph = config.profile(None)
    assert graph.name == "graph"
    assert graph.scopes == ("https://graph.microsoft.com/.default", "offline_access")
    assert graph.authority == "https://login.microsoftonline.us"
    assert (graph.min_valid, graph.ca_bundle, graph.credential) == (120, "/etc/ssl/my-ca.pem", "client_secret")
    assert graph.token_endpoint == "https://login.microsoftonline.us/contoso.onmicrosoft.com/oauth2/v2.0/token"
    assert graph.devicecode_endpoint.endswith("/contoso.onmicrosoft.com/oauth2/v2.0/devicecode")
    assert graph.authorize_endpoint.endswith("/contoso.onmicrosoft.com/oauth2/v2.0/authorize")
    ado = config.profile("ado")
    assert ado.git_urls == (GitUrl("https://dev.azure.com/contoso/", "me@contoso.com"),
                            GitUrl("https://contoso.visualstudio.com/", None))


def test_defaults_fill_what_the_file_leaves_out() -> None:
    """If a profile gives only tenant, client id and scopes, then the documented defaults apply."""
    config = parse(PROFILE)
    profile = config.profile("p")
    assert (profile.credential, profile.min_valid, profile.ca_bundle, profile.git_urls) == ("client_secret", 300,
                                                                                            None, ())
    assert profile.authority == "https://login.microsoftonline.com"
    assert (config.autostart, config.idle_exit) == (True, 0)
    assert config.default_profile == "p"  # the only profile is the default


def test_empty_file_is_an_empty_config() -> None:
    """If the file is empty, then there are no profiles and asking for the default says how to add one."""
    config = parse("")
    assert dict(config.profiles) == {}
    with pytest.raises(ConfigError, match=r"^/home/u/.config/aadhelper/config.toml: no profiles") as info:
        config.profile(None)
    assert "aadhelper profile add" in info.value.one_line()


def test_several_profiles_without_default_name_them_and_the_fix() -> None:
    """If there are two profiles and no default_profile, then asking for the default lists them and the command."""
    config = parse(PROFILE + PROFILE.replace("profiles.p", "profiles.q"))
    assert config.default_profile is None
    with pytest.raises(ConfigError) as info:
        config.profile(None)
    line = info.value.one_line()
    assert PATH in line and "'default_profile'" in line and "p, q" in line
    assert "aadhelper profile default NAME" in line


def test_unknown_profile_is_its_own_error_listing_the_configured_ones() -> None:
    """If a name is not configured, then UnknownProfile names it, the file and the profiles there are."""
    with pytest.raises(UnknownProfile) as info:
        parse(PROFILE).profile("nope")
    assert info.value.message == f"{PATH}: profile 'nope' is not configured (profiles: p)"


def test_profiles_mapping_is_read_only() -> None:
    """If code tries to change the parsed profiles, then it cannot."""
    config = parse(PROFILE)
    with pytest.raises(TypeError):
        config.profiles["x"] = config.profile("p")  # type: ignore[index]  # deliberately: the mapping is read-only


# ---------------------------------------------------------------- every kind of bad input

BAD = [
    # (file text, profile named in the message or None, key named, words in the message)
    ("defualt_profile = 'p'\n" + PROFILE, None, "defualt_profile", "did you mean 'default_profile'"),
    ("[profiles.p]\nmin_vaild = 3\n", "p", "min_vaild", "did you mean 'min_valid'"),
    ("[daemon]\nautostart = 'yes'\n", None, "autostart", "true or false"),
    ("[daemon]\nidle_exit = -1\n", None, "idle_exit", "integer from 0"),
    ("[daemon]\nidle = 1\n", None, "idle", "did you mean 'idle_exit'"),
    ("daemon = 3\n", None, "daemon", "must be a table"),
    ("profiles = 3\n", None, "profiles", "must be a table"),
    ("[profiles]\np = 3\n", "p", None, "must be a table"),
    ("default_profile = 3\n" + PROFILE, None, "default_profile", "profile name"),
    ("default_profile = 'q'\n" + PROFILE, None, "default_profile", "'q', which is not configured"),
    (profile_with(tenant="<omit>"), "p", "tenant", "is missing"),
    (profile_with(tenant='""'), "p", "tenant", "tenant GUID or domain"),
    (profile_with(tenant='"contoso com"'), "p", "tenant", "without spaces"),
    (profile_with(tenant="7"), "p", "tenant", "must be a string"),
    (profile_with(tenant='"a/b"'), "p", "tenant", "tenant GUID or domain"),
    (profile_with(client_id="<omit>"), "p", "client_id", "is missing"),
    (profile_with(client_id='""'), "p", "client_id", "application (client) id"),
    (profile_with(scopes="<omit>"), "p", "scopes", "is missing"),
    (profile_with(scopes="[]"), "p", "scopes", "non-empty list"),
    (profile_with(scopes='"https://graph.microsoft.com/.default"'), "p", "scopes", "must be a list"),
    (profile_with(scopes="[1]"), "p", "scopes", "each a string"),
    (profile_with(scopes='["a b"]'), "p", "scopes", "without spaces"),
    (profile_with(scopes='[""]'), "p", "scopes", "non-empty list"),
    (profile_with(min_valid='"300"'), "p", "min_valid", "integer from 0 to 86400"),
    (profile_with(min_valid="true"), "p", "min_valid", "integer from 0 to 86400"),
    (profile_with(min_valid="-1"), "p", "min_valid", "integer from 0 to 86400"),
    (profile_with(min_valid="86401"), "p", "min_valid", "integer from 0 to 86400"),
    (profile_with(min_valid="30.5"), "p", "min_valid", "integer from 0 to 86400"),
    (profile_with(credential='"password"'), "p", "credential", "client_secret, user"),
    (profile_with(credential="1"), "p", "credential", "must be one of"),
    (profile_with(tenant='"common"'), "p", "tenant", "AADSTS9001023"),
    (profile_with(tenant='"Organizations"'), "p", "tenant", "AADSTS9001023"),
    (profile_with(tenant='"consumers"', credential='"client_secret"'), "p", "tenant", "AADSTS9001023"),
    (profile_with(authority='"http://login.example.com"'), "p", "authority", "must use https://"),
    (profile_with(authority='"ftp://login.example.com"'), "p", "authority", "https:// URL"),
    (profile_with(authority='"https://"'), "p", "authority", "must name a host"),
    (profile_with(authority='"login.example.com"'), "p", "authority", "https:// URL"),
    (profile_with(authority='"https://login.example.com/?x=1"'), "p", "authority", "without user, query"),
    (profile_with(authority='"https://u@login.example.com"'), "p", "authority", "without user, query"),
    (profile_with(authority='"https://login.example.com:99999"'), "p", "authority", "host and port"),
    (profile_with(authority='"https://login example.com"'), "p", "authority", "without spaces"),
    (profile_with(authority="3"), "p", "authority", "must be a string"),
    (profile_with(ca_bundle='"ca.pem"'), "p", "ca_bundle", "absolute path"),
    (profile_with(ca_bundle="[]"), "p", "ca_bundle", "file path"),
    (profile_with(git='"https://dev.azure.com/"'), "p", "git", "array of tables"),
    (PROFILE + "[[profiles.p.git]]\nusername = 'u'\n", "p", "url", "is missing"),
    (PROFILE + "[[profiles.p.git]]\nurl = 'ssh://dev.azure.com/x'\n", "p", "url", "http:// or https://"),
    (PROFILE + "[[profiles.p.git]]\nurl = 'https:///x'\n", "p", "url", "must name a host"),
    (PROFILE + "[[profiles.p.git]]\nurl = 'https://me:pw@dev.azure.com/x'\n", "p", "url", "user name or password"),
    (PROFILE + "[[profiles.p.git]]\nurl = 'https://dev.azure.com/x?y'\n", "p", "url", "query or fragment"),
    (PROFILE + "[[profiles.p.git]]\nurl = 'https://h/x'\n[[profiles.p.git]]\nurl = 'https://H/x/'\n",
     "p", "url", "repeats 'https://h/x/'"),
    (PROFILE + "[[profiles.p.git]]\nurl = 'https://h/'\nusername = ''\n", "p", "username", "non-empty"),
    (PROFILE + "[[profiles.p.git]]\nurl = 'https://h/'\nuser = 'x'\n", "p", "user", "did you mean 'username'"),
    (PROFILE + "[[profiles.p.git]]\nurl = 'https://h/a'\n" + PROFILE.replace("profiles.p", "profiles.q")
     + "[[profiles.q.git]]\nurl = 'https://h/a/'\n", "q", "url", "also mapped by profile 'p'"),
]


@pytest.mark.parametrize("text, profile, key, words", BAD)
def test_bad_input_names_file_profile_and_key(text: str, profile: str | None, key: str | None, words: str) -> None:
    """If the file holds a mistake, then the one-line ConfigError names the file, the profile and the key."""
    with pytest.raises(ConfigError) as info:
        parse(text)
    message = info.value.message
    assert message.startswith(PATH + ": ")
    if profile is not None:
        assert f"profile {profile!r}" in message
        assert info.value.profile == profile
    if key is not None:
        assert f"key {key!r}" in message
    assert words in message
    assert "\n" not in info.value.one_line()


@pytest.mark.parametrize("name", ["a b", "x" * 65, "ü", ""])
def test_bad_profile_names_are_refused(name: str) -> None:
    """If a profile's name has characters outside letters, digits and -_. or is too long, then it is refused."""
    with pytest.raises(ConfigError, match="must be 1 to 64 letters, digits"):
        parse(PROFILE.replace("profiles.p", f'profiles."{name}"'))


HUGE = "x " * 100_000


@pytest.mark.parametrize("text", [
    f'[profiles."{HUGE}"]', f'default_profile = "{HUGE}"', f'[profiles.p]\n"{HUGE}" = 1', f'[daemon]\n"{HUGE}" = 1',
    profile_with(tenant=f'"{HUGE}"'), profile_with(client_id=f'"{HUGE}"'), profile_with(credential=f'"{HUGE}"'),
    profile_with(git=f'[{{url = "https://h/{"a/" * 100_000}"}}, {{url = "https://h/{"a/" * 100_000}"}}]'),
])
def test_messages_stay_short_whatever_the_file_holds(text: str) -> None:
    """If the file holds a huge bad name, key or value, then the error quotes it cut short: one line of a few
    hundred characters, not the value (a config file may be up to 1 MiB; the line goes to logs and every reply)."""
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert len(info.value.one_line()) < 400, info.value.one_line()[:400]


def test_name_of_64_allowed_characters_is_fine() -> None:
    """If a name has 64 letters, digits, '-', '_' and '.', then it is accepted."""
    name = ("Ab-_.9" * 11)[:64]
    assert parse(PROFILE.replace("profiles.p", f'profiles."{name}"')).default_profile == name


@pytest.mark.parametrize("text, where", [
    ("[profiles.p\n", "line 1"),
    ("default_profile = 'p'\n\nx = = 1\n", "line 3, column 5"),
    ("a = 1\na = 2\n", "line 2"),
])
def test_toml_syntax_errors_give_line_and_column(text: str, where: str) -> None:
    """If the file is not TOML, then the error names the file and where the parser stopped."""
    with pytest.raises(ConfigError, match=rf"^{PATH}: not valid TOML: .*\(at {where}"):
        parse(text)


def test_user_profiles_may_use_tenant_aliases() -> None:
    """If a user-credential profile names the 'common' tenant, then that is accepted."""
    assert parse(profile_with(tenant='"common"', credential='"user"')).profile("p").tenant == "common"


# ---------------------------------------------------------------- environment and authority

@pytest.mark.parametrize("value, flag", [("1", False), ("true", False), ("0", True), ("", True)])
def test_no_autostart_environment_turns_autostart_off(value: str, flag: bool) -> None:
    """If AADHELPER_NO_AUTOSTART is 1, then autostart is off whatever the file says; 0 or empty leaves it."""
    assert parse("[daemon]\nautostart = true\n", {"AADHELPER_NO_AUTOSTART": value}).autostart is flag


def test_bad_no_autostart_value_is_refused() -> None:
    """If AADHELPER_NO_AUTOSTART holds neither 1 nor 0, then the error names the variable."""
    with pytest.raises(ConfigError, match="environment variable AADHELPER_NO_AUTOSTART must be 1 or 0"):
        parse("", {"AADHELPER_NO_AUTOSTART": "maybe"})


@pytest.mark.parametrize("value, expected", [
    (None, "https://login.microsoftonline.com"),
    ("public", "https://login.microsoftonline.com"),
    ("usgov", "https://login.microsoftonline.us"),
    ("china", "https://login.chinacloudapi.cn"),
    ("https://Login.Partner.MicrosoftOnline.cn/", "https://login.partner.microsoftonline.cn"),
    ("https://login.example.com:443", "https://login.example.com"),
    ("https://login.example.com:8443/adfs/", "https://login.example.com:8443/adfs"),
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("http://127.45.6.7", "http://127.45.6.7"),
    ("http://localhost:1234/", "http://localhost:1234"),
    ("http://[::1]:8080", "http://[::1]:8080"),
])
def test_authority_values_resolve_to_base_urls(value: str | None, expected: str) -> None:
    """If a profile names a cloud or URL, then it resolves to a base URL without trailing slash."""
    assert resolve_authority(value, {}) == expected


@pytest.mark.parametrize("value", ["http://login.example.com", "http://10.0.0.1", "http://127.0.0.1.nip.io",
                                   "ftp://127.0.0.1", "https://", "nonsense"])
def test_unsafe_or_malformed_authorities_are_refused(value: str) -> None:
    """If the authority is plain http off loopback, another scheme, or no URL, then it is a ConfigError."""
    with pytest.raises(ConfigError, match="key 'authority'"):
        resolve_authority(value, {})


@pytest.mark.parametrize("env, expected", [
    ("login.microsoftonline.us", "https://login.microsoftonline.us"),
    ("https://login.chinacloudapi.cn/", "https://login.chinacloudapi.cn"),
    ("HTTPS://Login.Example.com//", "https://login.example.com"),
    ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
])
def test_azure_authority_host_is_the_default_as_in_azure_identity(env: str, expected: str) -> None:
    """If AZURE_AUTHORITY_HOST is set, then profiles without authority use it (bare host means https)."""
    config = parse(PROFILE, {"AZURE_AUTHORITY_HOST": env})
    assert config.profile("p").authority == expected


def test_explicit_authority_beats_azure_authority_host() -> None:
    """If a profile names its authority, then AZURE_AUTHORITY_HOST (even a bad one) does not matter."""
    config = parse(profile_with(authority='"china"'), {"AZURE_AUTHORITY_HOST": "ftp://nope"})
    assert config.profile("p").authority == "https://login.chinacloudapi.cn"


@pytest.mark.parametrize("env", ["ftp://login.example.com", "http://login.example.com", "https://"])
def test_bad_azure_authority_host_names_the_variable_and_profile(env: str) -> None:
    """If AZURE_AUTHORITY_HOST is unusable, then profiles relying on it fail naming the variable and profile."""
    with pytest.raises(ConfigError) as info:
        parse(PROFILE, {"AZURE_AUTHORITY_HOST": env})
    assert info.value.message.startswith(f"{PATH}: profile 'p': environment variable AZURE_AUTHORITY_HOST ")


def test_ca_bundle_home_is_expanded_from_the_given_environment() -> None:
    """If ca_bundle starts with ~/, then HOME from the environment replaces the tilde."""
    config = parse(profile_with(ca_bundle='"~/ca.pem"'), {"HOME": "/home/zoe"})
    assert config.profile("p").ca_bundle == "/home/zoe/ca.pem"


# ---------------------------------------------------------------- git URL matching

MAPPINGS = """
[profiles.org]
tenant = "t"
client_id = "org-app"
scopes = ["s"]
[[profiles.org.git]]
url = "https://dev.azure.com/contoso/"
[[profiles.org.git]]
url = "http://git.example.com:8080/"

[profiles.team]
tenant = "t"
client_id = "team-app"
scopes = ["s"]
credential = "user"
[[profiles.team.git]]
url = "https://dev.azure.com/contoso/team%20a"
username = "me@contoso.com"

[profiles.host]
tenant = "t"
client_id = "host-app"
scopes = ["s"]
[[profiles.host.git]]
url = "https://dev.azure.com"
"""


@pytest.mark.parametrize("url, profile, prefix", [
    ("https://dev.azure.com/contoso/proj/_git/repo", "org", "https://dev.azure.com/contoso/"),
    ("https://dev.azure.com/contoso", "org", "https://dev.azure.com/contoso/"),
    ("https://dev.azure.com/contoso/team%20a/_git/r", "team", "https://dev.azure.com/contoso/team%20a/"),
    ("https://dev.azure.com/contoso/team a", "team", "https://dev.azure.com/contoso/team%20a/"),
    ("https://dev.azure.com/contoso/team%20ab", "org", "https://dev.azure.com/contoso/"),
    ("https://dev.azure.com/contoso2/x", "host", "https://dev.azure.com/"),
    ("https://dev.azure.com/", "host", "https://dev.azure.com/"),
    ("HTTPS://DEV.Azure.COM:443/contoso/x", "org", "https://dev.azure.com/contoso/"),
    ("https://me%40contoso.com:pw@dev.azure.com/contoso/x", "org", "https://dev.azure.com/contoso/"),
    ("https://dev.azure.com//contoso//x?query#frag", "org", "https://dev.azure.com/contoso/"),
    ("http://git.example.com:8080/any/repo.git", "org", "http://git.example.com:8080/"),
])
def test_longest_prefix_on_segment_boundaries_wins(url: str, profile: str, prefix: str) -> None:
    """If several mappings match a URL, then the longest whole-segment prefix across all profiles wins."""
    match = parse(MAPPINGS).profile_for_url(url)
    assert match is not None
    assert (match[0].name, match[1].url) == (profile, prefix)


@pytest.mark.parametrize("url", [
    "https://dev.azure.com:8443/contoso/x",   # another port is another server
    "http://dev.azure.com/contoso/x",        # another scheme
    "http://git.example.com/any",            # default port 80, not 8080
    "https://example.com/contoso",
    "ssh://dev.azure.com/contoso",
    "not a url",
    "",
])
def test_urls_on_other_origins_match_nothing(url: str) -> None:
    """If no mapping shares the URL's scheme, host and port, then there is no match (and no exception)."""
    assert parse(MAPPINGS).profile_for_url(url) is None


def test_path_comparison_is_case_sensitive() -> None:
    """If only the path's case differs, then the deeper prefix does not match (servers may be case-sensitive)."""
    match = parse(MAPPINGS).profile_for_url("https://dev.azure.com/Contoso/x")
    assert match is not None and match[0].name == "host"


def test_git_username_defaults_by_credential_kind() -> None:
    """If a mapping names no username, then client_secret profiles send the client id, user profiles a fixed name."""
    config = parse(MAPPINGS)
    org, org_url = config.profile_for_url("https://dev.azure.com/contoso/x") or (None, None)
    assert org is not None and org.git_username(org_url) == "org-app"
    team, team_url = config.profile_for_url("https://dev.azure.com/contoso/team%20a/") or (None, None)
    assert team is not None and team.git_username(team_url) == "me@contoso.com"
    assert team.git_username(None) == DEFAULT_GIT_USERNAME
    assert team.git_username(None, account="zoe@contoso.com") == "zoe@contoso.com"


@pytest.mark.parametrize("url, expected", [
    ("https://Dev.Azure.com/contoso", "https://dev.azure.com/contoso/"),
    ("http://h:80//a//b/", "http://h/a/b/"),
    ("https://[::1]:8443/x", "https://[::1]:8443/x/"),
])
def test_normalize_git_url(url: str, expected: str) -> None:
    """If a git URL prefix is normalised, then scheme and host are lower-case, default ports and empty segments go."""
    assert normalize_git_url(url) == expected


# ---------------------------------------------------------------- loading from disk

def test_missing_file_is_an_empty_config(tmp_path: Path) -> None:
    """If the config file does not exist, then loading gives an empty configuration with that path."""
    config = load_config(str(tmp_path / "nope" / "config.toml"), {})
    assert (config.path, dict(config.profiles), config.autostart) == (str(tmp_path / "nope" / "config.toml"), {}, True)


def test_load_reads_and_parses_the_file(tmp_path: Path) -> None:
    """If the file holds a profile, then load_config returns it."""
    path = tmp_path / "config.toml"
    path.write_text(PROFILE)
    assert load_config(str(path), {}).profile(None).name == "p"


def test_load_uses_aadhelper_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If no path is given, then AADHELPER_CONFIG names the file."""
    path = tmp_path / "elsewhere.toml"
    path.write_text(PROFILE)
    monkeypatch.setenv("AADHELPER_CONFIG", str(path))
    assert load_config(environ={}).path == str(path)


@pytest.mark.parametrize("content, words", [(b"a = '\xff'\n", "not UTF-8"), (b"[x", "not valid TOML")])
def test_unreadable_content_is_a_config_error(tmp_path: Path, content: bytes, words: str) -> None:
    """If the file is not UTF-8 or not TOML, then loading fails with a ConfigError naming the file."""
    path = tmp_path / "config.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=f"^{path}: {words}"):
        load_config(str(path), {})


def test_world_writable_config_is_refused(tmp_path: Path) -> None:
    """If anyone may write the config file (and so redirect secrets), then loading refuses it."""
    path = tmp_path / "config.toml"
    path.write_text(PROFILE)
    path.chmod(0o666)
    with pytest.raises(ConfigError, match="writable by everyone") as info:
        load_config(str(path), {})
    assert "chmod o-w" in info.value.one_line()


def test_directory_instead_of_file_is_a_config_error(tmp_path: Path) -> None:
    """If the config path is a directory, then loading fails with a one-line ConfigError saying so."""
    with pytest.raises(ConfigError, match="is a directory, not a regular file") as info:
        load_config(str(tmp_path), {})
    assert "\n" not in info.value.one_line()


def test_fifo_instead_of_file_is_refused_without_blocking(tmp_path: Path) -> None:
    """If the config path is a FIFO nobody writes to, then loading returns at once with a ConfigError instead of
    waiting for a writer (which would stall whoever reads the config: the daemon's event loop)."""
    path = tmp_path / "config.toml"
    os.mkfifo(path)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(load_config, str(path), {})
        try:
            with pytest.raises(ConfigError, match="is a FIFO, not a regular file"):
                future.result(timeout=10)
        finally:
            # Unblock a reader stuck in open() (the defect this test pins) so the pool can shut down.
            with contextlib.suppress(OSError):
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def test_device_instead_of_file_is_refused(tmp_path: Path) -> None:
    """If the config path is a character device (an endless /dev/zero), then loading refuses it unread."""
    path = tmp_path / "config.toml"
    path.symlink_to("/dev/zero")
    with pytest.raises(ConfigError, match="is a character device"):
        load_config(str(path), {})


def test_file_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    """If the config file is larger than MAX_CONFIG_BYTES, then loading refuses it with one line naming the
    limit, while a file of exactly the limit is still read."""
    path = tmp_path / "config.toml"
    padding = b"# " + b"x" * (MAX_CONFIG_BYTES - len(PROFILE) - 3) + b"\n"
    path.write_bytes(padding + PROFILE.encode())
    assert path.stat().st_size == MAX_CONFIG_BYTES
    assert load_config(str(path), {}).profile(None).name == "p"
    with open(path, "ab") as file:
        file.truncate(100 * 1024**2)  # sparse: 100 MiB that a reader without a bound would hold in memory
    with pytest.raises(ConfigError, match=f"over the limit of {MAX_CONFIG_BYTES}") as info:
        load_config(str(path), {})
    assert "\n" not in info.value.one_line()


def test_symlinked_config_is_followed_and_a_dangling_one_is_no_file(tmp_path: Path) -> None:
    """If the config path is a symlink to a regular file, then it is read; if its target is gone, then the file
    counts as missing (load_config_file says None, load_config an empty configuration)."""
    target, link = tmp_path / "real.toml", tmp_path / "config.toml"
    target.write_text(PROFILE)
    link.symlink_to(target)
    assert load_config(str(link), {}).profile(None).name == "p"
    target.unlink()
    assert load_config_file(str(link), {}) is None
    assert dict(load_config(str(link), {}).profiles) == {}


# ---------------------------------------------------------------- hypothesis: only ConfigError ever escapes

KEYS = ["default_profile", "daemon", "profiles", "autostart", "idle_exit", "tenant", "client_id", "scopes",
        "authority", "credential", "min_valid", "ca_bundle", "git", "url", "username", "p", "common"]
scalars = st.one_of(st.text(max_size=30), st.integers(), st.floats(allow_nan=False), st.booleans(),
                    st.sampled_from(["common", "public", "http://127.0.0.1:1", "https://h/x", "user", "/ca.pem"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(KEYS) | st.text(min_size=1, max_size=8), inner, max_size=6)), max_leaves=25)
documents = st.dictionaries(st.sampled_from(KEYS), values, max_size=5).map(tomlkit.dumps)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(st.text(max_size=200), documents,
                      st.builds(lambda t, d: d + t, st.text(max_size=40), documents)))
def test_parse_config_raises_only_config_error(text: str) -> None:
    """If parse_config gets any text at all, then it returns a Config or raises ConfigError, nothing else."""
    try:
        parse_config(text, PATH, {"AZURE_AUTHORITY_HOST": "login.example.com"})
    except ConfigError as exc:
        assert exc.message.startswith(PATH)


# ---------------------------------------------------------------- editing in place

COMMENTED = """\
# my aadhelper config   (hand-written, keep!)
default_profile = "graph"   # the usual one

[daemon]
idle_exit   =   0    # odd spacing on purpose

# Microsoft Graph
[profiles.graph]
tenant = 'contoso.onmicrosoft.com'   # single quotes
client_id = "11111111-2222-3333-4444-555555555555"
scopes = [
    "https://graph.microsoft.com/.default",  # one per line
]
"""


def test_adding_a_profile_keeps_every_existing_byte(tmp_path: Path) -> None:
    """If a profile is added, then the old text stays byte for byte in front of the new table."""
    path = tmp_path / "config.toml"
    path.write_text(COMMENTED)
    config = config_edit.add_profile(str(path), "ado", tenant="common", client_id="app", credential="user",
                                     scopes=["499b84ac-1321-427f-aa17-267ca6975798/.default"],
                                     git_urls=["https://Dev.Azure.com/contoso"], git_username="me", environ={})
    text = path.read_text()
    assert text.startswith(COMMENTED)
    assert load_config(str(path), {}) == config
    assert config.default_profile == "graph"
    assert config.profile_for_url("https://dev.azure.com/contoso/p/_git/r") == (
        config.profile("ado"), GitUrl("https://dev.azure.com/contoso/", "me"))


def test_removing_a_profile_keeps_the_other_bytes(tmp_path: Path) -> None:
    """If a profile added later is removed again, then the file is byte for byte what it was."""
    path = tmp_path / "config.toml"
    path.write_text(COMMENTED)
    config_edit.add_profile(str(path), "extra", tenant="t", client_id="c", scopes=["s"], min_valid=60,
                            authority="http://127.0.0.1:1", ca_bundle="/ca.pem", environ={})
    assert load_config(str(path), {}).profile("extra").min_valid == 60
    config = config_edit.remove_profile(str(path), "extra", environ={})
    assert path.read_text().rstrip("\n") == COMMENTED.rstrip("\n")
    assert list(config.profiles) == ["graph"]


def test_git_url_edits_touch_only_their_lines(tmp_path: Path) -> None:
    """If a git URL is added and removed, then the rest of the file is unchanged byte for byte."""
    path = tmp_path / "config.toml"
    path.write_text(COMMENTED)
    config = config_edit.add_git_url(str(path), "graph", "https://git.example.com/a", environ={})
    assert config.profile("graph").git_urls == (GitUrl("https://git.example.com/a/", None),)
    assert path.read_text().startswith(COMMENTED)
    config = config_edit.add_git_url(str(path), "graph", "https://GIT.example.com/a/", "bob", environ={})
    assert config.profile("graph").git_urls == (GitUrl("https://git.example.com/a/", "bob"),)
    config = config_edit.remove_git_url(str(path), "graph", "https://git.example.com/a", environ={})
    assert config.profile("graph").git_urls == ()
    assert path.read_text().rstrip("\n") == COMMENTED.rstrip("\n")


def test_default_profile_edits_keep_the_comment_of_the_line(tmp_path: Path) -> None:
    """If the default changes, then only the value changes, not the comment after it."""
    path = tmp_path / "config.toml"
    path.write_text(COMMENTED)
    config_edit.add_profile(str(path), "other", tenant="t", client_id="c", scopes=["s"], environ={})
    config = config_edit.set_default_profile(str(path), "other", environ={})
    assert config.default_profile == "other"
    assert 'default_profile = "other"   # the usual one\n' in path.read_text()
    config = config_edit.remove_profile(str(path), "other", environ={})
    assert config.default_profile == "graph"  # implicit again: the only profile
    assert "default_profile" not in path.read_text()


def test_first_profile_becomes_default_and_stays_when_a_second_arrives(tmp_path: Path) -> None:
    """If profiles are added to a new file, then the first is the default and a second one does not unset it."""
    path = tmp_path / "new" / "config.toml"
    first = config_edit.add_profile(str(path), "one", tenant="t", client_id="c", scopes=["s"], environ={})
    assert first.default_profile == "one"
    second = config_edit.add_profile(str(path), "two", tenant="t", client_id="c", scopes=["s"], environ={})
    assert second.default_profile == "one"
    third = config_edit.add_profile(str(path), "three", tenant="t", client_id="c", scopes=["s"],
                                    make_default=True, environ={})
    assert third.default_profile == "three"


def test_file_and_directory_are_private(tmp_path: Path) -> None:
    """If the editor creates the config, then the file is 0600 and a new directory 0700."""
    path = tmp_path / "cfg" / "config.toml"
    config_edit.add_profile(str(path), "one", tenant="t", client_id="c", scopes=["s"], environ={})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["config.toml"]  # no temp or lock file left behind


def test_existing_profile_is_not_overwritten_without_replace(tmp_path: Path) -> None:
    """If a profile exists, then adding it again fails and leaves the file alone; replace overwrites it."""
    path = tmp_path / "config.toml"
    path.write_text(COMMENTED)
    with pytest.raises(ConfigError, match="profile 'graph' already exists"):
        config_edit.add_profile(str(path), "graph", tenant="t", client_id="c", scopes=["s"], environ={})
    assert path.read_text() == COMMENTED
    config = config_edit.add_profile(str(path), "graph", tenant="t2", client_id="c2", scopes=["s"], replace=True,
                                     environ={})
    assert (config.profile("graph").tenant, config.default_profile) == ("t2", "graph")
    assert path.read_text().startswith(COMMENTED.split("# Microsoft Graph")[0])


@pytest.mark.parametrize("edit, words", [
    (lambda p: config_edit.add_profile(p, "bad", tenant="common", client_id="c", scopes=["s"], environ={}),
     "AADSTS9001023"),
    (lambda p: config_edit.add_profile(p, "bad", tenant="t", client_id="c", scopes=["s"], min_valid=-5,
                                       environ={}), "key 'min_valid'"),
    (lambda p: config_edit.add_profile(p, "b a d", tenant="t", client_id="c", scopes=["s"], environ={}),
     "profile name"),
    (lambda p: config_edit.remove_profile(p, "nope", environ={}), "profile 'nope' is not configured"),
    (lambda p: config_edit.set_default_profile(p, "nope", environ={}), "profile 'nope' is not configured"),
    (lambda p: config_edit.add_git_url(p, "graph", "ssh://host/x", environ={}), "key 'url'"),
    (lambda p: config_edit.add_git_url(p, "nope", "https://host/x", environ={}), "'nope' is not configured"),
    (lambda p: config_edit.remove_git_url(p, "graph", "https://host/x", environ={}), "is not mapped"),
])
def test_invalid_edits_leave_the_file_untouched(tmp_path: Path, edit: Callable[[str], object], words: str) -> None:
    """If an edit would make the config invalid or names something missing, then it fails and nothing changes."""
    path = tmp_path / "config.toml"
    path.write_text(COMMENTED)
    with pytest.raises(ConfigError, match=words) as info:
        edit(str(path))
    assert str(path) in info.value.message
    assert path.read_text() == COMMENTED
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]


def test_broken_toml_is_reported_not_rewritten(tmp_path: Path) -> None:
    """If the file has a syntax error, then an edit reports it with its line and leaves the file alone."""
    path = tmp_path / "config.toml"
    path.write_text(COMMENTED + "oops =\n")
    with pytest.raises(ConfigError, match=r"not valid TOML: .*line 14"):
        config_edit.add_profile(str(path), "x", tenant="t", client_id="c", scopes=["s"], environ={})
    assert path.read_text() == COMMENTED + "oops =\n"


def test_symlinked_config_is_edited_at_its_target(tmp_path: Path) -> None:
    """If the config file is a symlink (dotfile manager), then the target changes and the link stays."""
    target = tmp_path / "dotfiles" / "aadhelper.toml"
    target.parent.mkdir()
    target.write_text(COMMENTED)
    link = tmp_path / "config.toml"
    link.symlink_to(target)
    config_edit.add_profile(str(link), "two", tenant="t", client_id="c", scopes=["s"], environ={})
    assert link.is_symlink()
    assert "[profiles.two]" in target.read_text()


def test_concurrent_edits_lose_nothing(tmp_path: Path) -> None:
    """If several processes' worth of edits run at once, then every one of them ends up in the file."""
    path = tmp_path / "config.toml"
    names = [f"p{i}" for i in range(8)]
    errors: list[BaseException] = []

    def add(name: str) -> None:
        try:
            config_edit.add_profile(str(path), name, tenant="t", client_id="c", scopes=["s"], environ={})
        except BaseException as exc:  # re-raised in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(load_config(str(path), {}).profiles) == names


def test_editor_does_not_chmod_an_existing_directory(tmp_path: Path) -> None:
    """If AADHELPER_CONFIG points into an existing shared directory, then its mode is left alone."""
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    config_edit.add_profile(str(shared / "c.toml"), "one", tenant="t", client_id="c", scopes=["s"], environ={})
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
