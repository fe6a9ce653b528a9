"""The daemon's proxy setting (`[daemon] proxy`, `no_proxy`, `proxy_from_environment`), its validation, how
status shows it, how the HTTP clients apply it, and the clean start environment the daemon gives itself."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import trio

from aadhelper import process_setup
from aadhelper.cli.status import render
from aadhelper.config import Config, parse_config
from aadhelper.config_edit import add_profile
from aadhelper.errors import ConfigError
from aadhelper.grants.http import HttpClients, post_form
from aadhelper.proxy import DIRECT, ProxySetting, from_environment, parse_no_proxy
from tests.harness import CountingProxy, counting_proxy_server  # noqa: F401 -- the fixture counting_proxy

PROFILE = ('[profiles.graph]\ntenant = "contoso.onmicrosoft.com"\nclient_id = "c"\n'
           'scopes = ["https://graph.microsoft.com/.default"]\n')


def config_with(daemon: str, proxy_environ: dict[str, str] | None = None) -> Config:
    return parse_config(f"[daemon]\n{daemon}\n\n{PROFILE}", "/cfg.toml", environ={}, proxy_environ=proxy_environ or {})


def test_config_proxy_reaches_every_profile() -> None:
    """If `[daemon] proxy` and `no_proxy` are set, then the configuration and every profile carry them, sourced
    from the config, with no_proxy entries normalised."""
    config = config_with('proxy = "http://proxy.example.com:3128"\nno_proxy = " .Corp.example, 10.1.2.3,,"')
    proxy = config.proxy
    assert proxy == ProxySetting("http://proxy.example.com:3128", ("corp.example", "10.1.2.3"), "config")
    assert config.profiles["graph"].proxy == proxy


def test_no_proxy_key_means_direct_and_start_environment_is_ignored() -> None:
    """If the config sets no proxy, then fetches go direct even when the start environment names a proxy."""
    config = config_with("", {"HTTPS_PROXY": "http://127.0.0.1:9", "ALL_PROXY": "http://127.0.0.1:9"})
    assert config.proxy == DIRECT
    assert config.profiles["graph"].proxy == DIRECT


@pytest.mark.parametrize(("daemon", "wanted"), [
    ('proxy = "socks5://127.0.0.1:1080"', "key 'proxy' is a SOCKS proxy"),
    ('proxy = "ftp://proxy.example.com"', "key 'proxy' must be an http:// or https:// URL"),
    ('proxy = "http://proxy.example.com:3128/path"', "without a path"),
    ('proxy = "http://proxy.example.com:99999"', "is not a valid URL"),
    ('proxy = "http://proxy example.com"', "without spaces"),
    ("proxy = 3128", "key 'proxy' must be a URL string"),
    ('no_proxy = "10.0.0.0/8"', "key 'no_proxy' has '10.0.0.0/8', which is not a host name"),
    ('no_proxy = ["a"]', "key 'no_proxy' must be a string"),
    ('proxy_from_environment = "yes"', "key 'proxy_from_environment' must be true or false"),
    ('proxy = "http://p:1"\nproxy_from_environment = true', "exclude each other"),
    ("prox = 1", "did you mean 'proxy'?"),
])
def test_bad_proxy_settings_are_one_line_config_errors(daemon: str, wanted: str) -> None:
    """If a proxy key holds a value aadhelper cannot use, then loading the config raises one ConfigError line that
    names the file, the section and the key."""
    with pytest.raises(ConfigError) as caught:
        config_with(daemon)
    message = caught.value.one_line()
    assert message.startswith("/cfg.toml: section [daemon]: "), message
    assert wanted in message
    assert "\n" not in message


def test_a_proxy_password_never_appears_in_errors_reprs_or_status() -> None:
    """If a proxy URL carries user:password, then neither a config error about it, the setting's repr, its status
    form, nor the status line shows the password."""
    with pytest.raises(ConfigError) as caught:
        config_with('proxy = "ftp://me:hunter2-secret@proxy.example.com:21"')
    assert "hunter2-secret" not in caught.value.one_line()
    with pytest.raises(ConfigError) as caught:
        config_with('proxy = "http://me:hunter2-secret@proxy.example.com:3128/x"')
    assert "hunter2-secret" not in caught.value.one_line()
    setting = config_with('proxy = "http://me:hunter2-secret@proxy.example.com:3128"').proxy
    assert setting.url == "http://me:hunter2-secret@proxy.example.com:3128"  # the fetcher needs it whole
    shown = [repr(setting), str(setting.to_status()), render_status(setting.to_status())]
    for text in shown:
        assert "hunter2-secret" not in text and "me:" not in text
    assert "proxy: from config: http://***@proxy.example.com:3128" in shown[2]


def test_proxy_from_environment_reads_the_start_environment() -> None:
    """If `proxy_from_environment = true`, then the proxy comes from the start environment's https_proxy (lower
    case first), else ALL_PROXY, with its NO_PROXY, and status names the variable; HTTP_PROXY alone is not used
    (fetches are https)."""
    environ = {"https_proxy": "http://lower:3128", "HTTPS_PROXY": "http://upper:3128", "NO_PROXY": "corp.example",
               "HTTP_PROXY": "http://plain:80"}
    proxy = config_with("proxy_from_environment = true", environ).proxy
    assert proxy == ProxySetting("http://lower:3128", ("corp.example",), "environment", "https_proxy")
    assert render_status(proxy.to_status()).endswith(
        "proxy: from the daemon's start environment (https_proxy): http://lower:3128 (not for corp.example)")
    assert from_environment({"ALL_PROXY": "proxy.example.com:8080"}).url == "http://proxy.example.com:8080"
    only_http = config_with("proxy_from_environment = true", {"HTTP_PROXY": "http://plain:80"})
    assert only_http.proxy.url is None
    assert render_status(only_http.proxy.to_status()) == "proxy: none"
    own_list = config_with('proxy_from_environment = true\nno_proxy = "a.example"', environ)
    assert own_list.proxy.no_proxy == ("a.example",)


def test_a_bad_proxy_in_the_start_environment_is_a_config_error_naming_the_variable() -> None:
    """If the opted-in start environment holds an unusable proxy, then loading the config says which variable."""
    with pytest.raises(ConfigError, match=r"proxy_from_environment' is true, but environment variable HTTPS_PROXY "
                                          "is a SOCKS proxy"):
        config_with("proxy_from_environment = true", {"HTTPS_PROXY": "socks5://127.0.0.1:1080"})
    with pytest.raises(ConfigError, match=r"environment variable no_proxy has '1\.2\.3\.0/24'"):
        config_with("proxy_from_environment = true", {"HTTPS_PROXY": "http://p:1", "no_proxy": "1.2.3.0/24"})


def test_editing_the_config_does_not_check_the_editors_proxy_variables(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """If the config opts in to proxy_from_environment and the shell running `profile add` has an unusable
    HTTPS_PROXY, then the edit still succeeds: only the daemon's start environment counts, where it starts."""
    monkeypatch.setattr(process_setup, "_start_proxies", None)
    monkeypatch.setenv("HTTPS_PROXY", "socks5://127.0.0.1:1080")
    path = tmp_path / "config.toml"
    path.write_text("[daemon]\nproxy_from_environment = true\n")
    config = add_profile(str(path), "graph", tenant="contoso.onmicrosoft.com", client_id="c",
                         scopes=["https://graph.microsoft.com/.default"], environ={})
    assert "graph" in config.profiles and "[profiles.graph]" in path.read_text()


def test_status_shows_no_proxy_line_for_an_older_daemon() -> None:
    """If the status reply has no proxy field (an older daemon), then status prints no proxy line."""
    assert "proxy" not in render({"daemon": {"pid": 1, "uptime": 5, "socket": "/s"}, "profiles": []}, now=0)


def render_status(proxy: dict[str, object]) -> str:
    """The proxy line of `aadhelper status` for a daemon reporting ``proxy``."""
    text = render({"daemon": {"pid": 1, "uptime": 5, "socket": "/s", "proxy": proxy}, "profiles": []}, now=0)
    return next(line for line in text.splitlines() if line.startswith("proxy:"))


def test_no_proxy_entries() -> None:
    """If no_proxy lists hosts, domains with a leading dot or '*.', IPs and '*', then they are normalised, and a
    host under a listed domain bypasses the proxy while a look-alike does not."""
    assert parse_no_proxy("*.a.example, .b.example,C.example,::1,[::2],*") == (
        "a.example", "b.example", "c.example", "::1", "[::2]", "*")
    setting = ProxySetting("http://p:1", parse_no_proxy(".corp.example,10.0.0.1,::1"), "config")
    assert not setting.used_for("corp.example") and not setting.used_for("login.corp.example")
    assert not setting.used_for("10.0.0.1") and not setting.used_for("[::1]")
    assert setting.used_for("notcorp.example") and setting.used_for("10.0.0.10")
    assert not ProxySetting("http://p:1", ("*",), "config").used_for("anything")


# -- the HTTP clients apply it ------------------------------------------------------------------------------

async def _post_through(proxy: ProxySetting, url: str) -> str:
    http = HttpClients()
    try:
        await post_form(http.get(None, proxy), url, {"a": "b"}, profile="p")
    except Exception as exc:
        return str(exc)
    finally:
        await http.aclose()
    return "ok"


async def test_clients_use_only_the_given_proxy(counting_proxy: CountingProxy,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """If a proxy is given, then the client sends a CONNECT for the authority's host:port to it (and a failure
    names the proxy, password redacted); if none is given, or the host is in no_proxy, then nothing reaches the
    proxy even though HTTPS_PROXY/ALL_PROXY in this process's environment name it."""
    monkeypatch.setenv("HTTPS_PROXY", counting_proxy.url)
    monkeypatch.setenv("ALL_PROXY", counting_proxy.url)
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    url = f"https://127.0.0.1:{port}/t/oauth2/v2.0/token"
    with trio.fail_after(20):
        assert "cannot reach the authority at 127.0.0.1: connection refused" in await _post_through(DIRECT, url)
        bypassed = ProxySetting(counting_proxy.url, ("127.0.0.1",), "config")
        assert "through the proxy" not in await _post_through(bypassed, url)
        assert counting_proxy.lines == []
        secret_url = counting_proxy.url.replace("http://", "http://me:pw-in-url@")
        failure = await _post_through(ProxySetting(secret_url, (), "config"), url)
    assert counting_proxy.lines == [f"CONNECT 127.0.0.1:{port} HTTP/1.1"]
    assert f"through the proxy http://***@127.0.0.1:{counting_proxy.port} (config [daemon] proxy)" in failure
    assert "pw-in-url" not in failure


# -- the daemon's clean start ---------------------------------------------------------------------------------

def test_clean_start_environment_keeps_the_allow_list_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the daemon starts with a stranger's variables and directory, then it keeps only the allow-listed
    variables (systemd's and keyring's included), moves to /, and keeps the proxy variables aside, for the
    opt-in only."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(process_setup, "_start_proxies", None)
    environ = {"HOME": "/h", "PATH": "/bin", "LC_ALL": "C", "XDG_RUNTIME_DIR": "/r", "AADHELPER_CONFIG": "/c",
               "LISTEN_FDS": "1", "NOTIFY_SOCKET": "/n", "PYTHON_KEYRING_BACKEND": "k", "KEYRING_PROPERTY_X": "y",
               "SSL_CERT_FILE": "/ca", "AZURE_AUTHORITY_HOST": "h", "FOO": "bar", "HTTP_PROXY": "http://a:1",
               "https_proxy": "http://b:2", "NO_PROXY": "x", "PYTHONPATH": "/p", "LD_PRELOAD": "/evil.so"}
    kept = process_setup.clean_start_environment(environ)
    assert os.getcwd() == "/"
    assert kept == sorted(environ) == sorted(["HOME", "PATH", "LC_ALL", "XDG_RUNTIME_DIR", "AADHELPER_CONFIG",
                                              "LISTEN_FDS", "NOTIFY_SOCKET", "PYTHON_KEYRING_BACKEND",
                                              "KEYRING_PROPERTY_X", "SSL_CERT_FILE", "AZURE_AUTHORITY_HOST"])
    assert dict(process_setup.start_proxy_environment()) == {"HTTP_PROXY": "http://a:1", "https_proxy": "http://b:2",
                                                             "NO_PROXY": "x"}
