"""The federated profile's settings: parsing and validation of ``token_file``/``token_command``, the
``AZURE_FEDERATED_TOKEN_FILE`` default resolved at parse time, and their trip to the fetcher and back."""

from __future__ import annotations

import pytest
import trio

from aadhelper.config import Profile, parse_config
from aadhelper.errors import ConfigError
from aadhelper.fetcher.wire import profile_from_wire, profile_to_wire
from aadhelper.grants import HttpClients
from aadhelper.grants.federated import FederatedSource

HEAD = """[profiles.wi]
tenant = "contoso.onmicrosoft.com"
client_id = "app"
scopes = ["https://graph.microsoft.com/.default"]
"""


def parse(body: str, environ: dict[str, str] | None = None) -> Profile:
    return parse_config(HEAD + body, "/cfg.toml", environ or {}).profile("wi")


def test_token_file_and_command_are_parsed() -> None:
    """If a federated profile names a token file (~/ expanded) or a command, then the profile carries it."""
    profile = parse('credential = "federated"\ntoken_file = "~/tok"\n', {"HOME": "/home/me"})
    assert (profile.token_file, profile.token_command) == ("/home/me/tok", None)
    profile = parse('credential = "federated"\ntoken_command = ["get-token", "--aud", "x y"]\n')
    assert profile.token_command == ("get-token", "--aud", "x y")


def test_the_default_token_file_is_the_parsing_environments_variable() -> None:
    """If neither key is set, then token_file is AZURE_FEDERATED_TOKEN_FILE of the environment the config is parsed
    in (empty counts as unset, as in azure-identity), and None without it."""
    body = 'credential = "federated"\n'
    assert parse(body, {"AZURE_FEDERATED_TOKEN_FILE": "/var/run/tok"}).token_file == "/var/run/tok"
    assert parse(body, {"AZURE_FEDERATED_TOKEN_FILE": ""}).token_file is None
    assert parse(body).token_file is None


@pytest.mark.parametrize("body, environ, words", [
    ('credential = "federated"\ntoken_file = "/t"\ntoken_command = ["x"]\n', {}, "exclude each other"),
    ('credential = "federated"\ntoken_file = "rel/tok"\n', {}, "key 'token_file' must be an absolute path"),
    ('credential = "federated"\ntoken_command = []\n', {}, "key 'token_command' must be a non-empty list"),
    ('credential = "federated"\ntoken_command = ["x", ""]\n', {}, "key 'token_command' must be a non-empty list"),
    ('credential = "federated"\ntoken_command = "get-token --aud x"\n', {}, "must be a list of strings"),
    ('credential = "client_secret"\ntoken_file = "/t"\n', {}, "key 'token_file' is only for credential 'federated'"),
    ('credential = "federated"\n', {"AZURE_FEDERATED_TOKEN_FILE": "tok"}, "must be an absolute path, not 'tok'"),
    ('credential = "federated"\ntenant = "common"\n', {}, "AADSTS9001023"),
])
def test_bad_federated_settings_are_one_line_naming_the_key(body: str, environ: dict[str, str], words: str) -> None:
    """If a federated setting is wrong, then the ConfigError names the file, the profile and the key."""
    text = HEAD.replace('tenant = "contoso.onmicrosoft.com"\n', "") if "tenant" in body else HEAD
    with pytest.raises(ConfigError, match=words) as caught:
        parse_config(text + body, "/cfg.toml", environ).profile("wi")
    assert caught.value.one_line().startswith("/cfg.toml: profile 'wi'")


def test_the_settings_reach_the_fetcher_unchanged() -> None:
    """If a federated profile travels to the fetcher, then its token file and command arrive as they left."""
    for body in ('credential = "federated"\ntoken_file = "/t"\n',
                 'credential = "federated"\ntoken_command = ["a", "b"]\n'):
        profile = parse(body)
        wire = profile_to_wire(profile)
        assert profile_from_wire(wire, profile.scopes) == profile


async def test_a_profile_without_any_source_fails_its_requests_with_a_config_error() -> None:
    """If AZURE_FEDERATED_TOKEN_FILE was unset where the config was read and the profile names no source, then its
    token requests fail with a ConfigError saying so, without any authority request."""
    profile = parse('credential = "federated"\nauthority = "http://127.0.0.1:9"\n')
    http = HttpClients()
    try:
        source = FederatedSource(profile, client=http.get(None), clock=trio.current_time)
        with pytest.raises(ConfigError, match="neither 'token_file' nor 'token_command'"):
            await source.acquire(("https://graph.microsoft.com/.default",))
    finally:
        await http.aclose()
