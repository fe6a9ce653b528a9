"""The test kit as users meet it (docs/testing-kit.md, linked from the README): every example of that page is a
test here, character for character (a test compares them), plus the kit's own promises: the fake daemon passes the
real client's socket checks, the temporary home keeps secrets out of the real keyring, and ``aadhelper.testing``
never imports the CLI."""

from __future__ import annotations

import ast
import builtins
import inspect
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from aadhelper import client
from aadhelper.testing import (
    FakeDaemon,
    ProtectedResource,
    RecordingApi,
    SimulatedAuthority,
    device_sign_in,
    error_answer,
    token_answer,
)
from aadhelper.testing.daemon_process import DaemonProcess
from aadhelper.testing.pytest_plugin import PUBLIC_APP_ID, TENANT, USER, Home, Tls

#: The test kit's page (it was the README's section "Test your scripts without Entra").
KIT_PAGE = Path(__file__).resolve().parents[1] / "docs" / "testing-kit.md"
BIN = Path(sys.executable).parent


def readme_block(name: str) -> str:
    """The fenced code block that follows ``<!-- example: NAME -->`` on the test kit's page."""
    match = re.search(rf"<!-- example: {re.escape(name)} -->\n```\w*\n(.*?)```", KIT_PAGE.read_text(), re.S)
    assert match, f"no example {name!r} in {KIT_PAGE.name}"
    return match[1]


# -- the README's examples ---------------------------------------------------------------------------------------

def test_example_command_line_authority(tmp_path: Path) -> None:
    """If the README's shell example runs, then curl gets a token from `python -m aadhelper.testing` and the
    authority stops cleanly."""
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_block("command line")], cwd=tmp_path,
                            env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["token_type"] == "Bearer" and reply["access_token"]


def test_curl_gets_through_with_the_daemons_header(aad_daemon: DaemonProcess, aad_home: Home,
                                                   aad_authority: SimulatedAuthority, aad_tls: Tls) -> None:
    """If the daemon runs with a profile, then curl with `aadhelper header` gets through the protected API."""
    with ProtectedResource(aad_authority, ssl_context=aad_tls.server) as api:
        script = f'curl -sSf --cacert {aad_tls.ca_pem} -H "$(aadhelper header)" {api.url}/me'
        result = subprocess.run(["bash", "-c", script], env=aad_home.env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert api.count(200) == 1


def test_a_signed_in_user_gets_their_own_token(aad_signed_in: str, aad_daemon: DaemonProcess, aad_home: Home,
                                               aad_authority: SimulatedAuthority) -> None:
    """If the user signed in and the daemon runs, then `aadhelper header` carries a token for that user."""
    header = aad_home.aadhelper("header", aad_signed_in).stdout.strip()
    assert aad_authority.validate(header)["upn"] == USER


def test_the_authority_signs_a_user_in(aad_authority: SimulatedAuthority, aad_tls: Tls) -> None:
    """If a user approves a device code, then the authority hands out tokens for them."""
    tokens = device_sign_in(aad_authority, tenant=TENANT, client_id=PUBLIC_APP_ID, user=USER,
                            scope="https://graph.microsoft.com/.default offline_access", ssl_context=aad_tls.client)
    assert aad_authority.validate(tokens["access_token"])["upn"] == USER
    assert tokens["refresh_token"]


def test_my_script_sends_the_token_it_was_given(aad_fake_daemon: FakeDaemon, aad_home: Home, tmp_path: Path) -> None:
    """If the daemon hands out a token, then the script calls the API with exactly that token."""
    aad_fake_daemon.answer = token_answer("token-chosen-by-the-test")
    script = tmp_path / "call-api.sh"
    script.write_text('#!/bin/bash\nset -euo pipefail\ncurl -sSf -H "$(aadhelper header graph)" "$API_URL"\n')
    script.chmod(0o755)
    with RecordingApi() as api:
        subprocess.run([script], env={**aad_home.env, "API_URL": api.url}, check=True, timeout=60)
    assert api.authorizations == ["Bearer token-chosen-by-the-test"]
    assert aad_fake_daemon.requests[0]["profile"] == "graph"


def test_fake_daemon_without_the_plugin(tmp_path: Path) -> None:
    """If a FakeDaemon serves a socket, then `aadhelper token` pointed at it prints the chosen token."""
    with FakeDaemon(tmp_path / "run" / "daemon.sock", access_token="t0ken") as fake:
        result = subprocess.run([sys.executable, "-m", "aadhelper", "token"], env=fake.environ(),
                                capture_output=True, text=True)
    assert result.stdout == "t0ken\n"


EXAMPLES: dict[str, Callable[..., None]] = {
    "daemon": test_curl_gets_through_with_the_daemons_header,
    "signed in": test_a_signed_in_user_gets_their_own_token,
    "authority": test_the_authority_signs_a_user_in,
    "fake daemon": test_my_script_sends_the_token_it_was_given,
    "fake daemon alone": test_fake_daemon_without_the_plugin,
}


def test_readme_examples_are_these_tests() -> None:
    """If a README example and its test here differ in any character, or its imports do not import, then this test
    names the example."""
    for name, test in EXAMPLES.items():
        block = readme_block(name)
        function = inspect.getsource(test)
        assert block.endswith(function), f"README example {name!r} is not {test.__name__} any more"
        namespace: dict[str, object] = {}
        exec(block.removesuffix(function), namespace)  # the example's import lines, as a reader copies them
        names = [n for n in ast.walk(ast.parse(function)) if isinstance(n, ast.Name)]
        bound = {n.id for n in names if not isinstance(n.ctx, ast.Load)} | set(inspect.signature(test).parameters)
        missing = {n.id for n in names if n.id not in namespace and n.id not in vars(builtins)} - bound
        assert not missing, f"README example {name!r} does not import {sorted(missing)}"


# -- the kit's own promises ---------------------------------------------------------------------------------------

def test_fake_daemon_passes_the_clients_socket_checks(tmp_path: Path) -> None:
    """If a FakeDaemon starts where no directory exists, then it creates it private (0700) and the real client,
    which refuses a socket others could reach, talks to it; a line that is not a request gets a protocol error."""
    path = tmp_path / "fresh" / "daemon.sock"
    with FakeDaemon(path) as fake:
        assert (path.parent.stat().st_mode & 0o777) == 0o700
        assert client.ping(socket_path=str(path))["version"] == "fake"
        import socket

        with socket.socket(socket.AF_UNIX) as raw:
            raw.connect(str(path))
            raw.sendall(b"not json\n")
            reply = json.loads(raw.makefile("rb").readline())
    assert reply["ok"] is False and reply["error"]["code"] == "protocol"
    assert fake.requests == [{"v": 1, "op": "ping"}]
    assert not path.exists()


def test_fake_daemon_errors_reach_the_script(aad_fake_daemon: FakeDaemon, aad_home: Home) -> None:
    """If the fake answers with an error (or its answer function raises), then `aadhelper header` exits with that
    error's documented code and one line, as with a real daemon."""
    aad_fake_daemon.answer = error_answer("login_required", "not signed in", hint="run `aadhelper login me`")
    result = aad_home.aadhelper("header", "me", check=False)
    assert (result.returncode, result.stdout) == (6, "")
    assert result.stderr == "aadhelper: not signed in; run `aadhelper login me`\n"

    def broken(request: dict[str, object]) -> dict[str, object]:
        raise KeyError("oops")

    aad_fake_daemon.answer = broken
    result = aad_home.aadhelper("header", check=False)
    assert result.returncode == 1 and "KeyError('oops')" in result.stderr and "Traceback" not in result.stderr


def test_the_temporary_home_keeps_secrets_out_of_the_real_keyring(aad_daemon: DaemonProcess, aad_home: Home,
                                                                  aad_app_secret: str) -> None:
    """If the daemon fixture stores its profile's secret, then it is in the home's own keyring file, which only that
    environment names, and the test process's keyring settings are untouched."""
    keyring_file = Path(aad_home.env["AADHELPER_TESTING_KEYRING"])
    assert keyring_file.is_relative_to(aad_home.path)
    assert aad_app_secret in keyring_file.read_text()
    assert (keyring_file.stat().st_mode & 0o777) == 0o600
    assert "AADHELPER_TESTING_KEYRING" not in os.environ


def printed_by(*lines: str) -> list[str]:
    """The stdout lines of a fresh interpreter running ``lines`` (what it imports is its own, not this process's)."""
    result = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True, timeout=60,
                            check=True)
    return result.stdout.splitlines()


def test_the_kit_does_not_import_the_cli() -> None:
    """If any module of aadhelper.testing (the command line and the pytest plugin included) is imported, then no
    aadhelper.cli module is loaded: the kit stays usable whatever the CLI's verbs do."""
    cli_modules, kit_modules = printed_by(
        "import pkgutil, importlib, sys, aadhelper.testing as kit",
        "for info in pkgutil.walk_packages(kit.__path__, 'aadhelper.testing.'):",
        "    importlib.import_module(info.name)",
        "print(sorted(m for m in sys.modules if m == 'aadhelper.cli' or m.startswith('aadhelper.cli.')))",
        "print(len([m for m in sys.modules if m.startswith('aadhelper.testing.')]))")
    assert cli_modules == "[]"
    assert int(kit_modules) >= 15


def test_loading_the_plugin_imports_neither_the_authority_nor_keyring() -> None:
    """If pytest loads the plugin (it does in every run of an environment aadhelper is installed in), then neither
    the simulated authority nor keyring is imported until a fixture needs it, and the kit's names still resolve."""
    assert printed_by(
        "import sys, aadhelper.testing.pytest_plugin",
        "heavy = ('aadhelper.testing.authority', 'keyring', 'httpx', 'trio')",
        "print(sorted(m for m in heavy if m in sys.modules))",
        "from aadhelper.testing import SimulatedAuthority",
        "print('aadhelper.testing.authority' in sys.modules)") == ["[]", "True"]
